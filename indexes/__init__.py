"""Indexes over embeddings, persistent and incremental: FAISS for single vectors, PLAID for multi-vectors, and the
SQLite document store beside them. See base.py for the folder layout and the commit protocol."""

from .errors import IndexBusyError, IndexCorruptError, IndexInputError
from .faiss_index import FaissIndex
from .files import atomic_write, atomic_write_json
from .plaid import PlaidIndex
from .store import Document, DocumentStore

__all__ = ["Document", "DocumentStore", "FaissIndex", "IndexBusyError", "IndexCorruptError", "IndexInputError",
           "PlaidIndex", "atomic_write", "atomic_write_json"]
