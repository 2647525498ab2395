"""Indexes over embeddings, persistent and incremental: FAISS for single vectors, PLAID for multi-vectors, and the
SQLite document store beside them. See base.py for the folder layout and the commit protocol."""

from .errors import IndexBusyError, IndexCorruptError, IndexInputError
from .faiss_index import FaissIndex
from .plaid import PlaidIndex
from .state import Batch
from . import lexical
from .store import Document, DocumentStore, FileRecord

__all__ = ["Batch", "Document", "DocumentStore", "FaissIndex", "FileRecord", "IndexBusyError", "IndexCorruptError",
           "IndexInputError", "PlaidIndex"]
