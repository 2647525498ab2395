"""indexes.sharded on one machine, without Ray: a sharded FAISS flat index ranks exactly as one index (filters
included), PLAID shards sharing one codec keep the recall of one PLAID index with that codec, and a build that
stopped midway is finished by a rerun that keeps the complete shards."""

from __future__ import annotations

import numpy as np
import pytest
from support import assert_same_ranking

from indexes import FaissIndex, IndexInputError, PlaidIndex
from indexes.sharded import (
    MANIFEST,
    ShardedIndex,
    build_sharded,
    merge_hits,
    shard_name,
    split,
    train_shared_codec,
)
from indexes.store import Document

DIM = 32


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def dense_data(n: int = 400, n_queries: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [f"d{i}" for i in range(n)], unit(rng.standard_normal((n, DIM))), unit(rng.standard_normal((n_queries, DIM)))


def token_data(n: int = 200, n_queries: int = 20, seed: int = 0):
    """Documents of 10..30 tokens around three of 64 topics each, queries of 8 tokens near one document's: the
    structure a codec learns, as from real token embeddings."""
    rng = np.random.default_rng(seed)
    topics = unit(rng.standard_normal((64, DIM)))
    docs = []
    for _ in range(n):
        mine, length = topics[rng.choice(64, 3, replace=False)], rng.integers(10, 31)
        docs.append(unit(mine[rng.integers(0, 3, length)] + 0.35 * rng.standard_normal((length, DIM))))
    queries = [unit(docs[i][rng.integers(0, len(docs[i]), 8)] + 0.3 * rng.standard_normal((8, DIM)))
               for i in rng.choice(n, n_queries, replace=False)]
    return [f"d{i}" for i in range(n)], docs, queries


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """faiss (k-means, codebooks) and torch (PLAID's scoring) on one thread: on a busy 2-core machine their thread
    pools spin against each other (10x slower)."""
    import faiss
    import torch

    before = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before[0])
    torch.set_num_threads(before[1])


def test_split_is_contiguous_and_balanced():
    assert split(10, 3) == [range(0, 3), range(3, 6), range(6, 10)]
    assert [len(r) for r in split(7, 7)] == [1] * 7
    with pytest.raises(IndexInputError):
        split(5, 0)
    with pytest.raises(IndexInputError, match="3 shards for 2 documents"):
        split(2, 3)


def test_merge_keeps_the_best_k_of_every_shard():
    a = [[("x", 0.9), ("y", 0.5)]]
    b = [[("z", 0.7), ("w", 0.1)]]
    assert merge_hits([a, b], 3) == [[("x", 0.9), ("z", 0.7), ("y", 0.5)]]


def test_two_faiss_shards_rank_as_one_index(tmp_path):
    ids, vectors, queries = dense_data()
    documents = [Document(i, source=f"src/{'even' if n % 2 == 0 else 'odd'}.py") for n, i in enumerate(ids)]
    with FaissIndex.create(tmp_path / "one", DIM, kind="flat") as one:
        one.add(ids, vectors, documents)
        with build_sharded(tmp_path / "two", "faiss", ids, vectors, 2, documents, kind="flat") as two:
            assert len(two) == len(ids) and [len(s) for s in two.shards] == [200, 200]
            assert_same_ranking(two.search(queries, k=10), one.search(queries, k=10))
            # filters pass through: a SQL predicate, and a collection of ids given as an iterator
            assert_same_ranking(two.search(queries, k=10, filter="source = 'src/odd.py'"),
                                one.search(queries, k=10, filter="source = 'src/odd.py'"))
            chosen = ids[::7]
            assert_same_ranking(two.search(queries, k=5, filter=iter(chosen)), one.search(queries, k=5, filter=chosen))


def recall_at_10(index, docs, queries) -> float:
    """Recall of the exact MaxSim top 10 (every query token against every document token) in the index's top 10."""
    tokens, starts = np.concatenate(docs), np.cumsum([0] + [len(d) for d in docs[:-1]])
    found = []
    for query, hits in zip(queries, index.search(queries, k=10)):
        exact = np.maximum.reduceat(query @ tokens.T, starts, axis=1).sum(axis=0)
        best = {f"d{i}" for i in np.argsort(-exact, kind="stable")[:10]}
        found.append(len(best & {h[0] for h in hits}) / 10)
    return float(np.mean(found))


def test_plaid_shards_share_one_codec_and_keep_one_index_recall(tmp_path):
    ids, docs, queries = token_data()
    codec = train_shared_codec(docs, nbits=2, n_centroids=64)
    with build_sharded(tmp_path / "one", "plaid", ids, docs, 1, codec=codec) as one, \
            build_sharded(tmp_path / "two", "plaid", ids, docs, 2, codec=codec) as two:
        for shard in one.shards + two.shards:
            assert np.array_equal(shard.codec.centroids, codec.centroids)
            assert np.array_equal(shard.codec.codebooks, codec.codebooks)
        single, sharded = recall_at_10(one, docs, queries), recall_at_10(two, docs, queries)
        assert single > 0.5  # a codec that works, so the comparison means something
        assert abs(sharded - single) <= 0.01, (single, sharded)


def test_plaid_trains_one_codec_for_all_shards_when_none_is_given(tmp_path):
    ids, docs, _ = token_data(n=60)
    with build_sharded(tmp_path / "s", "plaid", ids, docs, 3, n_centroids=32) as index:
        first = index.shards[0].codec
        assert all(np.array_equal(s.codec.centroids, first.centroids) for s in index.shards[1:])
        assert index.shards[0].settings["trained_tokens"] == sum(len(d) for d in docs)  # sized for the whole


def test_a_rerun_keeps_complete_shards_and_rebuilds_the_rest(tmp_path):
    ids, vectors, queries = dense_data(n=90)
    path = tmp_path / "s"
    build_sharded(path, "faiss", ids, vectors, 3, kind="flat").close()
    (path / MANIFEST).unlink()  # as if the build had died before its manifest ...
    (path / shard_name(2) / "store.sqlite").unlink()  # ... with its last shard unfinished
    with pytest.raises(IndexInputError, match="not a sharded index"):
        ShardedIndex(path)
    kept = {p.name: p.stat().st_mtime_ns for p in (path / shard_name(0) / "files").iterdir()}
    with build_sharded(path, "faiss", ids, vectors, 3, kind="flat") as index:
        assert {p.name: p.stat().st_mtime_ns for p in (path / shard_name(0) / "files").iterdir()} == kept
        assert len(index) == 90
        with FaissIndex.create(tmp_path / "one", DIM, kind="flat") as one:
            one.add(ids, vectors)
            assert_same_ranking(index.search(queries, k=10), one.search(queries, k=10))
    other = [f"x{i}" for i in range(90)]  # the same number of other documents: no shard is kept
    with build_sharded(path, "faiss", other, vectors, 3, kind="flat") as index:
        assert {h[0][0] for h in index.search(queries, k=1)} <= set(other)


def test_a_codec_of_another_shape_is_refused(tmp_path):
    _, docs, _ = token_data(n=30)
    codec = train_shared_codec(docs, nbits=2, n_centroids=8)
    with pytest.raises(IndexInputError, match="the codec is for dim 32 at 2 bits"):
        PlaidIndex.create(tmp_path / "p", DIM * 2, nbits=2, codec=codec)
    assert not (tmp_path / "p").exists()
