"""Encoding a corpus the driver never holds: its texts stay in Ray's object store, in blocks, from reading to encoding.

What ``mret embed --ray`` runs on its files (``retrieval.distributed.files``), for corpora larger than the driver's
memory (MS MARCO's 8.8M passages are ~3 GB of text). The steps:

1. The corpus is a list of blocks in the object store (pyarrow tables with a ``text`` column, in input order) and
   the texts' lengths in characters, which the driver gathers (8 bytes a text).
2. The driver makes the pipeline's plan from the lengths alone (``retrieval.encoding.chunk_plan``: longest first,
   ``chunk_texts`` at a time, the chunks ``encode_texts`` makes) and gives each text its ``rank`` in that plan.
3. A Ray task per block adds the ranks of its rows; Ray Data sorts the rows by rank with a boundary at each chunk
   (or every few chunks, for corpora of more than ``MAX_BLOCKS`` chunks), so each sorted block holds whole chunks, in
   plan order. The sort is materialized before the actors start: a shuffle's tasks and an actor pool that holds
   every CPU would wait on each other on a small cluster.
4. The ``ChunkEncoder`` actors (``BlockEncoder``) encode each chunk of a block with ``encode_texts``, exactly as
   ``encode_parts`` does, and return it as the part the pipeline saves; a chunk whose part is already saved with the
   same texts (its digest) is not encoded again, so a killed job resumes. The driver writes the parts as they come.
5. The rows are read back in input order from the parts and the plan, a chunk at a time (``iter_plan``) or all at
   once (``read_plan``), each part checked against the digest its actor computed.

So the parts are those of ``encode_parts`` and of the single-node pipeline (``encode_texts`` over the same texts
reads them without encoding), and the vectors are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modernretrieval.files import atomic_write
from retrieval.encoding import CHUNK_TEXTS, Encoded, chunk_plan, part_name, read_part, saved_digest, texts_digest
from retrieval.heads.base import Head

from .cluster import connect, original_map_errors, require_ray
from .encode import MAX_BLOCKS, ChunkEncoder, EncodeReport, MissingPartError, ProgressStep, check_load, pool_size


class BlockEncoder(ChunkEncoder):
    """One Ray actor: encodes each chunk of a rank-sorted block (one output row per chunk: its number, the digest
    of its texts, and the part's bytes, empty when the part was already saved with that digest)."""

    def __init__(self, load: Callable[[], Head], threads: int | None, is_query: bool, chunk_texts: int,
                 saved: dict[int, str]):
        super().__init__(load, threads)
        self.is_query, self.chunk_texts, self.saved = is_query, chunk_texts, saved

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, Any]:
        order = np.argsort(block["rank"], kind="stable")
        ranks, texts = block["rank"][order], block["text"][order]
        numbers, starts = np.unique(ranks // self.chunk_texts, return_index=True)
        digests, parts = [], []
        for number, start, end in zip(numbers, starts, [*starts[1:], len(ranks)]):
            chunk = [str(text) for text in texts[start:end]]
            digest = texts_digest(chunk, self.is_query)
            digests.append(digest)
            parts.append(b"" if self.saved.get(int(number)) == digest else self.encode_chunk(chunk, self.is_query))
        return {"number": numbers, "digest": np.array(digests), "part": np.array(parts, dtype=object)}


def encode_blocks(load: Callable[[], Head], parts: Path, blocks: list, lengths: list[np.ndarray],
                  is_query: bool = False, *, chunk_texts: int = CHUNK_TEXTS, workers: int | None = None,
                  gpus_per_worker: float | None = None, cpus_per_worker: float = 1,
                  progress: bool | Callable[[int], object] | None = None,
                  address: str | None = "local") -> tuple[EncodeReport, dict[int, str]]:
    """Encode the texts of ``blocks`` (object refs of pyarrow tables with a ``text`` column, in input order;
    ``lengths``: their texts' lengths in characters, an array per block) into ``parts`` (see the module docstring).
    Returns what ran and the digest of each chunk's texts, for ``read_plan``. The other arguments are
    ``encode_parts``'s."""
    ray = require_ray()
    check_load(load, address)
    cluster = connect(address)
    started = time.perf_counter()
    workers, gpus_per_worker = pool_size(cluster, workers, gpus_per_worker, cpus_per_worker)
    chunks = chunk_plan(np.concatenate(lengths) if lengths else [], chunk_texts)
    texts = sum(map(len, lengths))
    report = EncodeReport(len(chunks), 0, 0, texts, workers, cpus_per_worker, gpus_per_worker, 0.0)
    digests: dict[int, str] = {}
    if chunks:
        parts.mkdir(parents=True, exist_ok=True)
        saved = {number: digest for number in range(len(chunks))
                 if (digest := saved_digest(parts / part_name(number, is_query))) is not None}
        with original_map_errors(ray):
            sorted_rows = _sorted_by_plan(ray, blocks, [len(block) for block in lengths], chunks, chunk_texts)
        encoder = sorted_rows.map_batches(
            BlockEncoder, fn_constructor_kwargs={"load": load, "threads": max(1, int(cpus_per_worker)),
                                                 "is_query": is_query, "chunk_texts": chunk_texts, "saved": saved},
            batch_size=None, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=min(workers, len(chunks))),
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)
        step = ProgressStep(progress, texts)
        with step as advance, original_map_errors(ray):
            for row in encoder.iter_rows():
                number, data = int(row["number"]), row["part"]
                digests[number] = str(row["digest"])
                if len(data):
                    atomic_write(parts / part_name(number, is_query), lambda f, data=data: f.write(data))
                    report.encoded += 1
                    advance(len(chunks[number]))
                else:
                    report.skipped += 1
                    step.skip(len(chunks[number]))
    report.seconds = time.perf_counter() - started
    return report, digests


