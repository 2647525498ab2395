"""The codebase application: index a tree of files (code, docs, PDFs) incrementally and search it."""

from .retriever import Hit, IndexSummary, Retriever, RetrieverError

__all__ = ["Hit", "IndexSummary", "Retriever", "RetrieverError"]
