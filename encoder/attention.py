"""Attention over packed sequences: one plan per batch, three interchangeable backends.

Every backend takes q, k, v of shape (total_tokens, heads, head_dim) for the whole packed batch and
returns the same shape. A token attends only to tokens of its own sequence; on local layers only to
those at most ``window_radius`` positions away (|i - j| <= 64 for ModernBERT's window of 128).

- ``sdpa`` (CPU, and CUDA in fp32): sequences are grouped by exact length, so each group is a dense
  (n, heads, L, head_dim) block with no padding and no key mask. Global layers run SDPA on the group;
  local layers run SDPA under a band mask when L is small and, for long sequences, blocks of queries
  against their own window of keys, so their cost grows linearly with L instead of L^2.
- ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16; a torch whose varlen_attn takes ``scale``
  and ``window_size``: 2.11 or later).
- ``flash``: flash-attn's ``flash_attn_varlen_func`` when the optional ``gpu`` extra is installed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "varlen", "flash")
# Measured on 2 CPU cores (fp32, base shapes): blocks of 32 queries, one sequence per SDPA call, beat larger
# blocks and batching sequences together; below ~320 tokens one band-masked call per length group is faster.
QUERY_BLOCK = 32  # queries per block on the blockwise local path
DENSE_BAND_MAX = 320  # up to this length a local layer is one SDPA call under a band mask


@dataclass
class LengthGroup:
    """Sequences of one length (and one key length): where they are in the packed batch, and their masks."""

    length: int
    start: int | None  # set when the sequences lie back to back from ``start``: a view, not a gather
    index: torch.Tensor | None  # (n, length) packed positions otherwise
    count: int
    local_mask: torch.Tensor | None  # None: the window covers the whole sequence (no mask needed)
    global_mask: torch.Tensor | None = None  # only with query-only tokens: (L, L), keys past key_length hidden


@dataclass
class AttentionPlan:
    """Everything about a batch's layout that attention needs, computed once per forward pass."""

    cu_seqlens: torch.Tensor  # (n + 1,) int32
    max_seqlen: int
    window_radius: int
    groups: list[LengthGroup] | None = None  # only for the sdpa backend

    @classmethod
    def build(cls, cu_seqlens: torch.Tensor, window_radius: int, grouped: bool,
              key_lengths: list[int] | None = None) -> "AttentionPlan":
        """``key_lengths[i]``: only the first key_lengths[i] tokens of sequence i are attended to; the rest are
        query-only (ColBERT's query expansion [MASK]s, which read the text but are not read). Needs grouping."""
        cu = cu_seqlens.tolist()
        lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
        plan = cls(cu_seqlens.to(torch.int32), max(lengths), window_radius)
        if key_lengths is not None and not grouped:
            raise ValueError("query-only tokens (key_lengths) need the sdpa attention backend")
        if grouped:
            plan.groups = _group_by_length(cu, lengths, key_lengths or lengths, window_radius, cu_seqlens.device)
        return plan


def _group_by_length(cu: list[int], lengths: list[int], key_lengths: list[int], radius: int,
                     device: torch.device) -> list[LengthGroup]:
    starts_by_shape: dict[tuple[int, int], list[int]] = {}
    for start, length, keys in zip(cu[:-1], lengths, key_lengths):
        if not 0 < keys <= length:
            raise ValueError(f"key length {keys} outside 1..{length}")
        starts_by_shape.setdefault((length, keys), []).append(start)
    groups = []
    for (length, keys), starts in starts_by_shape.items():
        back_to_back = all(b - a == length for a, b in zip(starts[:-1], starts[1:]))
        index = None
        if not back_to_back:
            index = torch.tensor(starts, device=device)[:, None] + torch.arange(length, device=device)
        group = LengthGroup(length, starts[0] if back_to_back else None, index, len(starts),
                            _local_mask(length, radius, device))
        if keys < length:
            group.global_mask, group.local_mask = _key_limited_masks(length, keys, radius, device)
        groups.append(group)
    return groups


