"""modernretrieval's ModernBERT encoder: exact against transformers, unpadded, 8192 tokens, fast on CPU and GPU.

    import encoder
    model = encoder.from_pretrained("answerdotai/ModernBERT-base")   # or a local folder
    states = model.embed(["some text", "another"])                   # one (n_tokens, hidden) tensor per text
"""

from .attention import BACKENDS
from .config import ModernBertConfig
from .errors import ModelLoadError
from .model import ModernBert
from .packing import pack, position_ids, split, unpad
from .pretrained import Encoder, from_pretrained
from .tokenizer import Tokenizer

__all__ = ["BACKENDS", "Encoder", "ModelLoadError", "ModernBert", "ModernBertConfig", "Tokenizer",
           "from_pretrained", "pack", "position_ids", "split", "unpad"]
