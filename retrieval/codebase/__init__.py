"""The codebase application: index a tree of files (code, docs, PDFs) incrementally and search it.

    config.py    what an index folder is built with (config.json), and where it is found
    sources.py   the walk (git's file list, or gitignore rules) and reading files to text;  chunking.py  chunks
    symbols.py   the names each chunk defines (tree-sitter, a regex fallback)
    indexing.py  one indexing run: changed files -> chunks (texts first: the lexical side) -> vectors, in commits
    rebuild.py   a whole new index beside the current one, swapped in when complete (the way back from damage)
    ranking.py   the code-aware rules over fused results;  spans.py  the part of a chunk a hit reports
    snippets.py  the lines of a chunk shown for a query;  retriever.py  the ``Retriever`` facade
"""

from importlib import import_module

_HOMES = {"RetrieverError": "config", "IndexSummary": "indexing", "Hit": "retriever", "Retriever": "retriever"}
__all__ = ["Hit", "IndexSummary", "Retriever", "RetrieverError"]


def __getattr__(name: str):
    """Imported on first use: the command line reads snippets.py without loading the indexes and the model."""
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'retrieval.codebase' has no attribute {name!r}")
