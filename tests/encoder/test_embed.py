"""Texts in, token states out: input order, no padding effects, truncation, MLM fill-in."""

from __future__ import annotations

import pytest
import torch

import encoder


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return encoder.from_pretrained(tiny_checkpoint)


TEXTS = ["a short one", "", "def f(x):\n    return x * 2\n" * 30, "middle length text " * 12, "naïve café 北京"]


def test_embed_keeps_input_order_and_equals_one_at_a_time(model):
    states = model.embed(TEXTS, batch_tokens=300)  # several batches, sorted by length inside
    ids = model.tokenizer.encode(TEXTS)
    assert [s.shape for s in states] == [(len(row), 64) for row in ids]
    for text, batched in zip(TEXTS, states):
        alone = model.embed([text])[0]
        assert (alone - batched).abs().max() <= 1e-5


def test_embed_equals_padded_reference(model):
    """The batched, packed path equals transformers on the same checkpoint with padding."""
    from transformers import ModernBertModel

    reference = ModernBertModel.from_pretrained(model.tokenizer.source_folder, attn_implementation="sdpa").eval()
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(model.tokenizer.source_folder)(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = reference(**batch).last_hidden_state
    for i, states in enumerate(model.embed(TEXTS)):
        assert (states - expected[i, : len(states)]).abs().max() <= 1e-4


def test_max_length_truncates(model):
    states = model.embed(["word " * 500], max_length=64)[0]
    assert states.shape[0] == 64


def test_fill_mask(model):
    from transformers import ModernBertForMaskedLM

    text = "The capital of France is [MASK]."
    top = model.fill_mask(text, top_k=5)
    assert len(top) == 5 and all(isinstance(t, str) for t, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    reference = ModernBertForMaskedLM.from_pretrained(model.tokenizer.source_folder).eval()
    ids = model.tokenizer.encode([text])[0]
    with torch.inference_mode():
        logits = reference(input_ids=torch.tensor([ids])).logits[0, ids.index(model.tokenizer.mask_token_id)]
    assert model.tokenizer.decode([int(logits.argmax())]).strip() == top[0][0]
    assert logits.softmax(-1).max().item() == pytest.approx(top[0][1], abs=1e-5)


def test_fill_mask_needs_one_mask(model):
    with pytest.raises(ValueError, match="exactly one"):
        model.fill_mask("no mask here")


def test_embed_bad_input(model):
    with pytest.raises(TypeError, match="single string"):
        model.embed("one string")
    with pytest.raises(TypeError, match="not str"):
        model.embed([1, 2])
