"""Stanford ColBERT checkpoints (colbert-ai, e.g. colbert-ir/colbertv2.0), read as a PyLate-style spec.

Such a folder holds one BERT checkpoint whose weights carry the projection as ``linear.weight`` (no bias) beside
``bert.*``, and ``artifact.metadata`` (the ColBERTConfig as JSON): marker tokens ``[unused0]``/``[unused1]`` put
after [CLS], query_maxlen / doc_maxlen, attend_to_mask_tokens, mask_punctuation. Those map one to one onto the
PyLate settings our ColBERT head already runs, so no separate code path is needed.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from safetensors import safe_open

from encoder.errors import ModelLoadError

from .formats import DenseSpec, STFolder

METADATA = "artifact.metadata"


def is_stanford_folder(folder: Path) -> bool:
    return (folder / METADATA).exists() and not (folder / "modules.json").exists()


def read_stanford_folder(folder: Path) -> STFolder:
    try:
        meta = json.loads((folder / METADATA).read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{folder / METADATA} is not valid JSON: {error}") from None
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise ModelLoadError(f"{folder} has no model.safetensors (only safetensors are loaded; convert the "
                             "pytorch_model.bin with safetensors' convert script)")
    with safe_open(str(weights), framework="pt") as f:
        if "linear.weight" not in f.keys():
            raise ModelLoadError(f"{weights} has no linear.weight: it is not a Stanford ColBERT checkpoint")
        out_features, in_features = f.get_slice("linear.weight").get_shape()
    settings = {
        "query_prefix": meta.get("query_token_id", "[unused0]"),
        "document_prefix": meta.get("doc_token_id", "[unused1]"),
        "query_length": meta.get("query_maxlen", 32),
        "document_length": meta.get("doc_maxlen", 220),
        "do_query_expansion": True,
        "attend_to_expansion_tokens": bool(meta.get("attend_to_mask_tokens", False)),
        "skiplist_words": list(string.punctuation) if meta.get("mask_punctuation", True) else [],
    }
    projection = DenseSpec(folder, in_features, out_features, bias=False, activation="torch.nn.modules.linear.Identity")
    return STFolder(transformer=folder, max_seq_length=512, dense=[projection], settings=settings)
