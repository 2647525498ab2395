"""One index object read from 8 threads while commits land: every read sees one whole committed generation.

The readers search (with and without a SQL filter), ask ``len``, ``stats()``, ``documents()`` and the store's file
queries, all on one shared index object. Meanwhile a writer commits batches of new documents that can never enter the
readers' top-k (their vectors point away from every query, and their source fails the filter), either through another
object on the same folder or through the shared object itself from the main thread. So every search must return
exactly what it returned before any write, and every other answer must be that of one of the generations committed.
Then, one mechanism at a time: a transaction belongs to the thread that opened it; a search on an older snapshot
still reads files a writer has collected meanwhile; a SQL filter is read from the same generation as the vectors.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from indexes import Document, FaissIndex, IndexBusyError, PlaidIndex

DIM, READERS, ROUNDS, COMMITS, K = 32, 8, 12, 6, 5
BASE_DOCS, NEW_PER_COMMIT = 120, 6
CLASSES = {"faiss": FaissIndex, "plaid": PlaidIndex}
BASE_FILTER = ("source LIKE ?", ["base/%"])


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def vectors(kind: str, rng: np.random.Generator, n: int, sign: float, topics: np.ndarray) -> list:
    """Documents near ``sign * topics``: base documents point along the topics, new ones against all of them."""
    if kind == "faiss":
        return list(unit(sign * topics[rng.integers(0, len(topics), n)] + 0.05 * rng.standard_normal((n, DIM))))
    out = []
    for _ in range(n):
        length = int(rng.integers(4, 16))
        centers = sign * topics[rng.integers(0, len(topics), length)]
        out.append(unit(centers + 0.05 * rng.standard_normal((length, DIM))))
    return out


def batch(kind: str, rng, prefix: str, n: int, sign: float, topics: np.ndarray, files: int):
    """ids, embeddings and documents of ``n`` documents spread over ``files`` sources named ``prefix``/f<i>.py."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    docs = [Document(doc_id, source=f"{prefix}/f{i % files}.py", content_hash=f"h{i % files}",
                     metadata={"chunk": i // files, "tokens": 3}) for i, doc_id in enumerate(ids)]
    embeddings = vectors(kind, rng, n, sign, topics)
    return ids, (np.stack(embeddings) if kind == "faiss" else embeddings), docs


def search(index, kind: str, query, filtered: bool):
    query = query[None] if kind == "faiss" else [query]
    return index.search(query, k=K, filter=BASE_FILTER if filtered else None)[0]


def file_view(index) -> frozenset:
    return frozenset((source, record.doc_ids, record.content_hash) for source, record in index.store.files().items())


@pytest.mark.parametrize("writer_kind", ["another object", "same object"])
@pytest.mark.parametrize("kind", ["faiss", "plaid"])
def test_readers_see_whole_generations_while_a_writer_commits(tmp_path: Path, kind: str, writer_kind: str):
    rng = np.random.default_rng(11)
    anchor = unit(rng.standard_normal(DIM))
    topics = unit(anchor + 0.5 * unit(rng.standard_normal((8, DIM))))  # all in one half-space around the anchor
    index = CLASSES[kind].create(tmp_path / "ix", dim=DIM, **({"kind": "flat"} if kind == "faiss" else {}))
    ids, embeddings, docs = batch(kind, rng, "base", BASE_DOCS, 1.0, topics, files=40)
    index.add(ids, embeddings, docs)
    queries = [unit(e[:3] + 0.02 * rng.standard_normal(e[:3].shape)) if kind == "plaid" else
               unit(e + 0.02 * rng.standard_normal(DIM)) for e in embeddings[:24]]
    expected = {(q, f): search(index, kind, queries[q], f) for q in range(len(queries)) for f in (False, True)}
    generations = {index.generation: (len(index), file_view(index))}  # what each committed generation holds
    writes = [batch(kind, rng, f"new{step}", NEW_PER_COMMIT, -1.0, topics, files=2) for step in range(COMMITS)]

    start, done = threading.Barrier(READERS + 1), threading.Event()
    errors: list[BaseException] = []
    mismatches: list[tuple] = []
    seen: list[list[tuple]] = [[] for _ in range(READERS)]  # per reader: (generation, documents, files) observed

    def read(reader: int) -> None:
        try:
            start.wait()
            round_ = 0
            while round_ < ROUNDS or not done.is_set():
                q, filtered = (reader + round_) % len(queries), bool((reader + round_) % 2)
                got = search(index, kind, queries[q], filtered)
                if got != expected[q, filtered]:
                    mismatches.append((q, filtered, got, expected[q, filtered]))
                stats = index.stats()
                seen[reader].append((stats["generation"], stats["documents"], file_view(index)))
                found = index.documents([doc_id for doc_id, _ in got])
                if any(d is None or not d.source.startswith("base/") for d in found):
                    mismatches.append(("documents", got, found))
                len(index)
                round_ += 1
        except BaseException as error:  # reported by the main thread, with the reader's own traceback
            errors.append(error)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    for thread in threads:
        thread.start()
    writer = index if writer_kind == "same object" else CLASSES[kind].open(tmp_path / "ix")
    start.wait()
    try:
        for new_ids, new_embeddings, new_docs in writes:
            half = len(new_ids) // 2
            with writer.transaction():  # two segments, one commit
                writer.add(new_ids[:half], new_embeddings[:half], new_docs[:half])
                writer.add(new_ids[half:], new_embeddings[half:], new_docs[half:])
            generations[writer.generation] = (len(writer), file_view(writer))
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert not mismatches, mismatches[:3]
    assert len(generations) == COMMITS + 1  # one generation per commit (no merge in between)
    for observed in seen:
        assert len(observed) >= ROUNDS
        assert [g for g, _, _ in observed] == sorted(g for g, _, _ in observed)  # never back to an older one
        for generation, documents, _ in observed:
            assert generation in generations and documents == generations[generation][0]
        valid_files = {files for _, files in generations.values()}
        assert all(files in valid_files for _, _, files in observed)
    assert len(index) == BASE_DOCS + COMMITS * NEW_PER_COMMIT and index.generation == max(generations)  # seen
    # the premise: the new documents never enter the top-k, so the final serial search is the first one
    final = CLASSES[kind].open(tmp_path / "ix")
    assert final.generation == max(generations) and len(final) == BASE_DOCS + COMMITS * NEW_PER_COMMIT
    assert all(search(final, kind, queries[q], f) == expected[q, f] for q, f in expected)


@pytest.mark.parametrize("kind", ["faiss", "plaid"])
def test_a_transaction_belongs_to_its_thread(tmp_path: Path, kind: str):
    """While one thread holds a transaction on an object, another thread's add on the same object does not slip into
    it: it waits for the write lock (here: gives up, IndexBusyError) and commits on its own afterwards; readers on
    the object see neither until each commit."""
    rng = np.random.default_rng(3)
    topics = unit(rng.standard_normal((4, DIM)))
    index = CLASSES[kind].create(tmp_path / "ix", dim=DIM, **({"kind": "flat"} if kind == "faiss" else {}))
    index.add(*batch(kind, rng, "base", 20, 1.0, topics, files=4))
    index.lock_timeout = 0.2
    holding, release = threading.Event(), threading.Event()
    held_ids, held_embeddings, held_docs = batch(kind, rng, "held", 4, 1.0, topics, files=1)
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with index.transaction():
                index.add(held_ids, held_embeddings, held_docs)
                holding.set()
                assert release.wait(60)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(60)
        other_ids, other_embeddings, other_docs = batch(kind, rng, "other", 3, 1.0, topics, files=1)
        with pytest.raises(IndexBusyError):
            index.add(other_ids, other_embeddings, other_docs)
        assert len(index) == 20 and "held-0" not in index and index.generation == 1  # the holder's: not yet
    finally:
        release.set()
        thread.join()
    assert not errors, errors
    assert index.generation == 2 and len(index) == 24 and "other-0" not in index  # the refused add left nothing
    index.add(other_ids, other_embeddings, other_docs)
    assert index.generation == 3 and len(index) == 27


def test_a_search_on_an_older_snapshot_still_reads_collected_files(tmp_path: Path):
    """A PLAID search reads residuals from the segment files of the snapshot it started with; a writer may delete
    those files meanwhile (a compaction retires them, the commit after next collects them). Memory maps keep their
    files; the residuals, read with pread, are read through a descriptor opened with the segment."""
    rng = np.random.default_rng(5)
    topics = unit(rng.standard_normal((6, DIM)))
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM)
    for part in range(3):
        index.add(*batch("plaid", rng, f"p{part}", 30, 1.0, topics, files=3))
    queries = [unit(topics[:2] + 0.1 * rng.standard_normal((2, DIM))) for _ in range(5)]
    old = index._snapshot()
    before = index._search(old, queries, K, None)
    writer = PlaidIndex.open(tmp_path / "ix")
    writer.compact()
    for part in range(2):
        writer.add(*batch("plaid", rng, f"late{part}", 3, 1.0, topics, files=1))
    on_disk = set(p.name for p in (tmp_path / "ix" / "files").iterdir())
    assert not {e.name for s in old.segments.values() for e in s.files.values()} & on_disk  # all collected
    after = index._search(old, queries, K, None)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(after, before))


