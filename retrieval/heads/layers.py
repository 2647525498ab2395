"""Pooling token states into one vector per text, as sentence-transformers' Pooling module does.

Every token counts, [CLS] and [SEP] included (they are under the attention mask in sentence-transformers too).
Texts arrive packed (all tokens of all texts in one (total, hidden) tensor, text i at cu_seqlens[i]:cu_seqlens[i+1]),
so pooling is segment arithmetic: no padding, and differentiable for training.
"""

from __future__ import annotations

import torch


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, modes: list[str]) -> torch.Tensor:
    """(total, hidden) + (n+1,) -> (n, hidden * len(modes)), computed in float32; several modes are concatenated
    in order, as sentence-transformers does."""
    hidden = hidden.float()
    cu_seqlens = cu_seqlens.to(hidden.device).long()
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    pooled = []
    for mode in modes:
        if mode == "cls":
            pooled.append(hidden[cu_seqlens[:-1]])
        elif mode == "lasttoken":
            pooled.append(hidden[cu_seqlens[1:] - 1])
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            sums = hidden.new_zeros(len(lengths), hidden.shape[1]).index_add(0, segment, hidden)
            scale = lengths.to(hidden.dtype) if mode == "mean" else lengths.to(hidden.dtype).sqrt()
            pooled.append(sums / scale[:, None])
        elif mode == "max":
            index = segment[:, None].expand_as(hidden)
            pooled.append(hidden.new_full((len(lengths), hidden.shape[1]), float("-inf")).scatter_reduce(
                0, index, hidden, reduce="amax"))
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(pooled, dim=1)


def pool_all(states: list[torch.Tensor], modes: list[str]) -> torch.Tensor:
    """One row per text, from per-text (n_tokens, hidden) states."""
    cu_seqlens = torch.zeros(len(states) + 1, dtype=torch.long)
    cu_seqlens[1:] = torch.tensor([len(s) for s in states]).cumsum(0)
    return pool_packed(torch.cat(states), cu_seqlens, modes)
