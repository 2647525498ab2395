"""Dynamic batching of query encodings: concurrent searches each ask for one query vector; one thread gathers the
requests that arrive within a few milliseconds and encodes them in a single encoder call.

Why: on CPU a query costs mostly fixed per-call work (tokenizer, Python, weights read for a few tokens), so 16
queries encoded together cost far less than 16 calls. The encoder is unpadded (one packed sequence), so a query's
vector does not depend on the queries batched with it (up to float rounding).

The batcher waits (up to ``MAX_WAIT_S``) only for searches that are in progress (``searching()``) and have not asked
for their query vector yet: a lone client is never kept waiting for company that is not coming, and under load the
requests that arrive while the encoder is busy form the next batch anyway.

``BatchingHead`` wraps a head so that ``Retriever.search`` (which calls ``encode_queries([query])``) batches without
knowing it: every search mode and filter of the retriever stays exactly its own.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..heads.backbones import TransformersBackbone

MAX_WAIT_S = 0.002  # how long the first request of a batch waits for others
MAX_BATCH = 64  # queries per encoder call


@dataclass
class BatchStats:
    """How the batcher has grouped requests (for /status-like introspection, the bench and the tests)."""

    calls: int = 0  # encoder calls
    queries: int = 0  # queries encoded
    largest: int = 0  # the largest batch

    def record(self, size: int) -> None:
        self.calls += 1
        self.queries += size
        self.largest = max(self.largest, size)


class QueryBatcher:
    """Encode single queries from many threads in batches: ``encode(text)`` blocks until its vector is ready."""

    def __init__(self, head: Any, max_wait: float = MAX_WAIT_S, max_batch: int = MAX_BATCH):
        self.head = head
        self.max_wait = max_wait
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._closed = False
        self._lock = threading.Lock()  # no request is queued behind the stop mark (it would wait forever)
        self._queue: queue.SimpleQueue[tuple[str, Future] | None] = queue.SimpleQueue()
        self._coming = 0  # searches in progress that have not asked for their query vector yet
        self._local = threading.local()
        self._thread = threading.Thread(target=self._loop, name="query-batcher", daemon=True)
        self._thread.start()

    @contextmanager
    def searching(self) -> Iterator[None]:
        """Marks this thread's search as in progress until it asks for its query vector (or ends without one).
        Re-entrant: a search inside a search is the same search."""
        if getattr(self._local, "coming", False):
            yield
            return
        with self._lock:
            self._coming += 1
            self._local.coming = True
        try:
            yield
        finally:
            with self._lock:
                self._asked()

    def _asked(self) -> None:
        """(under the lock) This thread's search has asked, or ended."""
        if getattr(self._local, "coming", False):
            self._local.coming = False
            self._coming -= 1

    def encode(self, text: str) -> Any:
        """The query's encoding (a vector for a dense head, a token matrix for ColBERT)."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the query batcher is closed")
            self._asked()  # before the put: the batcher must not wait for a query it already holds
            self._queue.put((text, future))
        return future.result()

    def close(self) -> None:
        """Requests queued before this are still answered; later ones raise RuntimeError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                try:  # what is queued already, then what searches in progress ask for before the deadline
                    item = self._queue.get(block=self._coming > 0,
                                           timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._run(batch)

    def _run(self, batch: list[tuple[str, Future]]) -> None:
        try:
            encoded = self.head.encode_queries([text for text, _ in batch], show_progress=False)
        except BaseException as error:  # every waiting search gets the error, the loop lives on
            for _, future in batch:
                future.set_exception(error)
            return
        self.stats.record(len(batch))
        for (_, future), row in zip(batch, encoded):
            future.set_result(row)


class BatchingHead:
    """A head whose single-query ``encode_queries`` goes through a ``QueryBatcher``; everything else (documents,
    tokenizer, settings) is the wrapped head's own."""

    def __init__(self, head: Any, max_wait: float = MAX_WAIT_S, max_batch: int = MAX_BATCH):
        self.head = head
        self.batcher = QueryBatcher(head, max_wait, max_batch)
        if isinstance(getattr(head, "backbone", None), TransformersBackbone):
            head.backbone.trace = True  # its forward then runs without the GIL, beside the request threads

    def encode_queries(self, texts: Sequence[str], show_progress: bool | None = None) -> Any:
        if len(texts) != 1:
            return self.head.encode_queries(texts, show_progress=show_progress)
        row = self.batcher.encode(texts[0])
        return _stack([row])

    def searching(self) -> Any:
        """Wrap a search in it so that the batcher waits for its query (see QueryBatcher.searching)."""
        return self.batcher.searching()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.head, name)


def _stack(rows: list[Any]) -> Any:
    """Rows back in the shape the head returns: a matrix for vectors (numpy/torch), a list for token matrices."""
    import numpy as np

    first = rows[0]
    if getattr(first, "ndim", None) == 1:
        return np.stack([np.asarray(r) for r in rows])
    return rows
