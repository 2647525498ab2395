"""CUDA paths against the CPU path (runs only where a GPU is present; skipped on CPU-only machines)."""

from __future__ import annotations

import pytest
import torch

import encoder
from encoder.attention import flash_attn_available, torch_varlen_available
from encoder.packing import pack, split

from support import random_ids

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

LENGTHS = [3, 65, 130, 700, 2100]


def states(model, token_ids):
    input_ids, cu_seqlens = pack(token_ids)
    with torch.inference_mode():
        return [s.float().cpu() for s in split(model(input_ids, cu_seqlens), cu_seqlens)]


def test_cuda_fp32_matches_cpu(tiny_checkpoint):
    token_ids = random_ids(LENGTHS)
    cpu = states(encoder.from_pretrained(tiny_checkpoint), token_ids)
    gpu = states(encoder.from_pretrained(tiny_checkpoint, device="cuda"), token_ids)
    assert max((a - b).abs().max().item() for a, b in zip(cpu, gpu)) <= 1e-4


@pytest.mark.parametrize("backend", ["varlen", "flash"])
def test_cuda_half_precision_backends_match_sdpa(tiny_checkpoint, backend):
    if backend == "varlen" and not torch_varlen_available():
        pytest.skip("torch.nn.attention.varlen needs torch >= 2.9")
    if backend == "flash" and not flash_attn_available():
        pytest.skip("flash-attn is not installed")
    token_ids = random_ids(LENGTHS)
    reference = states(encoder.from_pretrained(tiny_checkpoint, device="cuda", dtype=torch.bfloat16,
                                               attention_backend="sdpa"), token_ids)
    got = states(encoder.from_pretrained(tiny_checkpoint, device="cuda", dtype=torch.bfloat16,
                                         attention_backend=backend), token_ids)
    cosine = min(torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item() for a, b in zip(reference, got))
    assert cosine > 0.999
