"""Numerical parity with transformers' ModernBertModel / ModernBertForMaskedLM (the reference), fp32, on CPU.

Every path is checked against the reference on batches of mixed lengths: shorter than the window, just past it
(129, 130: the window matters), and long (2100 tokens, 8192 tokens) so the blockwise local path runs.
"""

from __future__ import annotations

import pytest
import torch

import encoder
from encoder.config import ModernBertConfig
from encoder.packing import pack, split

from support import hf_model, padded, random_ids

TOL = 1e-4
MIXED = [3, 17, 64, 65, 66, 129, 130, 200, 321, 700, 2100]


def reference_states(hf, token_ids, one_by_one: bool = False) -> list[torch.Tensor]:
    """The reference's hidden states: one padded batch, or (cheaper for long mixed batches) one call per text."""
    body = getattr(hf, "model", hf)
    with torch.inference_mode():
        if one_by_one:
            return [body(input_ids=torch.tensor([row])).last_hidden_state[0] for row in token_ids]
        ids, mask = padded(token_ids)
        states = body(input_ids=ids, attention_mask=mask).last_hidden_state
    return [states[i, : len(row)] for i, row in enumerate(token_ids)]


def ours_from(hf) -> encoder.Encoder:
    config = ModernBertConfig.from_hf_dict(hf.config.to_dict())
    return encoder.Encoder.from_state_dict(config, hf.state_dict()).eval()


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.fixture(scope="module")
def tiny():
    hf = hf_model("tiny")
    return hf, ours_from(hf)


def test_packed_matches_transformers(tiny):
    hf, ours = tiny
    token_ids = random_ids(MIXED)
    input_ids, cu_seqlens = pack(token_ids)
    with torch.inference_mode():
        states = split(ours(input_ids, cu_seqlens), cu_seqlens)
    assert max_diff(states, reference_states(hf, token_ids)) <= TOL


def test_packed_in_any_order_and_interleaved_lengths(tiny):
    """Sequences of one length that are not back to back take the gathered (indexed) path."""
    hf, ours = tiny
    token_ids = random_ids([130, 40, 130, 700, 40, 700, 5], seed=1)
    input_ids, cu_seqlens = pack(token_ids)
    with torch.inference_mode():
        states = split(ours(input_ids, cu_seqlens), cu_seqlens)
    assert max_diff(states, reference_states(hf, token_ids)) <= TOL


def test_padded_call_matches_transformers(tiny):
    hf, ours = tiny
    token_ids = random_ids(MIXED, seed=2)
    ids, mask = padded(token_ids)
    with torch.inference_mode():
        out = ours.forward_padded(ids, mask)
        ref = hf.model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.bool()
    assert (out[m] - ref[m]).abs().max().item() <= TOL
    assert out[~m].abs().max().item() == 0.0  # nothing computed for padding


def test_mlm_logits_match_transformers(tiny):
    hf, ours = tiny
    token_ids = random_ids([12, 150, 400], seed=3)
    ids, mask = padded(token_ids)
    with torch.inference_mode():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        input_ids, cu_seqlens = pack(token_ids)
        logits = ours.mlm_logits(ours(input_ids, cu_seqlens))
    assert (logits - ref[mask.bool()]).abs().max().item() <= TOL


def test_8192_tokens_match_transformers():
    """The model's full context in one sequence: runs on CPU and equals the reference."""
    hf = hf_model("tiny", num_hidden_layers=3, seed=4)
    ours = ours_from(hf)
    token_ids = random_ids([8192], seed=4)
    input_ids, cu_seqlens = pack(token_ids)
    with torch.inference_mode():
        states = [ours(input_ids, cu_seqlens)]
    assert max_diff(states, reference_states(hf, token_ids)) <= TOL