@pytest.mark.parametrize("kind", ["faiss", "plaid"])
def test_a_filtered_search_reads_its_filter_and_vectors_from_one_generation(tmp_path: Path, kind: str):
    """The SQL filter is read in the same read transaction as the snapshot of vectors: a commit landing between the
    two (made here, deterministically, from inside the filter's query) changes neither. The commit moves a document
    that is near the query from outside the filter to inside it, giving it far vectors: with the filter of the new
    generation over the vectors of the old one it would be found; in either whole generation it is not."""
    rng = np.random.default_rng(8)
    anchor = unit(rng.standard_normal(DIM))
    topics = unit(anchor + 0.5 * unit(rng.standard_normal((4, DIM))))
    index = CLASSES[kind].create(tmp_path / "ix", dim=DIM, **({"kind": "flat"} if kind == "faiss" else {}))
    ids, embeddings, docs = batch(kind, rng, "base", 40, 1.0, topics, files=8)
    near = embeddings[:1]  # the moved document: a copy of base-0, found by a query for base-0 unless filtered out
    far = -near if kind == "faiss" else [-e for e in near]
    index.add(ids + ["moved"], np.concatenate([embeddings, near]) if kind == "faiss" else embeddings + near,
              docs + [Document("moved", source="new/moved.py")])
    query = embeddings[0]
    expected = search(index, kind, query, True)
    assert "moved" not in {d for d, _ in expected} and "moved" in {d for d, _ in search(index, kind, query, False)}

    writer = CLASSES[kind].open(tmp_path / "ix")
    ids_of = index.store.ids

    def commit_then_filter(filter):
        if writer.generation == 1:
            writer.update(["moved"], far, [Document("moved", source="base/moved.py")])
        return ids_of(filter)

    index.store.ids = commit_then_filter
    assert search(index, kind, query, True) == expected and writer.generation == 2
    del index.store.ids
    assert search(index, kind, query, True) == expected and index.generation == 2