def _key_limited_masks(length: int, keys: int, radius: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense (L, L) masks when only the first ``keys`` tokens may be attended to (short sequences: queries)."""
    pos = torch.arange(length, device=device)
    real_key = (pos < keys).expand(length, length)
    band = (pos[:, None] - pos[None, :]).abs() <= radius
    # a row with no real key in its window gets a zero attention output from SDPA, exactly as in transformers
    return real_key, real_key & band


def _local_mask(length: int, radius: int, device: torch.device) -> torch.Tensor | None:
    """Boolean "may attend" mask for a local layer on sequences of ``length`` tokens.

    Short sequences: None (the window covers everything). Medium: a (L, L) band. Long: a
    (blocks, 1, QUERY_BLOCK, QUERY_BLOCK + 2 * radius) mask of each query block against its key window.
    """
    if length - 1 <= radius:
        return None
    if length <= DENSE_BAND_MAX:
        pos = torch.arange(length, device=device)
        return (pos[:, None] - pos[None, :]).abs() <= radius
    n_blocks = -(-length // QUERY_BLOCK)
    q_pos = torch.arange(n_blocks * QUERY_BLOCK, device=device).view(n_blocks, QUERY_BLOCK, 1)
    # key j of block b's window sits at sequence position b * QUERY_BLOCK - radius + j
    k_pos = (torch.arange(n_blocks, device=device) * QUERY_BLOCK).view(n_blocks, 1, 1) - radius + torch.arange(
        QUERY_BLOCK + 2 * radius, device=device)
    real_key = (k_pos >= 0) & (k_pos < length)
    in_window = (q_pos - k_pos).abs() <= radius
    padded_query = q_pos >= length  # rows we discard; let them see any real key so they never go NaN
    return (real_key & (in_window | padded_query)).unsqueeze(1)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, local: bool,
                   scale: float, dropout: float = 0.0) -> torch.Tensor:
    """The grouped backend (see module docstring). Works on any device and dtype.

    ``dropout``: on the attention probabilities (training only), as transformers passes attention_dropout to SDPA."""
    assert plan.groups is not None, "plan was built without length groups"
    out = torch.empty_like(q)
    for group in plan.groups:
        n, length = group.count, group.length
        if group.index is None:
            span = slice(group.start, group.start + n * length)
            qg, kg, vg = (t[span].view(n, length, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
        else:
            qg, kg, vg = (t[group.index].transpose(1, 2) for t in (q, k, v))
        mask = group.local_mask if local else group.global_mask
        if mask is None or mask.dim() == 2:
            og = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale, dropout_p=dropout)
        else:
            og = torch.cat([_blockwise_local(qg[i], kg[i], vg[i], mask, plan.window_radius, scale, dropout)
                            for i in range(n)])
        og = og.transpose(1, 2)  # (n, L, heads, head_dim)
        if group.index is None:
            out[span] = og.reshape(n * length, *og.shape[2:])
        else:
            out[group.index] = og
    return out


def _blockwise_local(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, radius: int,
                     scale: float, dropout: float = 0.0) -> torch.Tensor:
    """Sliding-window attention for one sequence, (heads, L, d) -> (1, heads, L, d).

    Queries go in blocks of QUERY_BLOCK; each block attends to the QUERY_BLOCK + 2 * radius keys around it
    (an overlapping strided view of the padded keys), so the cost is linear in L.
    """
    heads, length, dim = q.shape
    n_blocks = mask.shape[0]
    padded = n_blocks * QUERY_BLOCK
    window = QUERY_BLOCK + 2 * radius
    q_blocks = F.pad(q, (0, 0, 0, padded - length)).view(heads, n_blocks, QUERY_BLOCK, dim).transpose(0, 1)

    def windows(t: torch.Tensor) -> torch.Tensor:  # (n_blocks, heads, window, dim)
        t = F.pad(t, (0, 0, radius, padded - length + radius))
        return t.unfold(1, window, QUERY_BLOCK).permute(1, 0, 3, 2)

    out = F.scaled_dot_product_attention(q_blocks, windows(k), windows(v), attn_mask=mask, scale=scale,
                                         dropout_p=dropout)
    return out.transpose(0, 1).reshape(1, heads, padded, dim)[:, :, :length]


VarlenFn = Callable[..., torch.Tensor]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, local: bool,
                     scale: float, dropout: float = 0.0, fn: VarlenFn | None = None) -> torch.Tensor:
    """torch's varlen_attn on the packed batch. ``fn`` lets tests substitute a CPU reference."""
    if dropout > 0:  # varlen_attn has no dropout: refuse rather than train a different model than transformers
        raise ValueError("attention_dropout > 0 in training needs the 'sdpa' or 'flash' attention backend; "
                         "torch's varlen_attn has no dropout")
    if fn is None:
        from torch.nn.attention.varlen import varlen_attn as fn
    window = (plan.window_radius, plan.window_radius) if local else (-1, -1)
    cu = plan.cu_seqlens
    return fn(q, k, v, cu, cu, plan.max_seqlen, plan.max_seqlen, scale=scale, window_size=window)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, local: bool,
                    scale: float, dropout: float = 0.0, fn: VarlenFn | None = None) -> torch.Tensor:
    """flash-attn's flash_attn_varlen_func on the packed batch."""
    if fn is None:
        from flash_attn import flash_attn_varlen_func as fn
    window = (plan.window_radius, plan.window_radius) if local else (-1, -1)
    cu = plan.cu_seqlens
    return fn(q, k, v, cu, cu, plan.max_seqlen, plan.max_seqlen, dropout_p=dropout, softmax_scale=scale,
              causal=False, window_size=window)


ATTENTION_FUNCTIONS = {"sdpa": sdpa_attention, "varlen": varlen_attention, "flash": flash_attention}


def torch_varlen_available() -> bool:
    """torch's varlen_attn with the ``scale`` and ``window_size`` arguments we pass (torch 2.9 and 2.10 lack them)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
        parameters = inspect.signature(varlen_attn).parameters
    except (ImportError, TypeError, ValueError):
        return False
    return "scale" in parameters and "window_size" in parameters


@functools.cache
def flash_attn_available() -> bool:
    """flash-attn importable, not only installed: a build for another torch or CUDA fails at import."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # ImportError, or an OSError/RuntimeError from its compiled extension
        return False
    return callable(flash_attn_varlen_func)


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """Pick the attention backend. 'auto': flash-attn, then torch varlen, on CUDA in half precision; else sdpa."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    half = dtype in (torch.float16, torch.bfloat16)
    if name == "auto":
        if device.type == "cuda" and half:
            if flash_attn_available():
                return "flash"
            if torch_varlen_available():
                return "varlen"
        return "sdpa"
    if name in ("varlen", "flash"):
        if device.type != "cuda" or not half:
            raise ValueError(f"attention backend {name!r} needs a CUDA device and float16/bfloat16 weights")
        if name == "varlen" and not torch_varlen_available():
            raise ValueError("torch.nn.attention.varlen.varlen_attn with scale and window_size is not available: "
                             "it needs torch >= 2.11")
        if name == "flash" and not flash_attn_available():
            raise ValueError("flash-attn is not installed or does not import: pip install 'modernretrieval[gpu]'")
    return name
