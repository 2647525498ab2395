"""eval: see README.md (filled by a later issue)."""
