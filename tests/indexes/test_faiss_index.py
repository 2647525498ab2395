"""FaissIndex: exact search against numpy, HNSW / IVF-PQ, incremental changes, filters, persistence, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from indexes import Document, FaissIndex, IndexCorruptError, IndexInputError
from indexes.base import MAX_SEGMENTS


def unit(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ids(start: int, stop: int) -> list[str]:
    return [f"doc{i}" for i in range(start, stop)]


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_flat_equals_exact_inner_product(tmp_path, rng):
    vectors, queries = unit(rng, 500), unit(rng, 20)
    index = FaissIndex.create(tmp_path / "ix", dim=32, kind="flat")
    index.add(ids(0, 300), vectors[:300])
    index.add(ids(300, 500), vectors[300:])  # two segments, merged at search
    scores = queries @ vectors.T
    for q, hits in enumerate(index.search(queries, k=5)):
        expected = np.argsort(-scores[q])[:5]
        assert [h[0] for h in hits] == [f"doc{i}" for i in expected]
        np.testing.assert_allclose([h[1] for h in hits], scores[q, expected], atol=1e-5)


def test_hnsw_and_ivfpq_recall(tmp_path, rng):
    vectors, queries = unit(rng, 12_000), unit(rng, 50)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recalls = {}
    for kind in ("hnsw", "ivfpq"):
        index = FaissIndex.create(tmp_path / kind, dim=32, kind=kind)
        index.add(ids(0, 12_000), vectors)
        found = index.search(queries, k=10)
        recalls[kind] = np.mean([len({h[0] for h in hits} & {f"doc{i}" for i in row}) / 10
                                 for hits, row in zip(found, exact)])
    assert recalls["hnsw"] >= 0.98
    assert recalls["ivfpq"] >= 0.3  # 8 bytes per 32-d vector on random data: coarse, but far above chance
    index.close()
    trained = next((tmp_path / "ivfpq" / "files").glob("*trained*"))
    trained.write_bytes(b"\0" * trained.stat().st_size)  # damaged, its size unchanged
    with pytest.raises(IndexCorruptError, match="not a readable faiss index"):  # not faiss's RuntimeError
        FaissIndex.open(tmp_path / "ivfpq")


def test_auto_kind_is_resolved_and_kept(tmp_path, rng):
    index = FaissIndex.create(tmp_path / "ix", dim=32)
    index.add(ids(0, 10), unit(rng, 10))
    assert FaissIndex.open(tmp_path / "ix").settings["index"] == "flat"


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_remove_update_reopen_and_compact(tmp_path, rng, kind):
    vectors = unit(rng, 200)
    index = FaissIndex.create(tmp_path / "ix", dim=32, kind=kind)
    index.add(ids(0, 200), vectors)
    index.remove(["doc5", "doc6"])
    assert "doc5" not in index and len(index) == 198
    assert all(h[0] not in ("doc5", "doc6") for h in index.search(vectors[5], k=200)[0])
    replacement = unit(rng, 1)
    index.update(["doc7"], replacement)
    index = FaissIndex.open(tmp_path / "ix")
    assert len(index) == 198 and "doc5" not in index
    assert index.search(replacement, k=1)[0][0][0] == "doc7"
    assert all(h[0] != "doc5" for h in index.search(vectors[5], k=200)[0])
    index.add(["new"], vectors[5:6])  # add after reopen
    assert index.search(vectors[5], k=1)[0][0][0] == "new"
    before = index.search(vectors[:10], k=5)
    index.compact()
    assert index.stats()["segments"] == 1 and index.stats()["removed_not_compacted"] == 0
    after = FaissIndex.open(tmp_path / "ix").search(vectors[:10], k=5)
    assert [[h[0] for h in hits] for hits in after] == [[h[0] for h in hits] for hits in before]


def test_filters_and_documents(tmp_path, rng):
    vectors = unit(rng, 100)
    documents = [Document(f"doc{i}", source=f"{'src' if i % 2 else 'docs'}/f{i}.py", start_line=1, end_line=9,
                          metadata={"lang": "python" if i % 3 else "rust"}, text=f"text {i}") for i in range(100)]
    index = FaissIndex.create(tmp_path / "ix", dim=32, kind="flat")
    index.add(ids(0, 100), vectors, documents)
    hits = index.search(vectors, k=100, filter="source LIKE 'src/%'")
    assert all(int(h[0][3:]) % 2 == 1 for row in hits for h in row) and len(hits[0]) == 50
    hits = index.search(vectors[:1], k=100, filter=("json_extract(metadata, '$.lang') = ?", ["rust"]))[0]
    assert {h[0] for h in hits} == {f"doc{i}" for i in range(0, 100, 3)}
    assert [h[0] for h in index.search(vectors[:1], k=10, filter={"doc4", "doc9"})[0]] in (["doc4", "doc9"], ["doc9", "doc4"])
    # a tuple of two ids is ids, not SQL and its parameters (those are never a bare string)
    assert {h[0] for h in index.search(vectors[:1], k=10, filter=("doc4", "doc9"))[0]} == {"doc4", "doc9"}
    assert index.documents(["doc4"])[0].metadata == {"lang": "python"} and index.documents(["x"]) == [None]
    with pytest.raises(IndexInputError, match="not a valid SQL predicate"):
        index.search(vectors[:1], k=1, filter="no_such_column = 1")


def test_many_small_adds_are_merged(tmp_path, rng):
    index = FaissIndex.create(tmp_path / "ix", dim=32, kind="flat")
    vectors = unit(rng, 3 * MAX_SEGMENTS)
    for i in range(3 * MAX_SEGMENTS):
        index.add([f"doc{i}"], vectors[i:i + 1])
    assert index.stats()["segments"] <= MAX_SEGMENTS
    assert [index.search(vectors[i], k=1)[0][0][0] for i in range(len(vectors))] == ids(0, len(vectors))
    assert len(list((tmp_path / "ix" / "files").iterdir())) <= 4 * MAX_SEGMENTS  # old segment files collected


def test_a_failed_merge_does_not_fail_the_add_it_follows(tmp_path, rng, monkeypatch, caplog):
    """The automatic merge past MAX_SEGMENTS runs after the add's own commit: its failure (here a full disk) must
    not turn the committed add into an exception (a retry would be refused as duplicate ids). It is logged, the
    documents are searchable, the index opens, and the next write merges."""
    index = FaissIndex.create(tmp_path / "ix", dim=32, kind="flat")
    vectors = unit(rng, MAX_SEGMENTS + 2)
    for i in range(MAX_SEGMENTS):
        index.add([f"doc{i}"], vectors[i:i + 1])

    def disk_full(self, pending, prefix, live):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FaissIndex, "_write_merged", disk_full)
    with caplog.at_level(logging.WARNING, logger="mret.indexes"):
        index.add([f"doc{MAX_SEGMENTS}"], vectors[MAX_SEGMENTS:MAX_SEGMENTS + 1])  # one segment too many
    assert "committed" in caplog.text and "No space left" in caplog.text
    assert index.stats()["segments"] == MAX_SEGMENTS + 1  # the merge is left for the next write
    reopened = FaissIndex.open(tmp_path / "ix")
    assert len(reopened) == MAX_SEGMENTS + 1
    assert reopened.search(vectors[MAX_SEGMENTS], k=1)[0][0][0] == f"doc{MAX_SEGMENTS}"
    monkeypatch.undo()
    index.add([f"doc{MAX_SEGMENTS + 1}"], vectors[MAX_SEGMENTS + 1:])  # the next write merges
    assert index.stats()["segments"] <= MAX_SEGMENTS
    assert [index.search(v, k=1)[0][0][0] for v in vectors] == ids(0, len(vectors))
    index.verify()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_huge_k_returns_every_document_without_allocating_k_results(tmp_path, rng, kind):
    """faiss allocates queries x k results per segment: k is clamped to the segment's vectors first, so a k far
    beyond the index returns every (live, allowed) document, as k = the index's size does."""
    index = FaissIndex.create(tmp_path / "ix", dim=32, kind=kind)
    vectors = unit(rng, 50)
    index.add(ids(0, 30), vectors[:30])
    index.add(ids(30, 50), vectors[30:])  # two segments
    index.remove(["doc3"])
    everything = index.search(vectors[:2], k=49)
    assert sorted(doc for doc, _ in everything[0]) == sorted(set(ids(0, 50)) - {"doc3"})
    for k in (10**12, 2**62):
        assert index.search(vectors[:2], k=k) == everything
        assert {doc for doc, _ in index.search(vectors[0], k=k, filter={"doc1", "doc40"})[0]} == {"doc1", "doc40"}


