"""Evaluation harnesses (BEIR layout loader, trec_eval metrics); the full runner comes with its issue."""
