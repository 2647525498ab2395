"""The attention backends: every layout and length against a direct masked computation.

The CUDA backends (torch varlen_attn, flash-attn) cannot run here; their wrappers are run with a CPU reference
implementation of the same varlen contract, which checks what we hand them: packed (tokens, heads, dim) tensors,
int32 cu_seqlens, the longest length, the scale, and the (left, right) window.
"""

from __future__ import annotations

import math

import pytest
import torch

from encoder.attention import AttentionPlan, flash_attention, resolve_backend, sdpa_attention, varlen_attention
from encoder.packing import lengths_to_cu_seqlens

HEADS, DIM, RADIUS = 3, 16, 64
SCALE = 1 / math.sqrt(DIM)


def direct(q, k, v, cu_seqlens, radius: int | None) -> torch.Tensor:
    """Per sequence: full softmax attention under an explicit |i - j| <= radius mask."""
    out = torch.empty_like(q)
    cu = cu_seqlens.tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        scores = torch.einsum("qhd,khd->hqk", q[a:b].double(), k[a:b].double()) * SCALE
        if radius is not None:
            pos = torch.arange(b - a)
            scores = scores.masked_fill((pos[:, None] - pos[None, :]).abs() > radius, float("-inf"))
        out[a:b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[a:b].double()).to(q.dtype)
    return out


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, softmax_scale=None, window_size=(-1, -1),
                     causal=False, dropout_p=0.0):
    """The varlen contract of torch.nn.attention.varlen.varlen_attn and flash_attn_varlen_func, on the CPU."""
    assert dropout_p == 0.0  # inference: no dropout reaches the kernel
    assert q.dim() == 3 and q.shape == k.shape == v.shape
    assert cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k)
    assert max_q == max_k == int(cu_q.diff().max())
    assert not causal and (scale or softmax_scale) == pytest.approx(SCALE)
    left, right = window_size
    assert left == right
    return direct(q, k, v, cu_q, None if left < 0 else left)


def packed_qkv(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return [torch.randn(total, HEADS, DIM, generator=g) for _ in range(3)], lengths_to_cu_seqlens(
        torch.tensor(lengths, dtype=torch.int32))


# lengths around every switch: window covers all (<= 65), band mask (<= 320), blockwise (> 320), block edges
LENGTHS = [1, 2, 64, 65, 66, 100, 129, 320, 321, 352, 353, 1000, 2049]


@pytest.mark.parametrize("local", [False, True])
def test_sdpa_backend_matches_direct(local):
    (q, k, v), cu_seqlens = packed_qkv(LENGTHS)
    plan = AttentionPlan.build(cu_seqlens, RADIUS, grouped=True)
    out = sdpa_attention(q, k, v, plan, local=local, scale=SCALE)
    assert (out - direct(q, k, v, cu_seqlens, RADIUS if local else None)).abs().max() < 1e-5


def test_sdpa_backend_with_repeated_and_interleaved_lengths():
    lengths = [400, 30, 400, 30, 30, 1000, 1000]  # equal lengths apart from each other: the gathered path
    (q, k, v), cu_seqlens = packed_qkv(lengths, seed=1)
    plan = AttentionPlan.build(cu_seqlens, RADIUS, grouped=True)
    assert {g.length: g.index is None for g in plan.groups} == {400: False, 30: False, 1000: True}
    for local in (False, True):
        out = sdpa_attention(q, k, v, plan, local=local, scale=SCALE)
        assert (out - direct(q, k, v, cu_seqlens, RADIUS if local else None)).abs().max() < 1e-5


@pytest.mark.parametrize("wrapper", [varlen_attention, flash_attention])
@pytest.mark.parametrize("local", [False, True])
def test_cuda_wrappers_hand_over_the_packed_batch(wrapper, local):
    (q, k, v), cu_seqlens = packed_qkv([5, 130, 700, 66], seed=2)
    plan = AttentionPlan.build(cu_seqlens, RADIUS, grouped=False)
    out = wrapper(q, k, v, plan, local=local, scale=SCALE, fn=reference_varlen)
    expected = sdpa_attention(q, k, v, AttentionPlan.build(cu_seqlens, RADIUS, grouped=True), local, SCALE)
    assert (out - expected).abs().max() < 1e-5


def test_model_runs_with_a_varlen_backend(monkeypatch, tiny_checkpoint):
    """The whole model through the varlen wrapper (CPU reference inside) equals the sdpa path."""
    import encoder
    from encoder import attention

    model = encoder.from_pretrained(tiny_checkpoint)
    ids, cu_seqlens = model.tokenizer.pack(["short", "a somewhat longer text " * 40, "x " * 300])
    with torch.inference_mode():
        expected = model(ids, cu_seqlens)
        monkeypatch.setitem(attention.ATTENTION_FUNCTIONS, "varlen",
                            lambda *a, **kw: varlen_attention(*a, **kw, fn=reference_varlen))
        monkeypatch.setattr("encoder.pretrained.resolve_backend", lambda name, device, dtype: "varlen")
        got = model(ids, cu_seqlens)
    assert (got - expected).abs().max() < 1e-5


def test_backend_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu, torch.float32) == "sdpa"
    assert resolve_backend("auto", cpu, torch.bfloat16) == "sdpa"
    assert resolve_backend("auto", cuda, torch.float32) == "sdpa"  # varlen kernels need half precision
    assert resolve_backend("auto", cuda, torch.bfloat16) in ("varlen", "flash", "sdpa")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("varlen", cpu, torch.bfloat16)
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", cpu, torch.float32)


