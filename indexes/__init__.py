"""Indexes over embeddings, persistent and incremental: FAISS for single vectors, PLAID for multi-vectors, and the
SQLite document store beside them. See base.py for the folder layout and the commit protocol."""

from importlib import import_module

from .errors import IndexBusyError, IndexCorruptError, IndexInputError

_HOMES = {"Batch": "state", "Document": "store", "DocumentStore": "store", "FileRecord": "store",
          "FaissIndex": "faiss_index", "PlaidIndex": "plaid", "lexical": "lexical"}
__all__ = ["Batch", "Document", "DocumentStore", "FaissIndex", "FileRecord", "IndexBusyError", "IndexCorruptError",
           "IndexInputError", "PlaidIndex"]


def __getattr__(name: str):
    """Each name imported on first use: a FAISS user never imports PLAID (and torch, its search's arithmetic)."""
    if name == "lexical":
        return import_module(".lexical", __name__)
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'indexes' has no attribute {name!r}")
