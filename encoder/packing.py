"""The packed representation: every token of a batch in one sequence, delimited by ``cu_seqlens``.

``cu_seqlens`` holds cumulative lengths: sequence i is tokens ``cu_seqlens[i]:cu_seqlens[i+1]``.
Nothing in the encoder ever computes on padding; these helpers move between that form, the
tokenizer's lists of ids, and the padded (batch, length) form some callers expect.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack(token_ids: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (input_ids (total,), cu_seqlens (n+1,) int32)."""
    lengths = torch.tensor([len(ids) for ids in token_ids], dtype=torch.int32)
    if len(token_ids) == 0 or int(lengths.min()) == 0:
        raise ValueError("every sequence needs at least one token")
    flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long, device=device)
    return flat, lengths_to_cu_seqlens(lengths).to(device)


def lengths_to_cu_seqlens(lengths: torch.Tensor) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=lengths.device)
    torch.cumsum(lengths, dim=0, out=cu[1:])
    return cu


def position_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Position of every packed token inside its own sequence (0 at each [CLS])."""
    lengths = cu_seqlens.diff().long()
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths)
    return torch.arange(int(cu_seqlens[-1]), device=cu_seqlens.device) - starts


def split(packed: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Packed (total, ...) -> one tensor per sequence (views, no copy)."""
    return list(torch.split(packed, cu_seqlens.diff().tolist()))


def unpad(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded (batch, length) -> (packed ids, cu_seqlens, flat indices of the kept tokens).

    Tokens where the mask is 1 are kept in order; with right padding (the ModernBERT convention) this is
    exactly what transformers computes.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1, dtype=torch.int32)
    if int(lengths.min()) == 0:
        raise ValueError("a row of attention_mask has no token")
    kept = mask.flatten().nonzero().squeeze(1)
    return input_ids.flatten()[kept], lengths_to_cu_seqlens(lengths), kept


def repad(packed: torch.Tensor, kept: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Inverse of ``unpad`` for hidden states: zeros where there was padding."""
    out = packed.new_zeros(batch * length, *packed.shape[1:])
    out[kept] = packed
    return out.view(batch, length, *packed.shape[1:])


def batches_by_token_budget(lengths: Sequence[int], max_tokens: int, max_sequences: int = 1024) -> list[list[int]]:
    """Group sequence indices, longest first, into batches of at most ``max_tokens`` tokens.

    Sorting by length keeps sequences of one length together, which lets attention run on
    equal-length groups without padding. A sequence longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        if current and (tokens + lengths[i] > max_tokens or len(current) >= max_sequences):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += lengths[i]
    if current:
        batches.append(current)
    return batches
