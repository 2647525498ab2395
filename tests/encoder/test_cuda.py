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


def test_cuda_colbert_and_bi_encoder_encode_as_on_cpu(tmp_path):
    """The heads' encode on CUDA (the vectors come back to the CPU as float32 numpy: ColBERT called .numpy() on
    CUDA tensors and raised), against the same model on the CPU."""
    import numpy as np

    from retrieval import BiEncoder, ColBERT

    from support import PYLATE_MODEL, dense_model_folder

    if not (PYLATE_MODEL / "modules.json").exists():
        pytest.skip(f"the PyLate fixture model is not at {PYLATE_MODEL}")
    texts = ["late interaction, token by token", "retrieval " * 300, "x"]
    cpu, gpu = ColBERT.from_pretrained(PYLATE_MODEL), ColBERT.from_pretrained(PYLATE_MODEL, device="cuda")
    for encode in ("encode_documents", "encode_queries"):
        for a, b in zip(getattr(cpu, encode)(texts), getattr(gpu, encode)(texts)):
            assert isinstance(b, np.ndarray) and b.dtype == np.float32 and a.shape == b.shape
            assert np.abs(a - b).max() <= 1e-4
    folder = dense_model_folder(tmp_path / "dense")
    a, b = BiEncoder.from_pretrained(folder).encode_documents(texts), BiEncoder.from_pretrained(
        folder, device="cuda").encode_documents(texts)
    assert isinstance(b, np.ndarray) and b.dtype == np.float32 and np.abs(a - b).max() <= 1e-4
