"""The evaluation harness: datasets (``eval.datasets``, the bottom layer: readers, downloads, offline builders),
encoding cached on disk (encode), trec_eval metrics (metrics), published numbers (published), and the runner behind
``mret eval`` and training's evaluations (runner: ``run_eval``, ``evaluate_head``). The command line lives in
``retrieval.cli``."""
