"""eval.encode.encode_beir on real SciFact (a 20-document, 5-query subset) with all-MiniLM-L6-v2: the cached
result equals encoding the same texts directly, a second call reads the cache instead of the model, and a broken
cache entry is encoded again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.encode import encode_beir
from retrieval import BiEncoder, ColBERT

from support import SCIFACT


@pytest.fixture(scope="module")
def subset(scifact):
    data = scifact
    return data, list(data.corpus)[:20][::-1], list(data.queries)[:5]  # an order of our own: kept as given


@pytest.fixture(scope="module")
def dense(minilm_folder) -> BiEncoder:
    return BiEncoder.from_pretrained(minilm_folder)


@pytest.fixture(scope="module")
def colbert(minilm_folder) -> ColBERT:
    return ColBERT.from_token_embeddings(minilm_folder)


def encode(subset, model, kind, cache_dir, model_key=None):
    data, doc_ids, query_ids = subset
    return encode_beir(data, model, kind, cache_dir=cache_dir, doc_ids=doc_ids, query_ids=query_ids,
                       model_key=model_key or f"minilm-{kind}", show_progress=False)


def forbid_encoding(monkeypatch, model) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the model was called: the cache was not used")

    monkeypatch.setattr(model, "encode_documents", fail)
    monkeypatch.setattr(model, "encode_queries", fail)


def test_dense_equals_bi_encoder(subset, dense, tmp_path):
    data, doc_ids, query_ids = subset
    result = encode(subset, dense, "dense", tmp_path)
    assert result.doc_ids == doc_ids and result.query_ids == query_ids
    assert result.docs.shape == (20, 384) and result.queries.shape == (5, 384) and result.docs.dtype == np.float32
    assert result.doc_offsets is None and result.query_offsets is None
    assert np.allclose(result.docs, dense.encode_documents(data.document_texts(doc_ids)), atol=1e-6)
    assert np.allclose(result.queries, dense.encode_queries([data.queries[q] for q in query_ids]), atol=1e-6)
    assert np.array_equal(result.doc(3), result.docs[3])
    description = json.loads(result.path.with_suffix(".json").read_text())
    assert description["n_docs"] == 20 and description["kind"] == "dense" and description["model"] == "minilm-dense"


def test_colbert_rows_equal_per_text_encoding(subset, colbert, tmp_path):
    data, doc_ids, query_ids = subset
    result = encode(subset, colbert, "colbert", tmp_path)
    docs = [colbert.encode_documents([text])[0] for text in data.document_texts(doc_ids)]
    queries = [colbert.encode_queries([data.queries[q]])[0] for q in query_ids]
    for packed, offsets, rows, get in ((result.docs, result.doc_offsets, docs, result.doc),
                                       (result.queries, result.query_offsets, queries, result.query)):
        assert offsets.dtype == np.int64 and offsets.tolist() == [0] + np.cumsum([len(r) for r in rows]).tolist()
        assert packed.dtype == np.float32 and packed.shape == (offsets[-1], 384)
        for i, row in enumerate(rows):
            assert np.allclose(get(i), row, atol=1e-5)
    assert max(np.diff(result.doc_offsets)) == 256  # SciFact abstracts run past MiniLM's max_seq_length


@pytest.mark.parametrize("kind", ["dense", "colbert"])
def test_second_call_reads_the_cache(subset, dense, colbert, tmp_path, monkeypatch, kind):
    model = dense if kind == "dense" else colbert
    first = encode(subset, model, kind, tmp_path)
    forbid_encoding(monkeypatch, model)
    second = encode(subset, model, kind, tmp_path)
    assert second.path == first.path and second.doc_ids == first.doc_ids and second.query_ids == first.query_ids
    for a, b in ((first.docs, second.docs), (first.queries, second.queries),
                 (first.doc_offsets, second.doc_offsets), (first.query_offsets, second.query_offsets)):
        assert (a is None and b is None) or np.array_equal(a, b)
    data, doc_ids, query_ids = subset
    with pytest.raises(AssertionError, match="cache was not used"):  # other ids: another key
        encode_beir(data, model, kind, cache_dir=tmp_path, doc_ids=doc_ids[:10], query_ids=query_ids,
                    model_key=f"minilm-{kind}", show_progress=False)
    with pytest.raises(AssertionError, match="cache was not used"):  # another model name: another key
        encode(subset, model, kind, tmp_path, model_key="another")
    monkeypatch.setattr(model, "strip", not model.strip)
    with pytest.raises(AssertionError, match="cache was not used"):  # text edges read otherwise: another key
        encode(subset, model, kind, tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "one byte flipped"])
def test_damaged_cache_entry_is_encoded_again(subset, colbert, tmp_path, damage):
    first = encode(subset, colbert, "colbert", tmp_path)
    raw = bytearray(first.path.read_bytes())
    size = len(raw)
    if damage == "truncated":
        raw = raw[: size // 2]
    else:
        raw[size // 2] ^= 0xFF  # inside the token rows: the zip's CRC-32 catches it
    first.path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="ignoring the cached embeddings"):
        again = encode(subset, colbert, "colbert", tmp_path)
    assert np.array_equal(again.docs, first.docs) and np.array_equal(again.doc_offsets, first.doc_offsets)
    assert again.path.stat().st_size == size and not list(tmp_path.glob("*.tmp"))  # rewritten whole


def test_model_given_by_path(subset, colbert, minilm_folder, tmp_path):
    data, doc_ids, query_ids = subset
    by_path = encode_beir(data, str(minilm_folder), "colbert", cache_dir=tmp_path, doc_ids=doc_ids,
                          query_ids=query_ids, token_embeddings=True, show_progress=False)
    by_object = encode(subset, colbert, "colbert", None)
    assert by_object.path is None and np.array_equal(by_path.doc_offsets, by_object.doc_offsets)
    assert np.allclose(by_path.docs, by_object.docs, atol=1e-6)
    description = json.loads(by_path.path.with_suffix(".json").read_text())
    assert description["model"].startswith(f"{minilm_folder.resolve()} (ColBERT.from_token_embeddings) files ")
    assert description["dataset"] == str(SCIFACT.resolve()) and description["lengths"]["document_length"] == 256


def test_mistakes_are_refused(subset, dense, tmp_path):
    data, doc_ids, query_ids = subset
    with pytest.raises(ValueError, match="model_key"):  # a loaded model cannot be named from the object
        encode_beir(data, dense, "dense", cache_dir=tmp_path, doc_ids=doc_ids)
    with pytest.raises(TypeError, match="ColBERT"):
        encode(subset, dense, "colbert", tmp_path)
    with pytest.raises(KeyError, match="not in the dataset"):
        encode_beir(data, dense, "dense", cache_dir=None, doc_ids=["no-such-doc"], query_ids=[])
    with pytest.raises(ValueError, match="kind"):
        encode(subset, dense, "sparse", tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["dense", "colbert"])
def test_an_interrupted_encoding_resumes_from_its_last_finished_chunk(subset, dense, colbert, tmp_path, monkeypatch,
                                                                      kind):
    import eval.encode as encode_module

    model = dense if kind == "dense" else colbert
    reference = encode(subset, model, kind, None)
    monkeypatch.setattr(encode_module, "CHUNK_TEXTS", 6)  # 20 documents: chunks of 6, 6, 6, 2
    real, calls, interrupted = model.encode_documents, [], []

    def interrupted_at_the_third_chunk(texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real(texts, **kwargs)

    monkeypatch.setattr(model, "encode_documents", interrupted_at_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        encode(subset, model, kind, tmp_path)
    assert len(list(tmp_path.glob("*.parts/docs-*.npz"))) == 2 and not list(tmp_path.glob("*.npz"))
    calls.clear()
    result = encode(subset, model, kind, tmp_path)
    assert calls == [6, 2]  # only the chunks that were not finished
    assert not list(tmp_path.glob("*.parts")) and result.tokens > 0
    assert np.allclose(result.docs, reference.docs, atol=1e-6) and np.allclose(result.queries, reference.queries)
    if kind == "colbert":
        assert np.array_equal(result.doc_offsets, reference.doc_offsets)


def test_a_model_trained_again_into_the_same_folder_is_another_cache_key(tmp_path):
    """The cache names a folder model by its path and a fingerprint of its files: weights written again (`mret train
    -o` the same folder) are encoded again, an untouched folder keeps its entry."""
    import os

    from eval.encode import model_cache_name
    from retrieval.heads.loading import loader_for

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / "config.json").write_text("{}")
    load = loader_for("dense", False)
    first = model_cache_name(folder, load)
    assert model_cache_name(folder, load) == first and str(folder.resolve()) in first
    (folder / "model.safetensors").write_bytes(b"weights v2")
    stat = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert model_cache_name(folder, load) != first
    assert model_cache_name("org/hub-model", load) == f"org/hub-model ({load.__qualname__})"


def test_a_hub_model_is_keyed_by_its_cached_revision(tmp_path, monkeypatch):
    """A hub id found in the local hub cache is named by its snapshot folder (the commit) and its files: a new
    revision of the same id is another key. The resolver never goes to the network (local_files_only)."""
    import huggingface_hub

    from eval.encode import model_cache_name
    from retrieval.heads.loading import loader_for

    snapshots = tmp_path / "models--org--hub-model" / "snapshots"
    for commit, weights in (("a" * 40, b"weights v1"), ("b" * 40, b"weights v2 longer")):
        (snapshots / commit).mkdir(parents=True)
        (snapshots / commit / "model.safetensors").write_bytes(weights)
    current = {"commit": "a" * 40}
    calls = []

    def cached_snapshot(repo_id, **options):
        calls.append((repo_id, options))
        if repo_id != "org/hub-model":
            raise FileNotFoundError("not in the cache")
        return str(snapshots / current["commit"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached_snapshot)
    load = loader_for("dense", False)
    first = model_cache_name("org/hub-model", load)
    assert f"snapshots/{'a' * 40}" in first and first.startswith(f"org/hub-model ({load.__qualname__}) snapshot ")
    assert model_cache_name("org/hub-model", load) == first
    current["commit"] = "b" * 40
    second = model_cache_name("org/hub-model", load)
    assert second != first and f"snapshots/{'b' * 40}" in second
    assert all(options.get("local_files_only") for _, options in calls)
    assert model_cache_name("org/uncached", load) == f"org/uncached ({load.__qualname__})"