def test_transaction_is_one_commit(tmp_path, rng):
    index = FaissIndex.create(tmp_path / "ix", dim=32, kind="flat")
    with index.transaction():
        index.add(["a"], unit(rng, 1))
        index.add(["b"], unit(rng, 1))
        index.remove(["a"])
    assert index.generation == 1 and len(index) == 1 and "b" in index
    with pytest.raises(IndexInputError), index.transaction():
        index.add(["c"], unit(rng, 1))
        index.add(["c"], unit(rng, 1))  # duplicate: the whole transaction is dropped
    assert "c" not in FaissIndex.open(tmp_path / "ix") and index.generation == 1


@pytest.mark.parametrize("cls", ["faiss", "plaid"])
def test_a_create_killed_before_its_transaction_is_finished_by_the_next(tmp_path, rng, cls):
    """create() commits the document store's schema, then the index's tables and meta in one transaction: a kill
    between the two left a folder that neither open() nor create() took; now the next create() finishes it."""
    from indexes import DocumentStore, PlaidIndex

    index_cls = FaissIndex if cls == "faiss" else PlaidIndex
    folder = tmp_path / "ix"
    folder.mkdir()
    DocumentStore(folder / "store.sqlite").close()  # what the kill left
    index = index_cls.create(folder, dim=32) if cls == "faiss" else index_cls.create(folder, dim=32, nbits=2)
    vectors = unit(rng, 300)
    if cls == "faiss":
        index.add(ids(0, 3), vectors[:3])
        assert index.search(vectors[1], k=1)[0][0][0] == "doc1"
    else:
        index.add(["a", "b"], [vectors[:150], vectors[150:]])
        assert index.search([vectors[150:160]], k=1)[0][0][0] == "b"
    index.close()
    with pytest.raises(IndexInputError, match="already holds an index"):
        index_cls.create(folder, dim=32)


