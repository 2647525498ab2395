"""A BEIR dataset through the whole distributed path: encoded on Ray (resumable parts), a sharded index built by
Ray tasks, searched by one actor per shard. What ``mret eval ... --ray`` runs; the caller scores the run with the
harness (``eval.metrics.evaluate``), as the single-node ``eval.runner`` does."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.datasets.beir import BeirDataset
from modernretrieval.errors import SettingsError

from .cluster import connect
from .encode import CHUNK_TEXTS, EncodeReport, HeadSpec, check_load, encode_parts, read_parts
from .from_parts import build_sharded_from_parts
from .shards import RayShardedIndex, check_shards

QUERY_BATCH = 32
INDEXES = {"dense": ("flat", "hnsw"), "colbert": ("plaid",)}


@dataclass
class RayRun:
    """The run (query id -> {doc id: score}, the top ``depth + 1`` of each query: one to drop if it is the query's
    own id) and what made it."""

    run: dict[str, dict[str, float]]
    encoding: EncodeReport
    shards: int
    cluster: str
    timings: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return (f"{self.cluster}; {self.encoding.describe()}; {self.shards} shard(s) searched by "
                f"{self.shards} actor(s)")


def beir_run_on_ray(dataset: BeirDataset, spec: HeadSpec, folder: Path, shards: int = 2, depth: int = 100,
                    index: str = "flat", nbits: int = 2, workers: int | None = None,
                    gpus_per_worker: float | None = None, address: str | None = "local",
                    progress: bool | None = None) -> RayRun:
    """Encode ``dataset`` with ``spec`` on Ray into ``folder``/parts (a rerun resumes), build ``shards`` shards in
    ``folder``/index (FAISS ``index`` for dense: "flat" is exact search; PLAID with one shared codec for colbert),
    and return the top ``depth + 1`` documents of every query (one more than asked, as ``eval.runner`` searches:
    the caller keeps ``depth`` of them once a query's own id is dropped, ``eval.metrics.without_own_ids``).
    Everything is kept in a subfolder of ``folder`` named after the model, its settings and the texts
    (``run_key``), so a rerun reuses it and another model never does. Mistakes in the settings (the index, the
    number of shards, the model) fail before the cluster is joined."""
    if index not in INDEXES.get(spec.kind, ()):
        raise SettingsError(f"--ray supports --index {' or '.join(INDEXES.get(spec.kind, ()))} for --kind "
                            f"{spec.kind}, not {index}")
    check_shards(shards, len(dataset.corpus))
    check_load(spec, address)
    cluster = connect(address)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)
    doc_texts, query_texts = dataset.document_texts(doc_ids), [dataset.queries[q] for q in query_ids]
    folder = Path(folder) / run_key(dataset, spec, doc_ids, doc_texts, query_ids, query_texts)
    parts = folder / "parts"
    report = encode_parts(spec, parts, doc_texts, query_texts, workers=workers, gpus_per_worker=gpus_per_worker,
                          progress=progress, address=address)
    queries = read_parts(parts, query_texts, True, CHUNK_TEXTS).rows
    timings["encode_s"] = time.perf_counter() - started

    begun = time.perf_counter()  # the documents' vectors go from the parts to the shard tasks, not through here
    location = folder / (f"index-{index}-{shards}" + (f"-{nbits}bit" if spec.kind == "colbert" else ""))
    lengths = [len(text) for text in doc_texts]
    if spec.kind == "dense":
        manifest = build_sharded_from_parts(location, "faiss", parts, doc_ids, lengths, shards, kind=index)
    else:
        manifest = build_sharded_from_parts(location, "plaid", parts, doc_ids, lengths, shards, nbits=nbits)
    timings["index_s"] = time.perf_counter() - begun

    begun = time.perf_counter()
    run: dict[str, dict[str, float]] = {}
    with RayShardedIndex(location) as searcher:
        for start in range(0, len(query_ids), QUERY_BATCH):
            batch = queries[start: start + QUERY_BATCH]
            hits = searcher.search(np.stack(batch) if spec.kind == "dense" else batch, k=depth + 1)
            run.update({q: dict(h) for q, h in zip(query_ids[start: start + QUERY_BATCH], hits)})
    timings["search_s"] = time.perf_counter() - begun
    timings = {name: round(seconds, 2) for name, seconds in timings.items()}
    return RayRun(run, report, shards, cluster.describe(), timings, manifest)


def run_key(dataset: BeirDataset, spec: HeadSpec, doc_ids: list[str], doc_texts: list[str], query_ids: list[str],
            query_texts: list[str]) -> str:
    """``{dataset}-{kind}-{digest}``: the digest of the head's spec, the ids and the texts in order."""
    h = hashlib.sha256(json.dumps([asdict(spec), doc_ids, query_ids]).encode())
    for text in doc_texts + query_texts:
        data = text.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little") + data)
    return f"{dataset.name or (dataset.folder.name if dataset.folder else 'dataset')}-{spec.kind}-{h.hexdigest()[:16]}"
