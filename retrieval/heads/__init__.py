"""The retrieval heads: a backbone (our ModernBERT, or transformers for other architectures) turned into a
single-vector bi-encoder (sentence-transformers format) or a ColBERT multi-vector model (PyLate and Stanford
formats), behind one ``Head`` interface."""

from .base import KINDS, Head, Kind
from .colbert import ColBERT
from .dense import BiEncoder
from .loading import DEFAULT_MODELS, load_head, loader_for, set_document_length

__all__ = ["BiEncoder", "ColBERT", "DEFAULT_MODELS", "Head", "KINDS", "Kind", "load_head", "loader_for",
           "set_document_length"]
