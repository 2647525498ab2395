"""The foundation every layer shares, importing nothing of ours: the root of the project's errors (errors.py) and
the one atomic write of a whole file (files.py)."""
