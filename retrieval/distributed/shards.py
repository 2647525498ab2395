"""Sharded indexes on Ray: shards built in parallel by Ray tasks, searched by one long-lived actor per shard.

The index itself is ``indexes.sharded``'s (a folder of ordinary index folders plus a manifest), so what Ray builds
opens on one machine without Ray (``ShardedIndex``) and the other way round. The folder must be one every worker
sees (this machine for a local cluster; a shared filesystem on a real one).

Build: for PLAID the codec is trained once, here on the driver, and the same codec goes to every shard task, so
scores compare across shards. Search: each ``ShardSearcher`` actor opens its shard once (memory-mapped) and keeps it
open; the queries, encoded once by the caller, are put once in the object store and sent to every actor; each shard
returns its top ``k`` and ``merge_hits`` keeps the best ``k`` (exact). Filters go to every shard's store. The actors
hold no CPU by default (``cpus_per_shard=0``): they wait between searches, and actors that each held a CPU for good
would never all start on a cluster of fewer CPUs than shards (the search would wait forever). They are spread over
the nodes. A shard that does not open fails the constructor with the shard's own error (one line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from indexes.base import Hits
from indexes.plaid.codec import ResidualCodec
from indexes.sharded import (
    build_shard,
    codec_settings,
    merge_hits,
    open_shard,
    read_manifest,
    shard_name,
    shareable,
    split,
    start_build,
    take_range,
    train_shared_codec,
    write_manifest,
)
from indexes.store import Document, Filter
from modernretrieval.errors import ModernRetrievalError, SettingsError
from retrieval.encoding import encode_texts
from retrieval.heads.base import Head

from .cluster import check_cpus, connect, require_ray, user_errors


def check_shards(n_shards: int, documents: int) -> None:
    """``n_shards`` shards of ``documents`` documents: at least one, and one document a shard at least
    (SettingsError, before anything is encoded or built)."""
    if not 1 <= n_shards <= documents:
        raise SettingsError(f"--shards {n_shards} for {documents} documents: between 1 and one per document")


def build_sharded_on_ray(path: str | Path, backend: str, ids: Sequence[str], embeddings: Any, n_shards: int,
                         documents: Sequence[Document] | None = None, codec: ResidualCodec | None = None,
                         cpus_per_task: float = 1, address: str | None = "local", **settings: Any) -> dict[str, Any]:
    """Build the sharded index of ``indexes.sharded.build_sharded`` with one Ray task per shard, in parallel;
    returns the manifest. A rerun keeps the shards already complete (``build_shard``); an earlier manifest is
    removed first (``start_build``) and the new one written once every shard is."""
    ray = require_ray()
    connect(address)
    path = Path(path)
    ranges = split(len(ids), n_shards)
    codec_tokens = 0
    if backend == "plaid":
        codec_tokens = sum(len(a) for a in embeddings)
        codec = codec or train_shared_codec(embeddings, codec_tokens, **codec_settings(settings))
        codec = replace(codec)  # a fresh object: none of the caches a used codec holds (faiss objects) travel
    start_build(path, backend, [[ids[j] for j in r] for r in ranges], codec)
    task = ray.remote(num_cpus=cpus_per_task, max_retries=3)(build_shard)
    with user_errors():
        sizes = ray.get([task.remote(path / shard_name(i), backend, [ids[j] for j in r], take_range(embeddings, r),
                                     None if documents is None else [documents[j] for j in r], codec, codec_tokens,
                                     **settings)
                         for i, r in enumerate(ranges)])
    write_manifest(path, backend, sizes)
    return read_manifest(path)


class ShardSearcher:
    """One Ray actor per shard: opens it once (memory-mapped) and answers searches until it is killed. A shard that
    does not open (missing, damaged: a ModernRetrievalError) is raised by each call, as the task's error, which the
    driver shows as one line; raised here, Ray would report only its traceback's text."""

    def __init__(self, path: str, name: str, backend: str):
        self.error: ModernRetrievalError | None = None
        try:
            self.index = open_shard(path, name, backend)
        except ModernRetrievalError as error:
            self.error = error

    def search(self, queries: Any, k: int, filter: Filter, options: dict[str, Any]) -> list[Hits]:
        if self.error is not None:
            raise self.error
        return self.index.search(queries, k, filter, **options)

    def size(self) -> int:
        if self.error is not None:
            raise self.error
        return len(self.index)


class RayShardedIndex:
    """Scatter-gather search over a sharded index: one ``ShardSearcher`` actor per shard, holding
    ``cpus_per_shard`` CPUs (default none: see the module). Every shard is opened before the constructor returns
    (a shard's error is raised here). Use as a context manager (or call ``close``) to end the actors."""

    def __init__(self, path: str | Path, cpus_per_shard: float = 0, address: str | None = "local"):
        self.ray = require_ray()
        cluster = connect(address)
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        check_cpus(len(self.manifest["shards"]), cpus_per_shard, cluster.cpus, "shard searcher")
        actor = self.ray.remote(num_cpus=cpus_per_shard, scheduling_strategy="SPREAD")(ShardSearcher)
        self.actors = [actor.remote(str(self.path), shard["name"], self.manifest["backend"])
                       for shard in self.manifest["shards"]]
        try:
            len(self)  # every shard open, or its error now
        except BaseException:
            self.close()
            raise

    def search(self, queries: Any, k: int = 10, filter: Filter = None, **options: Any) -> list[Hits]:
        """As ``ShardedIndex.search``: for each query up to ``k`` (doc_id, score), best first, over every shard."""
        sent, filter = self.ray.put(queries), shareable(filter)  # sent once, whatever the number of shards
        with user_errors():
            return merge_hits(self.ray.get([a.search.remote(sent, k, filter, options) for a in self.actors]), k)

    def search_texts(self, head: Head, texts: Sequence[str], k: int = 10, filter: Filter = None,
                     **options: Any) -> list[Hits]:
        """Encode ``texts`` once as queries (the one pipeline), then ``search``."""
        rows = encode_texts(head, texts, True).rows
        return self.search(np.stack(rows) if head.kind == "dense" else rows, k, filter, **options)

    def __len__(self) -> int:
        with user_errors():
            return sum(self.ray.get([a.size.remote() for a in self.actors]))

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayShardedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
