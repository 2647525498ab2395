"""The query batcher alone, with a stand-in head: batches form, and closing it while searches arrive leaves no
search waiting forever (each is answered or told the batcher is closed)."""

from __future__ import annotations

from contextlib import nullcontext

import threading
import time

import numpy as np

from retrieval.serve.batching import BatchingHead, QueryBatcher


class StandIn:
    def __init__(self, delay: float = 0.0):
        self.delay, self.calls = delay, []

    def encode_queries(self, texts, show_progress=None):
        self.calls.append(len(texts))
        time.sleep(self.delay)
        return np.stack([np.full(3, float(len(t))) for t in texts])


def test_concurrent_requests_share_encoder_calls_and_get_their_own_rows():
    head = StandIn(delay=0.01)
    wrapped = BatchingHead(head, max_wait=0.05)
    rows: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        with wrapped.searching():
            rows[i] = wrapped.encode_queries(["x" * i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert all(rows[i].shape == (1, 3) and rows[i][0, 0] == i for i in range(1, 9))
    assert sum(head.calls) == 8 and len(head.calls) < 8  # fewer encoder calls than requests
    wrapped.batcher.close()


def test_closing_while_searches_arrive_leaves_none_waiting():
    for _ in range(20):
        batcher = QueryBatcher(StandIn(), max_wait=0.0005)
        outcomes: list[str] = []
        lock = threading.Lock()

        def ask() -> None:
            for _ in range(50):
                try:
                    batcher.encode("query")
                    result = "answered"
                except RuntimeError:
                    result = "closed"
                with lock:
                    outcomes.append(result)

        threads = [threading.Thread(target=ask, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.002)
        batcher.close()
        for thread in threads:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in threads), "a search waits forever on a closed batcher"
        assert len(outcomes) == 200


def test_a_request_racing_close_is_answered_or_refused_never_lost():
    """The window between a request's closed-check and its enqueueing, forced open: close() is started right
    there and given time to finish. The request must still be answered (or refused), not left behind the stop."""
    batcher = QueryBatcher(StandIn())
    inner = batcher._queue

    class RacingQueue:
        raced = False

        def put(self, item):
            if item is not None and not RacingQueue.raced:
                RacingQueue.raced = True
                closer = threading.Thread(target=batcher.close)
                closer.start()
                closer.join(timeout=0.5)  # close() completes here unless the request holds it off
            inner.put(item)

        def get(self, *args, **kwargs):
            return inner.get(*args, **kwargs)

    batcher._queue = RacingQueue()  # type: ignore[assignment]
    outcome: list[str] = []

    def ask() -> None:
        try:
            batcher.encode("query")
            outcome.append("answered")
        except RuntimeError:
            outcome.append("closed")

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout=10)
    assert outcome in (["answered"], ["closed"]), "the request was lost behind the batcher's stop"


def test_a_lone_search_is_not_kept_waiting_for_company():
    """No other search in progress: the batch of one runs at once, not after max_wait (here 5 s)."""
    head = StandIn()
    batcher = QueryBatcher(head, max_wait=5.0)
    try:
        began = time.perf_counter()
        with batcher.searching():
            batcher.encode("query")
        assert time.perf_counter() - began < 2.5
        assert head.calls == [1]
    finally:
        batcher.close()


def test_the_batcher_waits_for_a_search_in_progress_that_has_not_asked_yet():
    """Two searches in progress; the second asks 50 ms after the first (its lexical side, say): one encoder call."""
    head = StandIn()
    batcher = QueryBatcher(head, max_wait=5.0)
    second_started = threading.Event()

    def second() -> None:
        with batcher.searching():
            second_started.set()
            time.sleep(0.05)
            batcher.encode("second")

    try:
        thread = threading.Thread(target=second)
        thread.start()
        second_started.wait(5)
        with batcher.searching():
            batcher.encode("first")
        thread.join(timeout=10)
        assert head.calls == [2]
    finally:
        batcher.close()


def test_a_search_that_never_asks_stops_being_waited_for():
    """A lexical-only search ends without a query vector: the next lone search does not wait for it."""
    head = StandIn()
    batcher = QueryBatcher(head, max_wait=5.0)
    try:
        with batcher.searching():
            pass
        began = time.perf_counter()
        with batcher.searching():
            batcher.encode("query")
        assert time.perf_counter() - began < 2.5 and batcher._coming == 0
    finally:
        batcher.close()


def test_a_search_inside_a_search_is_the_same_search():
    """searching() is re-entrant: the inner one neither counts twice nor leaves the outer one counted forever."""
    batcher = QueryBatcher(StandIn(), max_wait=5.0)
    try:
        with batcher.searching():
            with batcher.searching():
                assert batcher._coming == 1
            assert batcher._coming == 1
            batcher.encode("query")
            assert batcher._coming == 0
        assert batcher._coming == 0
    finally:
        batcher.close()


def test_services_mark_their_searches_and_a_lexical_one_is_not_waited_for(tmp_path, monkeypatch):
    """The collection service wraps a search in searching() (its BM25 side runs before it asks for the vector),
    except a lexical search, which never asks."""
    from retrieval.serve.collection import Collection
    from retrieval.serve.service import CollectionService

    seen: list[int] = []

    class Store:
        read_transaction = nullcontext

        def lexical_search(self, *args):
            seen.append(head.batcher._coming)
            return []

    class Vectors:
        store = Store()

        def search(self, vectors, k, filter=None):
            return [[]]

        def documents(self, ids):
            return []

    head = BatchingHead(StandIn())
    collection = Collection.__new__(Collection)
    collection.head, collection.vectors = head, Vectors()
    service = CollectionService(collection)
    try:
        service.search("a query", 5, mode="hybrid")
        service.search("a query", 5, mode="lexical")
        assert seen == [1, 0] and head.batcher._coming == 0
    finally:
        head.batcher.close()
