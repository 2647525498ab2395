"""Token pooling of ColBERT documents (retrieval/heads/token_pooling.py, ``ColBERT.pool_factor``) against PyLate 1.6's
``pool_factor`` (tests/fixtures/pylate_pooling, with the script that made it), and its path through the index
configuration, ``mret index`` and ``mret eval``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modernretrieval.errors import ModernRetrievalError, SettingsError
from retrieval import ColBERT
from retrieval.heads.token_pooling import check_pool_factor, pool_documents, pool_tokens
from support import PYLATE_MODEL, single_torch_thread

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pylate_pooling"
INFO = json.loads((FIXTURE / "pylate_pooling.json").read_text())
ARRAYS = dict(np.load(FIXTURE / "pylate_pooling.npz"))
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from single_torch_thread()


@pytest.fixture(scope="module")
def model() -> ColBERT:
    if not (PYLATE_MODEL / "modules.json").exists():
        pytest.skip(f"the PyLate model is not at {PYLATE_MODEL} (../shared is missing)")
    for name, digest in INFO["weights_sha256"].items():
        assert hashlib.sha256((PYLATE_MODEL / name).read_bytes()).hexdigest() == digest, (
            f"{PYLATE_MODEL / name} is not the model tests/fixtures/pylate_pooling was made from")
    return ColBERT.from_pretrained(PYLATE_MODEL)


def unit_rows(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----- the algorithm, on PyLate's own input vectors
@pytest.mark.parametrize("factor", INFO["factors"])
def test_pools_pylates_vectors_exactly_as_pylate(factor):
    """Each document's unpooled PyLate vectors, pooled here, are PyLate's pooled vectors: same rows, same order."""
    checked = 0
    for i in range(len(INFO["documents"])):
        key = f"pool{factor}_doc_{i}"
        if key in INFO["refused"]:
            continue
        ours = pool_tokens(ARRAYS[f"doc_{i}"], factor)
        assert ours.shape == ARRAYS[key].shape and ours.dtype == np.float32, (key, ours.shape)
        np.testing.assert_allclose(ours, ARRAYS[key], rtol=0, atol=1e-6, err_msg=key)
        checked += 1
    for name in INFO["synthetic"]:
        ours = pool_tokens(ARRAYS[f"synthetic_{name}"], factor)
        np.testing.assert_allclose(ours, ARRAYS[f"synthetic_{name}_pool{factor}"], rtol=0, atol=1e-6, err_msg=name)
    assert checked >= 7
    assert ARRAYS["pool2_doc_3"].shape[0] < ARRAYS["doc_3"].shape[0]  # the reference really pools


def test_a_document_pylate_refuses_is_pooled_here():
    """Equal vectors (cosine rounding above 1) make PyLate 1.6's Ward tree invalid; the clipped distances pool it."""
    from scipy.cluster import hierarchy

    assert set(INFO["refused"]) == {"pool2_doc_7", "pool3_doc_7"}
    vectors = ARRAYS["doc_7"]
    rest = vectors[1:]
    unclipped = (1 - rest @ rest.T)[np.triu_indices(len(rest), k=1)]
    assert unclipped.min() < 0
    with pytest.raises(ValueError, match="negative distances"):  # what PyLate does, step by step
        hierarchy.fcluster(hierarchy.linkage(unclipped, method="ward"), t=len(rest) // 2, criterion="maxclust")
    for factor in (2, 3):
        pooled = pool_tokens(vectors, factor)
        assert 1 < len(pooled) <= 1 + len(rest) // factor and np.isfinite(pooled).all()
        assert np.array_equal(pooled[0], vectors[0])


# ----- properties
def test_pool_factor_two_halves_the_vectors_and_keeps_the_protected_token():
    # n vectors -> 1 protected + (n - 1) // factor clusters (at least 1); too few to reduce: unchanged
    expected = {(2, 2): 2, (3, 2): 2, (3, 3): 2, (10, 2): 5, (10, 3): 4, (10, 4): 3, (57, 2): 29, (57, 3): 19,
                (57, 4): 15, (180, 2): 90, (180, 3): 60, (180, 4): 45, (101, 2): 51, (101, 3): 34}
    for (n, factor), count in expected.items():
        vectors = unit_rows(n, seed=n)
        pooled = pool_tokens(vectors, factor)
        assert len(pooled) == count, (n, factor, len(pooled))
        assert np.array_equal(pooled[0], vectors[0])  # [CLS], as it was
        assert not any(np.array_equal(row, vectors[0]) for row in pooled[1:]) or count == n
    big = unit_rows(101, seed=1)
    kept = pool_tokens(big, 2, protected=4)
    assert np.array_equal(kept[:4], big[:4]) and len(kept) == 4 + 97 // 2


def test_pooled_rows_are_means_of_a_partition_of_the_tokens():
    """Every unprotected token belongs to exactly one cluster: the pooled rows, weighted by cluster size, sum to the
    tokens' sum, and each is the mean of the tokens nearest it."""
    vectors = unit_rows(40, seed=3)
    pooled = pool_tokens(vectors, 2)
    rest = vectors[1:]
    owner = np.argmax(rest @ pooled[1:].T - 0.5 * (pooled[1:] ** 2).sum(1), axis=1)  # nearest centre (Euclidean)
    counts = np.bincount(owner, minlength=len(pooled) - 1)
    assert counts.sum() == len(rest) and (counts > 0).all()
    np.testing.assert_allclose((pooled[1:] * counts[:, None]).sum(0), rest.sum(0), atol=1e-4)


def test_pool_factor_one_is_the_identity(model):
    vectors = [unit_rows(n, seed=n) for n in (1, 5, 30)]
    assert all(a is b for a, b in zip(pool_documents(vectors, 1), vectors))
    assert all(pool_tokens(v, 1) is v for v in vectors)
    texts = INFO["documents"]
    assert model.pool_factor == 1 and model.settings()["pool_factor"] == 1
    plain = model.encode_documents(texts)
    for i, d in enumerate(plain):
        np.testing.assert_allclose(d, ARRAYS[f"doc_{i}"], atol=1e-6)


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True, None, np.float32(2)])
def test_bad_pool_factors_are_settings_errors(value, model):
    with pytest.raises(SettingsError, match="pool factor"):
        check_pool_factor(value)
    with pytest.raises(SettingsError):
        model.pool_factor = value
    assert model.pool_factor == 1
    with pytest.raises(SettingsError):
        pool_tokens(unit_rows(5), value)