def test_auto_skips_a_varlen_attn_without_scale_and_window(monkeypatch):
    """torch 2.9 and 2.10 have varlen_attn, but without the scale and window_size arguments we pass: sdpa instead."""
    import torch.nn.attention.varlen as varlen_module

    from encoder import attention

    def old_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, return_aux=None):
        raise AssertionError("not to be called")

    monkeypatch.setattr(varlen_module, "varlen_attn", old_varlen_attn)
    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    assert not attention.torch_varlen_available()
    assert resolve_backend("auto", torch.device("cuda"), torch.bfloat16) == "sdpa"
    with pytest.raises(ValueError, match="window_size"):
        resolve_backend("varlen", torch.device("cuda"), torch.bfloat16)


def test_auto_skips_a_flash_attn_that_does_not_import(monkeypatch, tmp_path):
    """A flash-attn built for another torch or CUDA is installed (find_spec sees it) but fails at import."""
    import importlib.util
    import sys

    from encoder import attention

    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text(
        'raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c10")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    forget = getattr(attention.flash_attn_available, "cache_clear", lambda: None)  # the answer is cached per process
    forget()
    monkeypatch.setattr(attention, "torch_varlen_available", lambda: False)
    try:
        assert importlib.util.find_spec("flash_attn") is not None
        assert resolve_backend("auto", torch.device("cuda"), torch.float16) == "sdpa"
        with pytest.raises(ValueError, match="flash-attn"):
            resolve_backend("flash", torch.device("cuda"), torch.float16)
    finally:
        forget()
        sys.modules.pop("flash_attn", None)


def test_attention_dropout_reaches_sdpa_in_training_only(monkeypatch):
    """transformers applies attention_dropout to the attention probabilities too (SDPA's dropout_p), in training."""
    from encoder import attention
    from encoder.testing import random_encoder

    model = random_encoder("tiny", num_hidden_layers=2, attention_dropout=0.25)
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, dropout_p=0.0, **kwargs):
        seen.append(dropout_p)
        return sdpa(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    ids, cu_seqlens = (torch.tensor([50281] + list(range(100, 500)) + [50282]), torch.tensor([0, 402]))
    model.train()
    model(ids, cu_seqlens)
    assert seen and set(seen) == {0.25}  # the global layer and the blockwise local layer
    seen.clear()
    model.eval()
    model(ids, cu_seqlens)
    assert seen and set(seen) == {0.0}
    plan = AttentionPlan.build(cu_seqlens.to(torch.int32), RADIUS, grouped=False)
    q = torch.randn(402, HEADS, DIM)
    with pytest.raises(ValueError, match="dropout"):
        varlen_attention(q, q, q, plan, local=False, scale=SCALE, dropout=0.1, fn=reference_varlen)
    # 'auto' trains on sdpa where it would pick varlen (no dropout there)
    monkeypatch.setattr("encoder.pretrained.resolve_backend", lambda name, device, dtype: "varlen")
    seen.clear()
    model.train()
    model(ids, cu_seqlens)
    assert seen and set(seen) == {0.25}
