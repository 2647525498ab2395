"""Benchmark datasets as BEIR-layout folders: the readers (BEIR, MLDR, CodeSearchNet, CoIR), their downloads, and
the offline builders that make benchmarks from text already on this machine. Imports nothing of ours."""
