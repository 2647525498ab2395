"""Our PLAID: residual-compressed multi-vector index (codec.py), its staged search (search.py), the index (index.py)."""

from .index import PlaidIndex

__all__ = ["PlaidIndex"]