@pytest.mark.parametrize("shape,lengths,layers", [("base", [2100, 300, 130, 37], None), ("large", [2050, 129, 40], 6)])
def test_real_shapes_match_transformers(shape, lengths, layers):
    """The real ModernBERT-base (all 22 layers, 768: the error accumulated over the full depth) and -large (1024
    wide, 16 heads; 6 of its 28 layers, two of them global: the width is what differs from base) shapes, random
    weights."""
    hf = hf_model(shape, mlm=False, seed=5, **({"num_hidden_layers": layers} if layers else {}))
    ours = ours_from(hf)
    token_ids = random_ids(lengths, seed=5)
    input_ids, cu_seqlens = pack(token_ids)
    with torch.inference_mode():
        states = split(ours(input_ids, cu_seqlens), cu_seqlens)
    assert max_diff(states, reference_states(hf, token_ids, one_by_one=True)) <= TOL


def test_base_shape_at_8192_tokens():
    """ModernBERT-base's layer shapes at its full context on CPU: fits in memory and equals the reference. Three
    layers (a global one and two sliding-window ones, as base alternates them) are every kind of layer at 8192 tokens;
    all 22 only repeat them, for 90 more seconds of the reference's dense 8192x8192 attention."""
    hf = hf_model("base", mlm=False, seed=6, num_hidden_layers=3)
    ours = ours_from(hf)
    token_ids = random_ids([8192], seed=6)
    input_ids, cu_seqlens = pack(token_ids)
    with torch.inference_mode():
        states = [ours(input_ids, cu_seqlens)]
    assert max_diff(states, reference_states(hf, token_ids, one_by_one=True)) <= TOL


def test_query_only_tokens_match_transformers_attention_mask(tiny):
    """Trailing tokens with attention mask 0 (ColBERT query expansion): they read the text, nobody reads them."""
    hf, ours = tiny
    token_ids = random_ids([32, 32, 200, 400], seed=9)
    key_lengths = [9, 32, 120, 300]
    ids = torch.tensor([row + [50283] * (400 - len(row)) for row in token_ids])
    mask = torch.zeros_like(ids)
    for i, keys in enumerate(key_lengths):
        mask[i, :keys] = 1
    input_ids, cu_seqlens = pack(token_ids)
    with torch.inference_mode():
        expected = hf.model(input_ids=ids, attention_mask=mask).last_hidden_state
        states = split(ours(input_ids, cu_seqlens, key_lengths=key_lengths), cu_seqlens)
    assert max_diff(states, [expected[i, : len(row)] for i, row in enumerate(token_ids)]) <= TOL


def test_rope_frequencies_stay_float32_in_any_dtype():
    from encoder.testing import random_encoder

    model = random_encoder("tiny", num_hidden_layers=1)
    expected = {name: rotary.inv_freq.clone() for name, rotary in model.model.rotary.items()}
    for convert in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.to(dtype=torch.float32)):
        convert(model)
        for name, rotary in model.model.rotary.items():
            assert rotary.inv_freq.dtype == torch.float32
            assert torch.equal(rotary.inv_freq, expected[name])


def test_bf16_long_sequence_tracks_transformers_bf16(tmp_path):
    """Loaded in bf16, our RoPE angles are those of transformers' bf16 (float32 frequencies): at ~2000 tokens, with
    position-sensitive attention, ours stays as close to the fp32 reference as transformers' bf16 does."""
    from transformers import ModernBertModel

    from encoder.testing import random_encoder

    model = random_encoder("tiny", mlm_head=False, hidden_size=128, num_attention_heads=2, num_hidden_layers=3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.attn.Wqkv.weight.mul_(8)  # sharp attention: a wrong angle moves the output
    model.save_pretrained(tmp_path)
    ours = encoder.from_pretrained(tmp_path, dtype=torch.bfloat16)
    hf16 = ModernBertModel.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    hf32 = ModernBertModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    ids = random_ids([2000], seed=3)
    with torch.inference_mode():
        got = ours(*pack(ids)).float()
        theirs = hf16(input_ids=torch.tensor(ids)).last_hidden_state[0].float()
        exact = hf32(input_ids=torch.tensor(ids)).last_hidden_state[0]
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(got, exact, dim=-1).min() >= cosine(theirs, exact, dim=-1).min() - 0.02
    assert cosine(got, theirs, dim=-1).min() > 0.97
