"""modernretrieval's ModernBERT encoder: exact against transformers, unpadded, 8192 tokens, fast on CPU and GPU.

    import encoder
    model = encoder.from_pretrained("answerdotai/ModernBERT-base")   # or a local folder
    states = model.embed(["some text", "another"])                   # one (n_tokens, hidden) tensor per text
"""

from importlib import import_module

from .errors import ModelLoadError

_HOMES = {"BACKENDS": "attention", "ModernBertConfig": "config", "ModernBert": "model", "pack": "packing",
          "position_ids": "packing", "split": "packing", "unpad": "packing", "Encoder": "pretrained",
          "from_pretrained": "pretrained", "Tokenizer": "tokenizer"}
__all__ = ["BACKENDS", "Encoder", "ModelLoadError", "ModernBert", "ModernBertConfig", "Tokenizer",
           "from_pretrained", "pack", "position_ids", "split", "unpad"]


def __getattr__(name: str):
    """Each name imported on first use (torch with it): ``encoder.errors`` alone stays light for the command line."""
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'encoder' has no attribute {name!r}")
