"""A transformers backbone's inference through a TorchScript trace (what a server runs, so that a query's encoding
does not take the GIL back after every operation): the same vectors as eager, for both heads and int8; eager again
whenever the trace cannot be trusted (training, gradients, a trace that differs or fails, new weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.heads import load_head
from retrieval.heads.backbones import TransformersBackbone
from retrieval.serve.batching import BatchingHead

QUERIES = ["parse a date", "x", "how do I retry a request when the server closes the connection " * 3]
DOCUMENTS = ["def add(a, b):\n    return a + b\n", "naïve café 北京 🚀", "long text " * 200, "a"]


@pytest.fixture(scope="module")
def dense(minilm_folder):
    return load_head(str(minilm_folder), "dense")


def both_ways(head, encode):
    head.backbone.trace = False
    eager = encode(head)
    head.backbone.trace = True
    try:
        return eager, encode(head)
    finally:
        head.backbone.trace = False


def test_a_traced_dense_head_gives_the_eager_vectors(dense):
    for encode in (lambda h: h.encode_queries(QUERIES), lambda h: h.encode_documents(DOCUMENTS)):
        eager, traced = both_ways(dense, encode)
        np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), atol=1e-5)
    assert isinstance(dense.backbone.traced._made[1], torch.jit.ScriptModule)  # the second encodings went through it


def test_a_traced_colbert_head_gives_the_eager_token_vectors(minilm_folder):
    """ColBERT's queries are padded with [MASK] tokens outside the attention mask: the trace applies any mask."""
    head = load_head(str(minilm_folder), "colbert", token_embeddings=True)
    for encode in (lambda h: h.encode_queries(QUERIES), lambda h: h.encode_documents(DOCUMENTS)):
        eager, traced = both_ways(head, encode)
        assert [t.shape for t in traced] == [e.shape for e in eager]
        for t, e in zip(traced, eager):
            np.testing.assert_allclose(np.asarray(t), np.asarray(e), atol=1e-5)
    assert head.backbone.traced._made[1] is not None


def test_an_int8_model_is_traced_again_after_quantization(minilm_folder):
    head = load_head(str(minilm_folder), "dense")
    float_trace = head.backbone.traced.get()
    assert float_trace is not None
    head.backbone.quantize_int8()
    int8_trace = head.backbone.traced.get()
    assert int8_trace is not None and int8_trace is not float_trace
    eager, traced = both_ways(head, lambda h: h.encode_queries(QUERIES))
    np.testing.assert_allclose(traced, eager, atol=1e-5)


def test_the_trace_is_left_alone_in_training_and_remade_for_new_weights(minilm_folder):
    backbone = load_head(str(minilm_folder), "dense").backbone
    first = backbone.traced.get()
    assert first is not None and backbone.traced.get() is first  # made once
    backbone.model.train()
    assert backbone.traced.get() is None  # dropout is on: eager
    backbone.model.eval()
    backbone.model.to(torch.float64)  # other weights: a new trace
    again = backbone.traced.get()
    assert again is not None and again is not first


def test_gradients_run_eager_even_with_the_trace_on(dense):
    """Training calls forward_states with gradients: the trace (made without autograd) must not be used."""
    dense.backbone.trace = True
    try:
        hidden, _ = dense.backbone.forward_states([[101, 2054, 102], [101, 102]])
        assert hidden.requires_grad
        hidden.sum().backward()
    finally:
        dense.backbone.trace = False
        dense.backbone.model.zero_grad(set_to_none=True)


def test_a_trace_that_differs_from_eager_is_not_used(minilm_folder, monkeypatch):
    head = load_head(str(minilm_folder), "dense")
    expected = head.encode_queries(QUERIES)
    real_trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda module, inputs, **kwargs: real_trace(
        lambda i, m: module(i, m) * 1.001, inputs, check_trace=False))
    head.backbone.trace = True
    assert head.backbone.traced.get() is None
    np.testing.assert_allclose(head.encode_queries(QUERIES), expected, atol=1e-6)


def test_a_trace_that_fails_on_a_new_shape_falls_back_to_eager(dense):
    expected = dense.encode_queries(QUERIES)

    class Failing:
        def __call__(self, *inputs):
            raise RuntimeError("a shape the trace cannot take")

    dense.backbone.traced._made = (dense.backbone.traced._key(), Failing())
    dense.backbone.trace = True
    try:
        np.testing.assert_allclose(dense.encode_queries(QUERIES), expected, atol=1e-6)
        assert dense.backbone.traced._made[1] is None  # and eager from now on
    finally:
        dense.backbone.trace = False
        dense.backbone.traced._made = None


def test_a_server_runs_a_transformers_head_traced(minilm_folder):
    head = load_head(str(minilm_folder), "dense")
    assert isinstance(head.backbone, TransformersBackbone) and not head.backbone.trace  # off for one-shot use
    wrapped = BatchingHead(head)
    try:
        assert head.backbone.trace
    finally:
        wrapped.batcher.close()