def iter_plan(parts: Path, lengths: np.ndarray, digests: dict[int, str], is_query: bool = False,
              chunk_texts: int = CHUNK_TEXTS) -> Iterator[tuple[list[int], list[np.ndarray], float, int]]:
    """Each chunk as (its texts' input positions, their rows, seconds, tokens), in part order, from the parts
    ``encode_blocks`` wrote, each checked against its digest (a part missing or of other texts raises
    MissingPartError): one chunk in memory at a time."""
    for number, chunk in enumerate(chunk_plan(lengths, chunk_texts)):
        part = parts / part_name(number, is_query)
        saved = read_part(part, len(chunk), digests.get(number, "(not encoded)"))
        if saved is None:
            raise MissingPartError(f"{part} is missing or holds other texts: run the encoding again")
        yield chunk, *saved


def read_plan(parts: Path, lengths: np.ndarray, digests: dict[int, str], is_query: bool = False,
              chunk_texts: int = CHUNK_TEXTS) -> Encoded:
    """All the rows in input order (``iter_plan``'s chunks gathered in memory)."""
    rows: list[np.ndarray] = [np.empty(0)] * len(lengths)
    seconds, tokens = 0.0, 0
    for chunk, chunk_rows, chunk_seconds, chunk_tokens in iter_plan(parts, lengths, digests, is_query, chunk_texts):
        for i, row in zip(chunk, chunk_rows):
            rows[i] = row
        seconds, tokens = seconds + chunk_seconds, tokens + chunk_tokens
    return Encoded(rows, seconds, tokens)


def _sorted_by_plan(ray, blocks: list, rows: list[int], chunks: list[list[int]], chunk_texts: int):
    """The rows of ``blocks`` (``rows`` each; ``text`` only) with their ``rank`` in the plan, sorted by rank into
    blocks of whole chunks (one chunk a block up to MAX_BLOCKS chunks), materialized."""
    rank = np.empty(sum(rows), dtype=np.int64)
    rank[np.concatenate(chunks)] = np.arange(len(rank))
    starts = np.cumsum([0, *rows])
    with_rank = ray.remote(_with_rank)
    ranked = [with_rank.remote(block, rank[start:end]) for block, start, end in zip(blocks, starts, starts[1:])]
    step = chunk_texts * -(-len(chunks) // MAX_BLOCKS)
    return ray.data.from_arrow_refs(ranked).sort("rank", boundaries=list(range(step, len(rank), step))).materialize()


def _with_rank(block, rank: np.ndarray):
    import pyarrow as pa

    return pa.table({"text": block.column("text"), "rank": rank})
