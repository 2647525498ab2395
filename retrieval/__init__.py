"""The public face of retrieval: the heads on the encoder (the single-vector bi-encoder in the sentence-transformers
format, ColBERT in the PyLate and Stanford formats), MaxSim, and the codebase ``Retriever``.

    from retrieval import BiEncoder
    dense = BiEncoder.from_pretrained("/models/gte-modernbert-base")
    Q = dense.encode_queries(["how do I sort a list"]); D = dense.encode_documents(["sorted(xs) returns ..."])

    from retrieval import Retriever          # index a tree and search it (what `mret index` / `mret search` run)
    repo = Retriever("path/to/repo"); repo.index(); hits = repo.search("where are retries configured", k=5)
"""

from .heads import BiEncoder, ColBERT
from .scoring import maxsim

__all__ = ["BiEncoder", "ColBERT", "Retriever", "maxsim"]


def __getattr__(name: str):
    if name == "Retriever":  # imported on use: it pulls in the indexes (faiss), which the heads alone do not need
        from .codebase import Retriever

        return Retriever
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
