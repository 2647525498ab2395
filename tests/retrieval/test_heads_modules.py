"""The heads as torch modules: the backbone and every layer registered (parameters, train/eval, to), each layer
saving and loading its own folder as sentence-transformers' modules do, the folders the heads write, and the
differentiable ``scores`` beside ``similarity``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from encoder import ModelLoadError
from retrieval import BiEncoder, ColBERT
from retrieval.heads import Head
from retrieval.heads.layers import Dense, Normalize, Pooling, PyLateDense

from support import dense_model_folder

TEXTS = ["parse a json file", "open an http socket, then read", "sort the merged list"]


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory, tokenizer_dir) -> Path:
    return dense_model_folder(tmp_path_factory.mktemp("dense") / "model")


@pytest.fixture(scope="module")
def dense(dense_folder) -> BiEncoder:
    """A bi-encoder with a Dense layer (64 -> 32, bias, Tanh) between pooling and Normalize."""
    model = BiEncoder.from_pretrained(dense_folder)
    layer = Dense(64, 32, bias=True, activation="torch.nn.modules.activation.Tanh")
    with torch.no_grad():
        layer.linear.weight.copy_(torch.randn(32, 64, generator=torch.Generator().manual_seed(1)) * 0.1)
        layer.linear.bias.copy_(torch.linspace(-1, 1, 32))
    model.dense.append(layer)
    return model.eval()


@pytest.fixture(scope="module")
def colbert(dense_folder) -> ColBERT:
    return ColBERT.from_base(dense_folder, dim=16)


def test_heads_are_modules_whose_parameters_modes_and_moves_reach_every_part(dense_folder, dense, colbert):
    for loaded in (BiEncoder.from_pretrained(dense_folder), ColBERT.from_base(dense_folder, dim=16)):
        assert not any(m.training for m in loaded.modules())  # loaded for inference
    for head in (dense, colbert):
        assert isinstance(head, torch.nn.Module) and isinstance(head, Head)
        parts = [head.backbone.model, *head.dense]
        assert {id(p) for p in head.parameters()} == {id(p) for part in parts for p in part.parameters()}
        head.train()
        assert all(part.training for part in parts)
        head.eval()
        assert not any(part.training for part in parts)
    moved = ColBERT.from_base(dense.folder, dim=16).to(torch.float64)
    assert {p.dtype for p in moved.parameters()} == {torch.float64}
    assert moved.dense[0].linear.weight.dtype == torch.float64


def test_the_document_length_of_a_bi_encoder_is_its_max_length(dense_folder):
    model = BiEncoder.from_pretrained(dense_folder)
    model.document_length = 40
    assert model.max_length == 40 and model.settings()["max_length"] == 40
    model.max_length = 50
    assert model.document_length == 50


def test_each_layer_saves_and_loads_its_own_folder(tmp_path):
    pooling = Pooling(64, ["mean", "max"], include_prompt=True)
    pooling.save(tmp_path / "pooling")
    config = json.loads((tmp_path / "pooling" / "config.json").read_text())
    assert config["word_embedding_dimension"] == 64 and config["pooling_mode_mean_tokens"]
    assert config["pooling_mode_max_tokens"] and not config["pooling_mode_cls_token"]
    again = Pooling.load(tmp_path / "pooling")
    assert (again.dimension, again.modes, again.include_prompt) == (64, ["mean", "max"], True)

    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "config.json").write_text(json.dumps(
        {"embedding_dimension": 8, "pooling_mode": "mean_sqrt_len", "include_prompt": False}))  # the 6.x spelling
    newer = Pooling.load(tmp_path / "new")
    assert (newer.dimension, newer.modes, newer.include_prompt) == (8, ["mean_sqrt_len_tokens"], False)

    layer = Dense(8, 4, bias=True, activation="torch.nn.modules.activation.Tanh")
    with torch.no_grad():
        layer.linear.weight.copy_(torch.arange(32.0).view(4, 8) / 32)
        layer.linear.bias.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))
    layer.save(tmp_path / "dense")
    assert json.loads((tmp_path / "dense" / "config.json").read_text()) == {
        "in_features": 8, "out_features": 4, "bias": True, "activation_function": "torch.nn.modules.activation.Tanh"}
    assert set(load_file(str(tmp_path / "dense" / "model.safetensors"))) == {"linear.weight", "linear.bias"}
    loaded = Dense.load(tmp_path / "dense")
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x), layer(x)) and isinstance(loaded.activation, torch.nn.Tanh)

    PyLateDense.load(tmp_path / "dense").save(tmp_path / "pylate")
    assert json.loads((tmp_path / "pylate" / "config.json").read_text())["use_residual"] is False

    Normalize().save(tmp_path / "normalize")
    assert json.loads((tmp_path / "normalize" / "config.json").read_text()) == {}
    assert torch.allclose(Normalize.load(tmp_path / "normalize")(x).norm(dim=1), torch.ones(3))


def test_a_residual_dense_layer_is_refused(tmp_path):
    Dense(4, 4).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "use_residual": True}))
    with pytest.raises(ModelLoadError, match="use_residual"):
        Dense.load(tmp_path)


def test_a_new_projection_draws_nothing_from_the_global_random_stream():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    square, narrow = Dense.new(8, 8), Dense.new(8, 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(square.linear.weight, torch.eye(8)) and square.linear.bias is None
    assert torch.allclose(narrow.linear.weight @ narrow.linear.weight.T, torch.eye(4), atol=1e-6)  # orthogonal rows
    assert torch.equal(narrow.linear.weight, Dense.new(8, 4).linear.weight)  # seeded: the same every time


def test_saved_folders_list_one_numbered_folder_per_module(dense, colbert, tmp_path):
    dense.save(tmp_path / "dense")
    modules = json.loads((tmp_path / "dense" / "modules.json").read_text())
    assert [(m["path"], m["type"]) for m in modules] == [
        ("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Dense", "sentence_transformers.models.Dense"), ("3_Normalize", "sentence_transformers.models.Normalize")]
    assert json.loads((tmp_path / "dense" / "2_Dense" / "config.json").read_text())["out_features"] == 32
    again = BiEncoder.from_pretrained(tmp_path / "dense")
    assert np.allclose(again.encode_documents(TEXTS), dense.encode_documents(TEXTS), atol=1e-6)

    colbert.save(tmp_path / "colbert")
    modules = json.loads((tmp_path / "colbert" / "modules.json").read_text())
    assert [(m["path"], m["type"]) for m in modules] == [
        ("", "sentence_transformers.models.Transformer"), ("1_Dense", "pylate.models.Dense.Dense")]
    assert json.loads((tmp_path / "colbert" / "1_Dense" / "config.json").read_text()) == {
        "in_features": 64, "out_features": 16, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False}
    for a, b in zip(ColBERT.from_pretrained(tmp_path / "colbert").encode_documents(TEXTS),
                    colbert.encode_documents(TEXTS)):
        assert np.allclose(a, b, atol=1e-6)


def test_scores_are_the_differentiable_similarity(dense, colbert):
    for head in (dense, colbert):
        queries = head.forward(head.tokenize(TEXTS[:2], True), True)
        documents = head.forward(head.tokenize(TEXTS, False), False)
        scores = head.scores(queries, documents)
        expected = head.similarity(head.encode_queries(TEXTS[:2]), head.encode_documents(TEXTS))
        assert scores.shape == (2, 3) and np.allclose(scores.detach().numpy(), expected, atol=1e-5)
        scores.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.backbone.model.parameters())
        head.zero_grad(set_to_none=True)
    rows = dense.forward(dense.tokenize(TEXTS, False))
    assert torch.equal(dense.scores(list(rows), rows), dense.scores(rows, rows))  # rows one by one, or stacked


@pytest.mark.parametrize("kind", ["dense", "colbert", "dense-bert"])
def test_encoding_holds_one_batch_of_token_states_at_a_time(dense_folder, minilm_folder, kind, monkeypatch):
    """Each backbone batch is pooled (dense) or projected (ColBERT) as soon as it is run, before the next batch runs:
    the states of every token of every text were all kept until the end (memory grew with the total tokens). Counted,
    not timed: when the backbone starts a batch, how many texts' states made by earlier batches have not yet been
    pooled or projected (must be none). The vectors are those of pooling / projecting all the states at once."""
    from retrieval.heads import dense as dense_module
    from retrieval.heads.layers import pool_all

    head = (ColBERT.from_base(dense_folder, dim=16, document_length=1000) if kind == "colbert" else
            BiEncoder.from_pretrained(minilm_folder if kind == "dense-bert" else dense_folder))
    # ModernBERT: batches of 2048 tokens; transformers' BERT: of 256 texts at most
    texts = ([f"word {i}" for i in range(520)] if kind == "dense-bert" else
             [f"word{i} and more words " * (60 + 20 * i) for i in range(8)])
    made, used, waiting = [0], [0], []

    def batch_size(args, kwargs) -> int:  # ModernBERT: (input_ids, cu_seqlens, ...); transformers: input_ids=(b, n)
        return len(args[1]) - 1 if len(args) > 1 else len(kwargs["input_ids"])

    hooks = [head.backbone.model.register_forward_pre_hook(
                 lambda module, args, kwargs: waiting.append(made[0] - used[0]), with_kwargs=True),
             head.backbone.model.register_forward_hook(
                 lambda module, args, kwargs, out: made.__setitem__(0, made[0] + batch_size(args, kwargs)),
                 with_kwargs=True)]
    if kind == "colbert":
        project = head._project
        monkeypatch.setattr(head, "_project", lambda states: used.__setitem__(0, used[0] + 1) or project(states))
    else:
        monkeypatch.setattr(dense_module, "pool_all",
                            lambda states, modes: used.__setitem__(0, used[0] + len(states)) or pool_all(states, modes))
    try:
        vectors = head.encode_documents(texts, show_progress=False)
    finally:
        for hook in hooks:
            hook.remove()
        monkeypatch.undo()
    assert len(waiting) >= 3 and waiting == [0] * len(waiting) and made[0] == used[0] == len(texts)
    ids = head.tokenize(texts, is_query=False)
    with torch.inference_mode():
        states = head.backbone.token_states(ids)
        if kind == "colbert":
            for got, s, row in zip(vectors, states, ids):
                assert np.allclose(got, head._kept(head._project(s), row, False).numpy(), atol=1e-6)
        else:
            assert np.allclose(vectors, head._head(pool_all(states, head.pooling.modes)).numpy(), atol=1e-6)
