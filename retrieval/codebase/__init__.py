"""The codebase application: index a tree of files (code, docs, PDFs) incrementally and search it.

    config.py    what an index folder is built with (config.json), and where it is found
    sources.py   the walk (gitignore rules) and reading files to text;  chunking.py  texts cut into chunks
    indexing.py  one indexing run: changed files -> chunks -> vectors -> one commit per batch
    snippets.py  the lines of a chunk shown for a query;  retriever.py  the ``Retriever`` facade
"""

from .config import RetrieverError
from .indexing import IndexSummary
from .retriever import Hit, Retriever

__all__ = ["Hit", "IndexSummary", "Retriever", "RetrieverError"]
