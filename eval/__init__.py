"""The evaluation harness: datasets (``eval.datasets``, the bottom layer: readers, downloads, offline builders),
encoding cached on disk (encode), trec_eval metrics (metrics), published numbers (published), and the runner behind
``mret eval`` (runner). The command line lives in ``retrieval.cli``."""
