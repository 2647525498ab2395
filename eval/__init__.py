"""Evaluation harnesses: datasets in their original layouts read as BEIR datasets (beir, mldr, codesearchnet, and
the offline sets), encoding cached on disk (encode), trec_eval metrics (metrics), and the runner behind
``mret eval`` (runner, cli)."""
