"""Random-weight ModernBERT checkpoints of the real shapes, for tests and benchmarks (no hub access needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ModernBertConfig
from .pretrained import Encoder
from .tokenizer import Tokenizer

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4),
    "base": dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12),
    "large": dict(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28, num_attention_heads=16),
}


def randomize_(named_parameters, seed: int = 0) -> None:
    """N(0, 0.02) matrices, LayerNorm weights 1 + N(0, 0.1), biases N(0, 0.1): every parameter matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in named_parameters:
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name:
                param.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(0.02 * noise)


def random_encoder(shape: str = "tiny", seed: int = 0, tokenizer_dir: str | Path | None = None,
                   mlm_head: bool = True, **overrides) -> Encoder:
    """An ``Encoder`` of a named shape with random weights; ``save_pretrained`` makes it a real checkpoint."""
    config = ModernBertConfig(**{**SHAPES[shape], **overrides})
    tokenizer = Tokenizer.from_folder(tokenizer_dir) if tokenizer_dir is not None else None
    with torch.device("meta"):  # skip torch's default init: randomize_ overwrites every parameter
        encoder = Encoder(config, tokenizer, mlm_head=mlm_head)
    encoder.to_empty(device="cpu")
    encoder.tie_weights()
    encoder.model.reset_rotary()
    randomize_(encoder.named_parameters(), seed)
    return encoder.eval()
