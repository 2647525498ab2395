"""A sharded index built from the parts an encoding left, with no process holding the collection's vectors.

``mret eval --ray`` on MS MARCO with a ColBERT model has ~0.7 B token vectors (~360 GB in float32): they cannot go
through the driver's memory, nor through one task's. So each shard's Ray task reads its own documents' parts from
the parts folder (``encode_parts`` wrote them), one part at a time, and adds them to its index as a stream
(``indexes.sharded.build_shard_stream``); the driver reads only the codec's sample (PLAID) and each part's small
``lengths`` member. The parts folder must be one every worker sees, as the index folder must be (this machine for a
local cluster, a shared filesystem on a real one).

Which documents go to which shard: the chunks of the plan (``retrieval.encoding.chunk_plan``: longest first) are
dealt out in turn, chunk c to shard c mod n_shards, so every part is read by one task and the shards get texts of
every length (their token counts stay close). A collection of fewer chunks than shards is dealt document by
document instead (each task then reads every part: a small collection). A sharded index does not depend on which
shard holds a document: search merges the shards' hits by score.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexes.sharded import (
    build_shard_stream,
    codec_settings,
    read_manifest,
    shard_name,
    start_build,
    train_shared_codec,
    write_manifest,
)
from indexes.state import Batch
from retrieval.encoding import CHUNK_TEXTS, chunk_plan, part_name, read_part, saved_row_lengths

from .cluster import connect, require_ray, user_errors
from .encode import MissingPartError
from .shards import check_shards

CODEC_SAMPLE_FACTOR = 2  # the codec is trained on about this many times its sample_tokens, read from random parts


@dataclass(frozen=True)
class ShardParts:
    """One shard's documents in a parts folder: (part number, rows of that part, their ids) for each part it
    reads. Small and picklable: a Ray task reads the vectors itself."""

    parts: str
    pieces: tuple[tuple[int, tuple[int, ...], tuple[str, ...]], ...]
    dense: bool

    def ids(self) -> list[str]:
        return [doc_id for _, _, ids in self.pieces for doc_id in ids]

    def batches(self) -> Iterator[Batch]:
        """A batch per part read (its rows of this shard), one part in memory at a time."""
        for number, rows, ids in self.pieces:
            part = Path(self.parts) / part_name(number, False)
            saved = read_part(part, None)
            if saved is None:
                raise MissingPartError(f"{part} is missing or unreadable: run the encoding again")
            vectors = [saved[0][row] for row in rows]
            yield Batch(list(ids), np.stack(vectors) if self.dense else vectors)


def shard_parts(parts: Path, ids: Sequence[str], lengths: Sequence[int], n_shards: int, dense: bool,
                chunk_texts: int = CHUNK_TEXTS) -> list[ShardParts]:
    """What each of ``n_shards`` shards reads (see the module docstring). ``ids`` and ``lengths`` (the texts'
    lengths in characters) are in input order, as the texts were encoded."""
    chunks = chunk_plan(lengths, chunk_texts)
    check_shards(n_shards, len(ids))
    pieces: list[list[tuple[int, tuple[int, ...], tuple[str, ...]]]] = [[] for _ in range(n_shards)]
    rank = 0
    for number, chunk in enumerate(chunks):
        if len(chunks) >= n_shards:
            pieces[number % n_shards].append((number, tuple(range(len(chunk))), tuple(ids[i] for i in chunk)))
        else:
            for shard in range(n_shards):
                rows = tuple(row for row in range(len(chunk)) if (rank + row) % n_shards == shard)
                if rows:
                    pieces[shard].append((number, rows, tuple(ids[chunk[row]] for row in rows)))
        rank += len(chunk)
    return [ShardParts(str(parts), tuple(p), dense) for p in pieces]


def build_sharded_from_parts(path: str | Path, backend: str, parts: Path, ids: Sequence[str],
                             lengths: Sequence[int], n_shards: int, *, chunk_texts: int = CHUNK_TEXTS,
                             cpus_per_task: float = 1, address: str | None = "local",
                             **settings: Any) -> dict[str, Any]:
    """Build the sharded index of the documents ``encode_parts`` encoded into ``parts`` (``ids`` and the texts'
    ``lengths``, in input order, give its plan) with one Ray task per shard, in parallel; returns the manifest.
    For PLAID the shared codec is trained here, on the driver, from random parts (about ``CODEC_SAMPLE_FACTOR``
    times its ``sample_tokens``), sized for every token. A rerun keeps the shards already complete; an earlier
    manifest is removed first (``start_build``) and the new one written once every shard is."""
    ray = require_ray()
    connect(address)
    path = Path(path)
    shards = shard_parts(parts, ids, lengths, n_shards, backend == "faiss", chunk_texts)
    codec, codec_tokens = None, 0
    if backend == "plaid":
        codec, codec_tokens = _shared_codec(parts, len(chunk_plan(lengths, chunk_texts)), settings)
    start_build(path, backend, [shard.ids() for shard in shards], codec)
    task = ray.remote(num_cpus=cpus_per_task, max_retries=3)(_build_shard)
    with user_errors():
        sizes = ray.get([task.remote(str(path / shard_name(i)), backend, shard, codec, codec_tokens, **settings)
                         for i, shard in enumerate(shards)])
    write_manifest(path, backend, sizes)
    return read_manifest(path)


def _build_shard(folder: str, backend: str, shard: ShardParts, codec: Any, codec_tokens: int,
                 **settings: Any) -> int:
    return build_shard_stream(folder, backend, shard.ids(), shard.batches(), codec, codec_tokens, **settings)


def _shared_codec(parts: Path, n_chunks: int, settings: dict[str, Any]) -> tuple[Any, int]:
    """The PLAID codec of every shard and the tokens it is sized for: every part's token counts are read (a small
    member each), then the token vectors of parts drawn at random until the sample is large enough."""
    counts = [int(saved_row_lengths(parts / part_name(number, False)).sum()) for number in range(n_chunks)]
    wanted = CODEC_SAMPLE_FACTOR * codec_settings(settings).get("sample_tokens", 1 << 19)
    sample, tokens = [], 0
    for number in np.random.default_rng(settings.get("seed", 0)).permutation(n_chunks):
        saved = read_part(parts / part_name(int(number), False), None)
        if saved is None:
            raise MissingPartError(f"{parts / part_name(int(number), False)} is missing: run the encoding again")
        sample += saved[0]
        tokens += counts[number]
        if tokens >= wanted:
            break
    codec = train_shared_codec(sample, sum(counts), **codec_settings(settings))
    return replace(codec), sum(counts)  # a fresh object: no cache a used codec holds (faiss objects) travels
