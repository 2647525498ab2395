"""Sharded indexes on Ray (retrieval.distributed.shards): shards built by parallel Ray tasks, searched by one actor
per shard; the results are those of one index (FAISS flat), of the same folder searched without Ray, and for PLAID
the recall of one index with the same codec."""

from __future__ import annotations

import numpy as np
import pytest
from support import assert_same_ranking
from test_sharded_index import DIM, dense_data, one_thread, recall_at_10, token_data

from indexes import FaissIndex
from indexes.sharded import ShardedIndex, build_sharded, train_shared_codec
from indexes.store import Document

pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[distributed]"')

from retrieval.distributed import RayShardedIndex, build_sharded_on_ray


def test_faiss_shards_built_and_searched_on_ray_rank_as_one_index(ray_cluster, tmp_path):
    ids, vectors, queries = dense_data()
    documents = [Document(i, source=f"src/{n % 3}.py") for n, i in enumerate(ids)]
    manifest = build_sharded_on_ray(tmp_path / "s", "faiss", ids, vectors, 2, documents, kind="flat")
    assert [s["documents"] for s in manifest["shards"]] == [200, 200]
    with FaissIndex.create(tmp_path / "one", DIM, kind="flat") as one, RayShardedIndex(tmp_path / "s") as sharded:
        one.add(ids, vectors, documents)
        assert len(sharded) == 400
        assert_same_ranking(sharded.search(queries, k=10), one.search(queries, k=10))
        assert_same_ranking(sharded.search(queries, k=10, filter="source = 'src/1.py'"),
                            one.search(queries, k=10, filter="source = 'src/1.py'"))
        with ShardedIndex(tmp_path / "s") as local:  # the same folder opens without Ray
            assert sharded.search(queries, k=10) == local.search(queries, k=10)


def test_plaid_shards_on_ray_share_the_codec_and_keep_one_index_recall(ray_cluster, tmp_path):
    ids, docs, queries = token_data()
    codec = train_shared_codec(docs, nbits=2, n_centroids=64)
    build_sharded_on_ray(tmp_path / "two", "plaid", ids, docs, 2, codec=codec)
    with build_sharded(tmp_path / "one", "plaid", ids, docs, 1, codec=codec) as one, \
            ShardedIndex(tmp_path / "two") as local, RayShardedIndex(tmp_path / "two") as sharded:
        assert all(np.array_equal(s.codec.centroids, codec.centroids) for s in local.shards)
        assert sharded.search(queries, k=10) == local.search(queries, k=10)
        single = recall_at_10(one, docs, queries)
        assert single > 0.5 and abs(recall_at_10(sharded, docs, queries) - single) <= 0.01


class VectorsHead:
    """A head whose "model" is a table: the text "d17 xxx..." encodes to the given vectors of document 17 (so
    that the pipeline writes its parts from known vectors)."""

    def __init__(self, vectors):
        self.vectors = vectors

    def tokenize(self, texts, is_query):
        return [[0] for _ in texts]

    def encode_documents(self, texts, show_progress=None):
        return [self.vectors[int(text.split()[0][1:])] for text in texts]


def encoded_parts(folder, vectors, chunk_texts: int = 16):
    """The parts ``encode_parts`` would write for these documents' vectors (texts of varied lengths: the plan
    reorders them), with the ids and lengths of the plan."""
    from retrieval.encoding import encode_texts

    texts = [f"d{i} " + "x" * (i * 7 % 50) for i in range(len(vectors))]
    encode_texts(VectorsHead(vectors), texts, False, chunk_texts=chunk_texts, parts=folder)
    return [f"d{i}" for i in range(len(vectors))], [len(t) for t in texts]


def test_faiss_shards_built_from_parts_rank_as_one_index(ray_cluster, tmp_path):
    """The shard tasks read the parts themselves (chunks dealt out in turn): every document in one shard, the
    same exact ranking as one index; a rerun keeps the complete shards."""
    from retrieval.distributed.from_parts import build_sharded_from_parts, shard_parts

    ids, vectors, queries = dense_data()
    doc_ids, lengths = encoded_parts(tmp_path / "parts", vectors)
    manifest = build_sharded_from_parts(tmp_path / "s", "faiss", tmp_path / "parts", doc_ids, lengths, 3,
                                        chunk_texts=16, kind="flat")
    assert sum(s["documents"] for s in manifest["shards"]) == 400
    shards = shard_parts(tmp_path / "parts", doc_ids, lengths, 3, True, 16)
    assert sorted(i for s in shards for i in s.ids()) == sorted(ids)  # each document in exactly one shard
    assert [[n for n, _, _ in s.pieces] for s in shards][0] == list(range(0, 25, 3))  # chunks dealt out in turn
    with FaissIndex.create(tmp_path / "one", DIM, kind="flat") as one, ShardedIndex(tmp_path / "s") as sharded:
        one.add(ids, vectors)  # (three search actors would not fit the test cluster's two CPUs: searched here)
        assert_same_ranking(sharded.search(queries, k=10), one.search(queries, k=10))
    before = (tmp_path / "s" / "shard-0001" / "store.sqlite").stat().st_mtime_ns
    build_sharded_from_parts(tmp_path / "s", "faiss", tmp_path / "parts", doc_ids, lengths, 3, chunk_texts=16,
                             kind="flat")
    assert (tmp_path / "s" / "shard-0001" / "store.sqlite").stat().st_mtime_ns == before


def test_plaid_shards_built_from_parts_keep_one_index_recall_and_the_driver_reads_a_sample(ray_cluster, tmp_path,
                                                                                          monkeypatch):
    """PLAID from parts: one codec for all shards, trained on the driver from a sample of parts only (the vectors
    of the rest are read by the shard tasks, never here); recall as one index with that codec. Fewer chunks than
    shards: dealt document by document."""
    from retrieval.distributed import from_parts

    ids, docs, queries = token_data()
    doc_ids, lengths = encoded_parts(tmp_path / "parts", docs)
    read_here = []
    real = from_parts.read_part
    monkeypatch.setattr(from_parts, "read_part", lambda part, *a: read_here.append(part) or real(part, *a))
    from_parts.build_sharded_from_parts(tmp_path / "two", "plaid", tmp_path / "parts", doc_ids, lengths, 2,
                                        chunk_texts=16, nbits=2, n_centroids=64, sample_tokens=400)
    assert 1 <= len(read_here) <= 3 < 13  # ~800 tokens of 13 parts of ~320
    with ShardedIndex(tmp_path / "two") as local, RayShardedIndex(tmp_path / "two") as sharded:
        codec = local.shards[0].codec
        assert np.array_equal(local.shards[1].codec.centroids, codec.centroids)
        with build_sharded(tmp_path / "one", "plaid", ids, docs, 1, codec=codec) as one:
            single = recall_at_10(one, docs, queries)
            assert single > 0.5 and abs(recall_at_10(sharded, docs, queries) - single) <= 0.01
    few = from_parts.shard_parts(tmp_path / "parts", doc_ids[:20], lengths[:20], 3, False, 16)
    assert sorted(i for s in few for i in s.ids()) == sorted(doc_ids[:20]) and all(s.ids() for s in few)