# ----- the head
@pytest.mark.parametrize("factor", INFO["factors"])
def test_head_pools_documents_like_pylate(model, factor):
    """``ColBERT.pool_factor`` end to end against PyLate's ``encode(..., pool_factor=N)`` on the same texts; queries
    and ``forward`` (training) are never pooled."""
    texts = INFO["documents"]
    model.pool_factor = factor
    try:
        assert model.settings() == {"query_length": 32, "document_length": 180, "pool_factor": factor}
        pooled = model.encode_documents(texts)
        queries = model.encode_queries(["what is pooling?"])
        trained = model.forward(model.tokenize(texts[:1], is_query=False), is_query=False)
    finally:
        model.pool_factor = 1
    for i, d in enumerate(pooled):
        key = f"pool{factor}_doc_{i}"
        if key in INFO["refused"]:
            assert len(d) == len(pool_tokens(ARRAYS[f"doc_{i}"], factor))
            continue
        assert d.shape == ARRAYS[key].shape, (key, d.shape)
        np.testing.assert_allclose(d, ARRAYS[key], rtol=0, atol=1e-5, err_msg=key)
    assert queries[0].shape == (32, 128)
    assert trained[0].shape[0] == ARRAYS["doc_0"].shape[0]
    assert sum(map(len, pooled)) < sum(len(ARRAYS[f"doc_{i}"]) for i in range(len(texts))) * 0.7


def test_load_head_sets_the_pool_factor_and_refuses_it_for_a_dense_head(model, minilm_folder):
    """``load_head(pool_factor=N)``, the one place every caller (retriever, eval, Ray actors) sets it: a ColBERT
    that pools as PyLate does; a dense head has nothing to pool, so N != 1 is one clear settings error."""
    from retrieval.heads.loading import load_head

    pooled = load_head(PYLATE_MODEL, "colbert", pool_factor=2)
    assert isinstance(pooled, ColBERT) and pooled.pool_factor == 2 and pooled.settings()["pool_factor"] == 2
    document = pooled.encode_documents(INFO["documents"][:1])[0]
    assert len(document) < len(ARRAYS["doc_0"])
    np.testing.assert_allclose(document, ARRAYS["pool2_doc_0"], rtol=0, atol=1e-5)
    with pytest.raises(SettingsError, match="pool factor 2.*colbert only") as error:
        load_head(minilm_folder, "dense", pool_factor=2)
    assert isinstance(error.value, ModernRetrievalError) and len(str(error.value).splitlines()) == 1


# ----- where the setting travels: eval cache key, index configuration, mret index, mret eval
def tiny_beir(folder: Path) -> Path:
    from eval.datasets.beir import write_beir

    corpus = {f"d{i}": {"title": "", "text": text} for i, text in enumerate(INFO["documents"][:4])}
    return write_beir(folder, corpus, {"q1": "what scores documents?"}, {"test": {"q1": {"d0": 1}}})


