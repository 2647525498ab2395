"""Pooling token states into one vector per text, as sentence-transformers' Pooling module does.

Every token counts, [CLS] and [SEP] included (they are under the attention mask in sentence-transformers too).
"""

from __future__ import annotations

import math

import torch


def pool(states: torch.Tensor, mode: str) -> torch.Tensor:
    """(n_tokens, hidden) -> (hidden,), computed in float32."""
    states = states.float()
    if mode == "cls":
        return states[0]
    if mode == "lasttoken":
        return states[-1]
    if mode == "mean":
        return states.mean(dim=0)
    if mode == "max":
        return states.max(dim=0).values
    if mode == "mean_sqrt_len_tokens":
        return states.sum(dim=0) / math.sqrt(states.shape[0])
    raise ValueError(f"unknown pooling mode {mode!r}")


def pool_all(states: list[torch.Tensor], modes: list[str]) -> torch.Tensor:
    """One row per text; several modes are concatenated in order, as sentence-transformers does."""
    return torch.stack([torch.cat([pool(s, mode) for mode in modes]) for s in states])
