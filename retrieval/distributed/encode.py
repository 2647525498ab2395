"""Encoding a collection on a Ray cluster, through the one encoding pipeline, into the parts the single node reads.

The work is cut exactly as ``retrieval.encoding.encode_texts`` cuts it (texts longest first, ``chunk_texts`` at a
time: ``chunk_plan``, the pipeline's own plan), and each chunk is one row of a Ray Dataset. This is the path for texts
the caller holds (a BEIR dataset, the files of a tree); ``retrieval.distributed.blocks`` is the one for corpora the
driver never holds.
``map_batches`` sends the rows to a pool of actors (``ChunkEncoder``), each loading the head once (one GPU per actor
when the cluster has GPUs, CPU actors otherwise) and encoding its chunk with ``encode_texts``: the same model call on
the same batch as on one machine, so the vectors are the same. The actor returns the chunk as the pipeline saves it
(a part: rows, lengths, seconds, tokens and a digest of its texts); the driver writes it, whole or not at all, as
``docs-000007.npz`` / ``queries-000000.npz`` in ``parts``, the folder the single-node pipeline resumes from. So:

- the single-node cache reads the result: ``eval.encode`` (or any ``encode_texts`` call over the same texts with
  ``parts`` and the same ``chunk_texts``) finds every chunk saved and encodes nothing; ``read_parts`` returns the rows
  in input order;
- a rerun skips every chunk already written (a part of other texts is encoded again), so a killed job resumes;
- an actor that dies is restarted by Ray and its chunk retried (``max_restarts``/``max_task_retries``); a part is
  written only from a finished chunk, so the output is complete and identical;
- no shared filesystem is needed: parts travel back through Ray's object store to the driver's disk.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modernretrieval.errors import ModernRetrievalError, SettingsError
from modernretrieval.files import atomic_write
from retrieval.encoding import CHUNK_TEXTS, Encoded, chunk_plan, encode_texts, part_name, saved_digest, texts_digest
from retrieval.heads.base import Head, Kind
from retrieval.heads.loading import load_head, loader_for

from .cluster import connect, original_map_errors, require_ray, user_errors

MAX_BLOCKS = 10_000  # one chunk per block (a finished chunk comes back at once) up to this many


@dataclass(frozen=True)
class HeadSpec:
    """How each actor loads the head: what ``retrieval.heads.loading.load_head`` takes (the device and dtype as
    ``--device``/``--dtype`` take them: "auto" is resolved in the actor, CUDA when it has a GPU). Calling it loads
    the head."""

    model: str
    kind: Kind
    max_length: int | None = None
    token_embeddings: bool = False
    device: str = "auto"
    dtype: str = "float32"
    pool_factor: int = 1  # colbert: documents' token vectors pooled (load_head's pool_factor)

    def __call__(self) -> Head:
        return load_head(self.model, self.kind, self.max_length, self.token_embeddings, device=self.device,
                         dtype=self.dtype, pool_factor=self.pool_factor)

    def check(self, model_files: bool = True) -> None:
        """Fail here, on the driver, with one line, on what every actor would fail on: the kind, the pool factor, the
        spelling of the device and dtype, and (``model_files``) a model that is neither a folder nor a hub id (a path
        that does not exist, a file). Reads no weights and downloads nothing (a hub id is left to the actors)."""
        from encoder import checkpoint
        from retrieval.heads.precision import check
        from retrieval.heads.token_pooling import check_pool_factor

        loader_for(self.kind, self.token_embeddings)
        if check_pool_factor(self.pool_factor) != 1 and self.kind != "colbert":
            raise SettingsError(f"token pooling (pool factor {self.pool_factor}) applies to kind colbert only, "
                                f"not {self.kind}")
        check(self.device, self.dtype)
        path = Path(self.model).expanduser()
        if model_files and not path.is_dir() and (path.exists() or not checkpoint.is_hub_id(self.model)):
            checkpoint.resolve(self.model)  # not a hub id: raises its ModelLoadError, downloads nothing


def check_load(load: Callable[[], Head], address: str | None) -> None:
    """``load.check()`` for a ``HeadSpec`` (any other function is the caller's), before an actor starts. The model
    folder is looked for here unless the driver is a Ray Client (``ray://``): its folders are the cluster's."""
    if isinstance(load, HeadSpec):
        load.check(model_files=not _ray_client(address))


def _ray_client(address: str | None) -> bool:
    import os

    if str(address or "").startswith("ray://") or os.environ.get("RAY_ADDRESS", "").startswith("ray://"):
        return True
    try:
        from ray.util.client import ray as client

        return client.is_connected()
    except ImportError:
        return False


@dataclass
class EncodeReport:
    """What one ``encode_parts`` run did: ``chunks`` in the plan, ``encoded`` by this run, ``skipped`` (already in
    ``parts``), the texts, the actors and their resources, and the wall-clock seconds of the run."""

    chunks: int
    encoded: int
    skipped: int
    texts: int
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    seconds: float

    def describe(self) -> str:
        device = f"{self.gpus_per_worker:g} GPU" if self.gpus_per_worker else f"{self.cpus_per_worker:g} CPU"
        return (f"encoded {self.encoded} of {self.chunks} chunks ({self.skipped} already done, {self.texts} texts) "
                f"on {self.workers} Ray worker(s) of {device} each in {self.seconds:.1f} s")


class ChunkEncoder:
    """One Ray actor: loads the head once, then encodes whole chunks through ``encode_texts``. A user's mistake in
    loading (a ModernRetrievalError: a folder that is no model) is raised by each chunk, as the task's error, which
    the driver shows as one line; raised here, Ray would restart the actor or report only its traceback's text."""

    def __init__(self, load: Callable[[], Head], threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.error: ModernRetrievalError | None = None
        try:
            self.head = load()
        except ModernRetrievalError as error:
            self.error = error

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Ray Data's call: a batch of rows (number, is_query, texts), each a whole chunk."""
        parts = [self.encode_chunk([str(text) for text in texts], bool(is_query))
                 for texts, is_query in zip(batch["texts"], batch["is_query"])]
        return {"number": batch["number"], "is_query": batch["is_query"], "part": np.array(parts, dtype=object)}

    def encode_chunk(self, texts: list[str], is_query: bool) -> bytes:
        """One chunk, encoded and saved as the pipeline saves a part: the file's bytes."""
        if self.error is not None:
            raise self.error
        with tempfile.TemporaryDirectory() as folder:
            encode_texts(self.head, texts, is_query, chunk_texts=len(texts), parts=Path(folder))
            (part,) = Path(folder).glob("*.npz")
            return part.read_bytes()


def plan(texts: Sequence[str], is_query: bool, chunk_texts: int = CHUNK_TEXTS) -> list[list[str]]:
    """The chunks ``encode_texts`` makes of ``texts``, in its order (its part numbers)."""
    return [[texts[i] for i in chunk] for chunk in chunk_plan([len(text) for text in texts], chunk_texts)]


def encode_parts(load: Callable[[], Head], parts: Path, documents: Sequence[str] = (), queries: Sequence[str] = (),
                 *, chunk_texts: int = CHUNK_TEXTS, workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: float = 1, progress: bool | Callable[[int], object] | None = None,
                 address: str | None = "local") -> EncodeReport:
    """Encode ``documents`` and ``queries`` on Ray into ``parts`` (see the module docstring); returns what ran.

    ``load``: builds the head in each actor (a ``HeadSpec``, or any picklable function). ``workers``: actors in the
    pool; default one per GPU when the cluster has GPUs (``gpus_per_worker`` default 1), else one per
    ``cpus_per_worker`` CPUs (torch in each actor gets that many threads). ``progress``: a tqdm bar of texts written
    (None: on a terminal only), or a function called with the number of texts of each part written. ``address``:
    the cluster to join when Ray is not initialized yet ("local": start one here). A mistake in ``load`` (a
    ``HeadSpec``) fails before the cluster is joined; one raised in an actor comes out as itself (``user_errors``)."""
    ray = require_ray()
    check_load(load, address)
    cluster = connect(address)
    started = time.perf_counter()
    workers, gpus_per_worker = pool_size(cluster, workers, gpus_per_worker, cpus_per_worker)
    rows, total = [], 0
    for texts, is_query in ((documents, False), (queries, True)):
        for number, chunk in enumerate(plan(texts, is_query, chunk_texts)):
            total += 1
            if saved_digest(parts / part_name(number, is_query)) != texts_digest(chunk, is_query):
                rows.append({"number": number, "is_query": is_query, "texts": chunk})
    report = EncodeReport(total, 0, total - len(rows), len(documents) + len(queries), workers, cpus_per_worker,
                          gpus_per_worker, 0.0)
    if rows:
        parts.mkdir(parents=True, exist_ok=True)
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS)).map_batches(
            ChunkEncoder, fn_constructor_kwargs={"load": load, "threads": max(1, int(cpus_per_worker))},
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=min(workers, len(rows))),
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)
        # Ray Data's actor pools restart a dead actor and retry its chunk (max_restarts = max_task_retries = -1)
        sizes = {(row["number"], row["is_query"]): len(row["texts"]) for row in rows}
        with ProgressStep(progress, sum(sizes.values())) as advance, original_map_errors(ray):
            for row in dataset.iter_rows():
                number, is_query = int(row["number"]), bool(row["is_query"])
                data = row["part"]
                atomic_write(parts / part_name(number, is_query), lambda f, data=data: f.write(data))
                report.encoded += 1
                advance(sizes[number, is_query])
    report.seconds = time.perf_counter() - started
    return report


