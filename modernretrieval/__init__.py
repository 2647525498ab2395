"""The foundation every layer shares, importing nothing of ours: the root of the project's errors."""
