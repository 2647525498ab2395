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
