"""``python -m retrieval.cli``: the same as ``mret``."""

from . import main

main()
