"""The codebase application: index a tree of files (code, docs, PDFs) incrementally and search it.

    config.py    what an index folder is built with (config.json), and where it is found
    sources.py   the walk (git's file list, or gitignore rules) and reading files to text;  chunking.py  chunks
    indexing.py  one indexing run: changed files -> chunks -> vectors -> one commit per batch
    rebuild.py   a whole new index beside the current one, swapped in when complete (the way back from damage)
    snippets.py  the lines of a chunk shown for a query;  retriever.py  the ``Retriever`` facade
"""

from .config import RetrieverError
from .indexing import IndexSummary
from .retriever import Hit, Retriever

__all__ = ["Hit", "IndexSummary", "Retriever", "RetrieverError"]