def test_eval_caches_pooled_and_unpooled_encodings_apart(model, tmp_path):
    from eval.datasets.beir import load_beir
    from eval.runner import EvalSettings, run_eval

    data = load_beir(tiny_beir(tmp_path / "data"))
    records = {}
    for factor in (1, 2):
        settings = EvalSettings(str(PYLATE_MODEL), "colbert", "flat", pool_factor=factor)
        records[factor] = run_eval(data, settings, tmp_path / f"out{factor}", tmp_path / "cache", False)
    entries = {json.loads(p.read_text())["lengths"].get("pool_factor", 1): p
               for p in (tmp_path / "cache" / "embeddings").glob("*.json")}
    assert set(entries) == {1, 2}
    assert "pool_factor" not in json.loads(entries[1].read_text())["lengths"]  # the key entries made before had
    one, two = (json.loads(entries[f].read_text())["docs_shape"][0] for f in (1, 2))
    assert two < one
    assert records[2]["model"]["pool_factor"] == 2 and records[2]["settings"]["pool_factor"] == 2
    with pytest.raises(SettingsError, match="needs --kind colbert"):
        EvalSettings(str(PYLATE_MODEL), "dense", "flat", pool_factor=2).check()
    with pytest.raises(SettingsError):
        EvalSettings(str(PYLATE_MODEL), "colbert", "flat", pool_factor=0).check()


def mret(*args):
    from retrieval.cli import app

    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, needle: str) -> None:
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output and needle in " ".join(result.output.split()), result.output


def test_mret_index_remembers_the_pool_factor(model, tmp_path):
    from retrieval.codebase.config import IndexConfig
    from retrieval.codebase.retriever import Retriever

    root = tmp_path / "tree"
    root.mkdir()
    for i, text in enumerate(INFO["documents"][:4]):
        (root / f"doc{i}.txt").write_text(text + "\n")
    result = mret("index", root, "--model", PYLATE_MODEL, "--kind", "colbert", "--max-length", "64",
                  "--pool-factor", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    assert IndexConfig.read(root / ".mret").pool_factor == 2
    assert json.loads((root / ".mret" / "config.json").read_text())["pool_factor"] == 2
    with Retriever.open(root / ".mret") as retriever:
        pooled_tokens = retriever.vectors.stats()["tokens"]
        assert retriever.model.pool_factor == 2 and retriever.status()["pool_factor"] == 2
        assert retriever.search("MaxSim token vectors", k=1)[0].path == "doc0.txt"

    (root / "more.txt").write_text(INFO["documents"][4] + " and more words to pool here\n")
    assert mret("index", root).exit_code == 0  # a later run without the option: the index's own factor
    with Retriever.open(root / ".mret") as retriever:
        assert retriever.model.pool_factor == 2 and retriever.vectors.stats()["tokens"] > pooled_tokens

    unpooled = tmp_path / "unpooled"
    assert mret("index", root, "--index-dir", unpooled, "--model", PYLATE_MODEL, "--kind", "colbert",
                "--max-length", "64").exit_code == 0
    with Retriever.open(unpooled) as retriever:
        assert retriever.config.pool_factor == 1 and retriever.vectors.stats()["tokens"] > 1.6 * pooled_tokens

    assert_user_error(mret("index", root, "--pool-factor", "3"), "was built with pool factor 2")
    assert_user_error(mret("index", tmp_path / "tree", "--index-dir", tmp_path / "d", "--model", PYLATE_MODEL,
                           "--pool-factor", "2"), "needs kind colbert")
    assert_user_error(mret("index", root, "--index-dir", tmp_path / "z", "--kind", "colbert", "--pool-factor", "0"),
                      "pool factor must be an integer of at least 1")
    assert not (tmp_path / "d").exists() and not (tmp_path / "z").exists()


def test_an_index_configuration_without_a_pool_factor_reads_as_one(tmp_path):
    """Indexes made before pooling existed have no key; a damaged value is one clear error."""
    from retrieval.codebase.config import IndexConfig, RetrieverError

    folder = tmp_path / "idx"
    folder.mkdir()
    raw = {"format": 1, "root": str(tmp_path), "model": "m", "kind": "colbert", "max_length": 64,
           "max_length_setting": 64, "dim": 128}
    (folder / "config.json").write_text(json.dumps(raw))
    assert IndexConfig.read(folder).pool_factor == 1
    (folder / "config.json").write_text(json.dumps(raw | {"pool_factor": 0}))
    with pytest.raises(RetrieverError, match="pool factor"):
        IndexConfig.read(folder)
    assert issubclass(RetrieverError, ModernRetrievalError)


def test_mret_eval_takes_a_pool_factor(model, tmp_path):
    data = tiny_beir(tmp_path / "data")
    common = ["eval", "folder", "--dataset", data, "--model", PYLATE_MODEL, "--cache-dir", tmp_path / "cache"]
    result = mret(*common, "--kind", "colbert", "--pool-factor", "3", "--output", tmp_path / "out")
    assert result.exit_code == 0, (result.output, result.exception)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["model"]["pool_factor"] == 3 and metrics["settings"]["pool_factor"] == 3
    assert_user_error(mret(*common, "--pool-factor", "2", "--output", tmp_path / "o2"), "needs --kind colbert")
    assert_user_error(mret(*common, "--kind", "colbert", "--pool-factor", "0", "--output", tmp_path / "o3"),
                      "pool factor must be an integer of at least 1")
