"""Loading a head by kind, with the settings every command shares: ``--max-length``, ``--device``, ``--dtype``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from modernretrieval.errors import SettingsError

from .base import Head, Kind
from .colbert import ColBERT
from .dense import BiEncoder
from .precision import resolve
from .token_pooling import check_pool_factor

# the best public ModernBERT retrievers, the defaults of `mret index`
DEFAULT_MODELS = {"dense": "Alibaba-NLP/gte-modernbert-base", "colbert": "lightonai/GTE-ModernColBERT-v1"}


def loader_for(kind: Kind, token_embeddings: bool = False) -> Callable[..., Head]:
    if kind == "dense":
        if token_embeddings:
            raise SettingsError("token embeddings are a multi-vector model: they need kind colbert")
        return BiEncoder.from_pretrained
    if kind == "colbert":
        return ColBERT.from_token_embeddings if token_embeddings else ColBERT.from_pretrained
    raise SettingsError(f"kind must be dense or colbert, got {kind!r}")


def load_head(name_or_path: str | Path, kind: Kind, max_length: int | None = None,
              token_embeddings: bool = False, device: str | torch.device | None = "cpu",
              dtype: str | torch.dtype | None = "float32", pool_factor: int = 1, warn_similarity: bool = True) -> Head:
    """A BiEncoder or ColBERT. ``max_length``: None keeps the model's own document length; 0 takes the backbone's
    maximum (8192 for ModernBERT, 512 for BERT); any other value must lie between 8 and that maximum.

    ``device``: "auto", "cpu", "cuda" or "cuda:N"; ``dtype``: "auto", "float32", "bfloat16" or "int8" (CPU: the
    backbone's linear layers quantized after loading), or a torch dtype (precision.py). The defaults keep the library
    exact and reproducible; the command line passes its --device and --dtype.

    ``pool_factor``: ColBERT token pooling of documents (``ColBERT.pool_factor``; 1: none). A dense head has one
    vector per text, nothing to pool: any other value is a SettingsError, raised before the weights are read.

    ``warn_similarity``: warn when a dense model does not score by cosine (its similarity_fn_name is "dot", ...),
    since indexes and evaluations score by cosine; False where the vectors are used as they are (``mret embed``)."""
    pool_factor = check_pool_factor(pool_factor)
    if pool_factor != 1 and kind != "colbert":
        raise SettingsError(f"token pooling (pool factor {pool_factor}) applies to kind colbert only, not {kind}")
    precision = resolve(device, dtype)
    model = loader_for(kind, token_embeddings)(name_or_path, device=precision.device, dtype=precision.dtype)
    if warn_similarity and isinstance(model, BiEncoder):
        model.warn_similarity()
    if precision.int8:
        model.backbone.quantize_int8()  # type: ignore[attr-defined]  (both heads hold a backbone)
    if max_length is not None:
        set_document_length(model, max_length)
    if pool_factor != 1:
        model.pool_factor = pool_factor  # type: ignore[attr-defined]  (colbert, checked above)
    return model


def set_document_length(model: Head, max_length: int) -> int:
    """``max_length`` 0 is the backbone's maximum; the length set is returned."""
    limit = model.max_document_length
    length = limit if max_length == 0 else max_length
    if not 8 <= length <= limit:
        raise SettingsError(f"--max-length must be between 8 and {limit} for this model, got {length}")
    model.document_length = length
    return length
