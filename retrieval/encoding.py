"""The one encoding pipeline: many texts through a head in chunks, resumable, with what it cost.

Why a pipeline rather than one ``head.encode_documents(texts)`` call: texts are sorted longest first and encoded
``chunk_texts`` at a time, so that texts of similar length share a batch (little padding) and the caller sees
progress; each finished chunk can be saved to a ``parts`` folder, so that a long run that is interrupted resumes from
its last finished chunk instead of from the start; and the seconds spent in the model and the input tokens are
counted, for tokens/s in reports. Rows come back in input order whatever the sorting.

Used by the eval harness (``eval.encode``, which caches whole datasets), the codebase indexer (per commit batch) and,
through the harness, the training evaluation. The head is used through the ``Head`` interface only.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from modernretrieval.files import atomic_write

from .heads.base import Head

CHUNK_TEXTS = 128  # texts per model call: the progress step, and what an interruption loses at most
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Encoded:
    """``rows[i]`` encodes ``texts[i]``: a (dim,) vector from a dense head, an (n_tokens, dim) array from a
    multi-vector head. ``seconds``: time spent in the model, summed over the runs that made the rows (a resumed run
    adds the seconds saved with each part). ``tokens``: input tokens, as the head tokenizes and truncates them."""

    rows: list[np.ndarray]
    seconds: float
    tokens: int


def encode_texts(head: Head, texts: Sequence[str], is_query: bool, *, chunk_texts: int = CHUNK_TEXTS,
                 parts: Path | None = None, progress: Callable[[int], object] | None = None) -> Encoded:
    """Encode ``texts`` as queries or documents with ``head``, longest first, ``chunk_texts`` at a time.

    ``parts``: a folder where each finished chunk is saved (``queries-000000.npz``, ``docs-000001.npz``...) before
    the next one starts, and where a chunk already saved is read instead of encoded. A part records a digest of its
    texts and is reused only for the same texts in the same chunk, so a folder left by other texts or another
    ``chunk_texts`` is never served (its parts are encoded again and overwritten); it does not record the head: a
    folder must belong to one head and its settings (``eval.encode`` names it after its cache key); a part is
    written whole or not at all. ``progress`` is called with the number of texts of each chunk once it is done."""
    rows: list[np.ndarray] = [np.empty(0)] * len(texts)
    seconds, tokens = 0.0, 0
    for number, chunk in enumerate(chunk_plan([len(text) for text in texts], chunk_texts)):
        batch = [texts[i] for i in chunk]
        part = parts / part_name(number, is_query) if parts is not None else None
        digest = texts_digest(batch, is_query)
        saved = read_part(part, len(batch), digest) if part is not None and part.exists() else None
        if saved is None:
            encode = head.encode_queries if is_query else head.encode_documents  # looked up now: may be replaced
            begin = time.perf_counter()
            encoded = list(encode(batch, show_progress=False))
            saved = encoded, time.perf_counter() - begin, sum(len(ids) for ids in head.tokenize(batch, is_query))
            if part is not None:
                part.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(part, lambda f: _save_part(f, digest, *saved))
        chunk_rows, chunk_seconds, chunk_tokens = saved
        for i, row in zip(chunk, chunk_rows):
            rows[i] = row
        seconds, tokens = seconds + chunk_seconds, tokens + chunk_tokens
        if progress is not None:
            progress(len(chunk))
    return Encoded(rows, seconds, tokens)


def chunk_plan(lengths: Sequence[int], chunk_texts: int = CHUNK_TEXTS) -> list[list[int]]:
    """The chunks ``encode_texts`` makes of texts of these lengths (in characters), as lists of input positions, in
    part-number order: longest first (ties in input order), ``chunk_texts`` at a time. Lengths are all it needs, so a
    distributed run can make the plan without holding the texts."""
    if chunk_texts < 1:
        raise ValueError(f"chunk_texts must be at least 1, got {chunk_texts}")
    order = np.lexsort((np.arange(len(lengths)), -np.asarray(lengths, dtype=np.int64))) if len(lengths) else []
    return [list(map(int, order[start: start + chunk_texts])) for start in range(0, len(order), chunk_texts)]


def part_name(number: int, is_query: bool) -> str:
    """The file of chunk ``number`` in a ``parts`` folder."""
    return f"{'queries' if is_query else 'docs'}-{number:06d}.npz"


def texts_digest(texts: list[str], is_query: bool) -> str:
    """What a saved part records of its texts (and whether they were queries): a part is reused only for the same."""
    h = hashlib.sha256(b"query" if is_query else b"document")
    for text in texts:
        data = text.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _save_part(f: BinaryIO, digest: str, rows: list[np.ndarray], seconds: float, tokens: int) -> None:
    """Per-token rows packed one after the other (``lengths`` says where each ends); vectors stacked, lengths 0."""
    multi = rows[0].ndim == 2
    lengths = np.array([len(r) if multi else 0 for r in rows])
    np.savez(f, rows=np.concatenate(rows) if multi else np.stack(rows), lengths=lengths, seconds=seconds,
             tokens=tokens, texts=np.array(digest))


def saved_digest(part: Path) -> str | None:
    """The digest of the texts of a saved part (its vectors are not read); None when missing or unreadable."""
    try:
        with np.load(part, allow_pickle=False) as f:
            return str(f["texts"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def saved_row_lengths(part: Path) -> np.ndarray:
    """The token count of each row of a saved multi-vector part (its vectors are not read)."""
    with np.load(part, allow_pickle=False) as f:
        return f["lengths"]


def read_part(part: Path, n: int | None, digest: str | None = None) -> tuple[list[np.ndarray], float, int] | None:
    """A saved chunk of ``n`` texts (None: any number) as (rows, seconds, tokens); None when unreadable, of the
    wrong size or (with ``digest``) of other texts: then it is encoded again."""
    try:
        with np.load(part, allow_pickle=False) as f:
            rows, lengths = f["rows"], f["lengths"]
            seconds, tokens, texts = float(f["seconds"]), int(f["tokens"]), str(f["texts"])
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    n = len(lengths) if n is None else n
    if (digest is not None and texts != digest) or len(lengths) != n:
        return None
    if lengths.any():  # per-token rows, packed
        if lengths.sum() != len(rows):
            return None
        return np.split(rows, np.cumsum(lengths)[:-1]), seconds, tokens
    return (list(rows), seconds, tokens) if len(rows) == n else None


def ahead(function: Callable[[T], R], items: Iterable[T], depth: int = 1) -> Iterator[tuple[T, R]]:
    """``(item, function(item))`` for each item, in order, with ``function`` run in a worker thread up to ``depth``
    items ahead of the consumer: the next batch is encoded while the consumer commits the current one (torch and the
    tokenizer release the GIL, so the two overlap on separate cores).

    ``items`` is read in the consumer's thread, and ``function`` should touch nothing but its item (the model): when
    the consumer stops early (an exception, ``break``, Ctrl-C) the work not started is cancelled and the call under
    way is not waited for (a model call may take minutes); its result is dropped. An exception raised by
    ``function`` is raised here, at its item's place in the stream."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ahead")
    queued: deque[tuple[T, Future]] = deque()
    finished = False
    try:
        for item in items:
            queued.append((item, worker.submit(function, item)))
            if len(queued) > depth:
                done, future = queued.popleft()
                yield done, future.result()
        while queued:
            done, future = queued.popleft()
            yield done, future.result()
        finished = True
    finally:
        worker.shutdown(wait=finished, cancel_futures=True)
