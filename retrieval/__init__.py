"""The public face of retrieval: the heads on the encoder (the single-vector bi-encoder in the sentence-transformers
format, ColBERT in the PyLate and Stanford formats), MaxSim, and the codebase ``Retriever``.

    from retrieval import BiEncoder
    dense = BiEncoder.from_pretrained("/models/gte-modernbert-base")
    Q = dense.encode_queries(["how do I sort a list"]); D = dense.encode_documents(["sorted(xs) returns ..."])

    from retrieval import Retriever          # index a tree and search it (what `mret index` / `mret search` run)
    repo = Retriever("path/to/repo"); repo.index(); hits = repo.search("where are retries configured", k=5)
"""

__all__ = ["BiEncoder", "ColBERT", "Retriever", "maxsim"]


def __getattr__(name: str):
    """Each name imported on first use: the heads pull in torch, the Retriever faiss too, and the command line
    (a subpackage, which imports this package first) must start without either."""
    if name in ("BiEncoder", "ColBERT"):
        from . import heads

        return getattr(heads, name)
    if name == "maxsim":
        from .scoring import maxsim

        return maxsim
    if name == "Retriever":
        from .codebase import Retriever

        return Retriever
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
