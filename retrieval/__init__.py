"""Retrieval heads on the encoder: the single-vector bi-encoder (sentence-transformers format) and ColBERT (PyLate).

    from retrieval import BiEncoder
    dense = BiEncoder.from_pretrained("/models/gte-modernbert-base")
    Q = dense.encode_queries(["how do I sort a list"]); D = dense.encode_documents(["sorted(xs) returns ..."])
"""

from .colbert import ColBERT
from .dense import BiEncoder
from .maxsim import maxsim

__all__ = ["BiEncoder", "ColBERT", "maxsim"]