def test_an_index_write_inside_the_stores_own_transaction_is_refused(tmp_path, rng):
    """The index publishes a commit's snapshot when its SQLite transaction ends; inside the store's own transaction
    that would be before the outer one commits or rolls back (a rolled-back add was then served as real)."""
    index = FaissIndex.create(tmp_path / "ix", dim=32, kind="flat")
    with pytest.raises(IndexInputError, match="index.transaction"):
        with index.store.transaction():
            index.add(["ghost"], unit(rng, 1))
    index.add(["real"], unit(rng, 1))
    assert "real" in index and "ghost" not in index and len(FaissIndex.open(tmp_path / "ix")) == 1


def test_bad_input_is_a_clear_error(tmp_path, rng):
    index = FaissIndex.create(tmp_path / "ix", dim=32, kind="flat")
    index.add(["a"], unit(rng, 1))
    cases = [
        (lambda: index.add(["b"], unit(rng, 1, dim=16)), r"shape \(n, 32\)"),
        (lambda: index.add(["b", "c"], unit(rng, 1)), "2 ids but 1"),
        (lambda: index.add(["b"], np.full((1, 32), np.nan)), "NaN"),
        (lambda: index.add(["a"], unit(rng, 1)), "already in the index"),
        (lambda: index.add(["b", "b"], unit(rng, 2)), "duplicate"),
        (lambda: index.add([""], unit(rng, 1)), "non-empty strings"),
        (lambda: index.add("b", unit(rng, 1)), "not one string"),
        (lambda: index.remove(["zzz"]), "not in the index"),
        (lambda: index.search(unit(rng, 1), k=0), "positive integer"),
        (lambda: index.search(np.ones((1, 8)), k=1), r"shape \(n, 32\)"),
        (lambda: index.search([[1.0, 2.0], [3.0]], k=1), "numeric"),
        (lambda: index.search(unit(rng, 1), k=1, bogus=1), "unknown search option"),
        (lambda: FaissIndex.create(tmp_path / "ix", dim=32), "already holds an index"),
        (lambda: FaissIndex.create(tmp_path / "other", dim=32, kind="annoy"), "kind must be one of"),
        (lambda: FaissIndex.create(tmp_path / "pq", dim=32, kind="ivfpq").add(["x"], unit(rng, 1)), "at least"),
    ]
    for call, message in cases:
        with pytest.raises(IndexInputError, match=message):
            call()
    assert len(FaissIndex.open(tmp_path / "ix")) == 1
    generation = index.generation
    index.add([], np.zeros((0, 32), np.float32))  # nothing to add: no commit
    assert index.generation == generation