def pool_size(cluster: Any, workers: int | None, gpus_per_worker: float | None,
              cpus_per_worker: float) -> tuple[int, float]:
    """An actor pool's size and each actor's GPUs: ``workers`` when given, else one actor per GPU
    (``gpus_per_worker`` default 1) when the cluster has GPUs, else one per ``cpus_per_worker`` CPUs."""
    gpus = (1.0 if cluster.gpus else 0.0) if gpus_per_worker is None else gpus_per_worker
    return workers or (int(cluster.gpus / gpus) if gpus else max(1, int(cluster.cpus // cpus_per_worker))), gpus


class RayEncoder:
    """``encode_texts`` on a pool of actors that stays up between calls: for a caller that encodes batch after
    batch (``mret index --ray`` commits a few thousand chunks at a time), where a Ray Data job per batch would start
    its actors and load the model each time. Each call cuts the texts into the pipeline's chunks, spreads them over
    the actors, and returns ``Encoded`` rows in input order, the same as ``encode_texts``. A dead actor is restarted
    and its chunk retried. ``close()`` (or a ``with`` block) ends the actors."""

    def __init__(self, load: Callable[[], Head], workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: float = 1, chunk_texts: int = CHUNK_TEXTS, address: str | None = "local"):
        self.ray = require_ray()
        check_load(load, address)
        cluster = connect(address)
        self.workers, gpus = pool_size(cluster, workers, gpus_per_worker, cpus_per_worker)
        self.gpus_per_worker, self.cpus_per_worker, self.chunk_texts = gpus, cpus_per_worker, chunk_texts
        actor = self.ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus or None, max_restarts=-1,
                                max_task_retries=-1)(ChunkEncoder)
        self.actors = [actor.remote(load, max(1, int(cpus_per_worker))) for _ in range(self.workers)]

    def __call__(self, texts: Sequence[str], is_query: bool = False) -> Encoded:
        from ray.util import ActorPool

        chunks = plan(texts, is_query, self.chunk_texts)
        pool = ActorPool(self.actors)
        with tempfile.TemporaryDirectory() as folder, user_errors():
            for number, data in enumerate(pool.map(lambda actor, chunk: actor.encode_chunk.remote(chunk, is_query),
                                                   chunks)):
                (Path(folder) / part_name(number, is_query)).write_bytes(data)
            return read_parts(Path(folder), texts, is_query, self.chunk_texts)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_parts(parts: Path, texts: Sequence[str], is_query: bool, chunk_texts: int = CHUNK_TEXTS) -> Encoded:
    """The rows of ``texts`` in input order, from the parts ``encode_parts`` wrote (through ``encode_texts``, as the
    single node reads them). A chunk missing raises MissingPartError."""
    return encode_texts(_Refuser(), texts, is_query, chunk_texts=chunk_texts, parts=parts)


class MissingPartError(ModernRetrievalError, RuntimeError):
    """A chunk is not in the parts folder (its encoding did not finish): one line, the step to run again."""


class _Refuser:
    """The ``Head`` interface without a model, for ``encode_texts`` to read saved parts: a chunk to encode is
    missing."""

    def tokenize(self, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        return [[] for _ in texts]

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None) -> list[np.ndarray]:
        raise MissingPartError(f"a chunk of {len(texts)} texts has no part: run encode_parts (again) first")

    encode_queries = encode_documents


class ProgressStep:
    """A context giving ``advance(n)`` (n texts encoded): a tqdm bar, the caller's function, or nothing."""

    def __init__(self, progress: bool | Callable[[int], object] | None, total: int):
        self.progress, self.total, self.bar = progress, total, None

    def __enter__(self) -> Callable[[int], object]:
        if callable(self.progress):
            return self.progress
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc="encoding on Ray", unit="text",
                        disable=None if self.progress is None else not self.progress)
        return self.bar.update

    def skip(self, texts: int) -> None:
        """Texts a resumed run finds already encoded: they move the bar (its total counts them) but are not passed to
        a caller's function, which counts the texts encoded by this run."""
        if self.bar is not None:
            self.bar.update(texts)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
