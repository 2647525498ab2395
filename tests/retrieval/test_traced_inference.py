"""A transformers backbone's inference through a TorchScript trace (what a server runs, so that a query's encoding
does not take the GIL back after every operation): the same vectors as eager, for both heads; eager again whenever
the trace cannot be trusted (training, a trace that differs)."""

from __future__ import annotations

import numpy as np
import torch

from retrieval.heads import load_head
from retrieval.heads.backbones import TransformersBackbone
from retrieval.serve.batching import BatchingHead

QUERIES = ["parse a date", "x", "how do I retry a request when the server closes the connection " * 3]
DOCUMENTS = ["def add(a, b):\n    return a + b\n", "naïve café 北京 🚀", "long text " * 300, "a"]


def both_ways(head, encode):
    head.backbone.trace = False
    eager = encode(head)
    head.backbone.trace = True
    traced = encode(head)
    return eager, traced


def test_a_traced_dense_head_gives_the_eager_vectors(minilm_folder):
    head = load_head(str(minilm_folder), "dense")
    for encode in (lambda h: h.encode_queries(QUERIES), lambda h: h.encode_documents(DOCUMENTS)):
        eager, traced = both_ways(head, encode)
        np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), atol=1e-5)
    assert isinstance(head.backbone._traced[1], torch.jit.ScriptModule)  # the second encodings went through it


def test_a_traced_colbert_head_gives_the_eager_token_vectors(minilm_folder):
    """ColBERT's queries are padded with [MASK] tokens outside the attention mask: the trace applies any mask."""
    head = load_head(str(minilm_folder), "colbert", token_embeddings=True)
    for encode in (lambda h: h.encode_queries(QUERIES), lambda h: h.encode_documents(DOCUMENTS)):
        eager, traced = both_ways(head, encode)
        assert [t.shape for t in traced] == [e.shape for e in eager]
        for t, e in zip(traced, eager):
            np.testing.assert_allclose(np.asarray(t), np.asarray(e), atol=1e-5)
    assert head.backbone._traced[1] is not None


def test_the_trace_is_left_alone_in_training_and_remade_for_new_weights(minilm_folder):
    backbone = load_head(str(minilm_folder), "dense").backbone
    backbone.trace = True
    first = backbone._trace()
    assert first is not None and backbone._trace() is first  # made once
    backbone.model.train()
    assert backbone._trace() is None  # dropout is on: eager
    backbone.model.eval()
    backbone.model.to(torch.float64)  # other weights: a new trace
    again = backbone._trace()
    assert again is not None and again is not first


def test_a_trace_that_differs_from_eager_is_not_used(minilm_folder, monkeypatch):
    head = load_head(str(minilm_folder), "dense")
    expected = head.encode_queries(QUERIES)
    real_trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda module, inputs, **kwargs: real_trace(
        lambda i, m: module(i, m) * 1.001, inputs, check_trace=False))
    head.backbone.trace = True
    assert head.backbone._trace() is None
    np.testing.assert_allclose(head.encode_queries(QUERIES), expected, atol=1e-6)


def test_a_server_runs_a_transformers_head_traced(minilm_folder):
    head = load_head(str(minilm_folder), "dense")
    assert isinstance(head.backbone, TransformersBackbone) and not head.backbone.trace  # off for one-shot use
    wrapped = BatchingHead(head)
    try:
        assert head.backbone.trace
    finally:
        wrapped.batcher.close()
