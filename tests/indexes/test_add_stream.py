"""``add_stream`` on both index kinds: a stream of changes (ids out, ids in), committed once or batch by batch; a
PLAID index without a codec holds batches until they make its training sample, then commits them together.

Commit grouping is read from generation numbers: each commit is one generation, and a reader opened on the folder
while the stream runs (inside the batch generator, before it yields the next batch) sees what is committed so far."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexes import Batch, Document, FaissIndex, IndexInputError, PlaidIndex

DIM = 16
CLASSES = {"faiss": FaissIndex, "plaid": PlaidIndex}


def embeddings(kind: str, rng: np.random.Generator, n: int):
    if kind == "faiss":
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return [rng.standard_normal((10, DIM)).astype(np.float32) for _ in range(n)]  # 10 tokens per document


def batch(kind: str, step: int, n: int = 5, remove: tuple[str, ...] = ()) -> Batch:
    ids = [f"b{step}-{i}" for i in range(n)]
    documents = [Document(doc_id, source=f"f{step}.py", metadata={"chunk": i}) for i, doc_id in enumerate(ids)]
    return Batch(ids, embeddings(kind, np.random.default_rng(step), n), documents, remove=remove)


def create(kind: str, path: Path, **settings):
    if kind == "faiss":
        return FaissIndex.create(path, dim=DIM, kind="flat")
    return PlaidIndex.create(path, dim=DIM, **settings)


class Observed:
    """Yields the batches and, before each next one, records (generation, documents) as a new reader sees them:
    what the stream has committed when the batch before was handed over."""

    def __init__(self, kind: str, path: Path, batches: list[Batch]):
        self.kind, self.path, self.batches = kind, path, batches
        self.seen: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[Batch]:
        for item in self.batches:
            yield item
            self.look()

    def look(self) -> None:
        with CLASSES[self.kind].open(self.path) as reader:
            self.seen.append((reader.generation, len(reader)))


@pytest.mark.parametrize("kind", ["faiss", "plaid"])
def test_commit_each_batch_or_once(tmp_path, kind):
    settings = {"sample_tokens": 50} if kind == "plaid" else {}  # PLAID: the first batch is a whole sample
    each = create(kind, tmp_path / "each", **settings)
    stream = Observed(kind, tmp_path / "each", [batch(kind, step) for step in range(4)])
    each.add_stream(stream, commit="each")
    assert stream.seen == [(1, 5), (2, 10), (3, 15), (4, 20)]  # every batch committed before the next is asked
    once = create(kind, tmp_path / "once", **settings)
    stream = Observed(kind, tmp_path / "once", [batch(kind, step) for step in range(4)])
    once.add_stream(stream)  # commit="once" is the default
    assert stream.seen == [(0, 0)] * 4 and once.generation == 1 and len(once) == 20
    query = embeddings(kind, np.random.default_rng(2), 1)
    query = query if kind == "faiss" else query[0]
    assert each.search(query, k=3) == once.search(query, k=3)  # the same documents, whatever the grouping
    assert each.search(query, k=1)[0][0][0] == "b2-0"


@pytest.mark.parametrize("kind", ["faiss", "plaid"])
def test_removals_in_batches_replace_and_delete(tmp_path, kind):
    index = create(kind, tmp_path / "ix", **({"sample_tokens": 50} if kind == "plaid" else {}))
    first, replaced = batch(kind, 0), batch(kind, 1, n=2)
    changes = [first,
               Batch(["b0-1", "new"], replaced.embeddings, remove=["b0-0", "b0-1"]),  # b0-1 replaced, b0-0 out
               Batch(remove=["b0-2"]),  # removals only
               (["plain"], embeddings(kind, np.random.default_rng(9), 1))]  # a plain (ids, embeddings) pair
    index.add_stream(changes, commit="each")
    assert index.generation == 4
    assert sorted(index.store.ids()) == ["b0-1", "b0-3", "b0-4", "new", "plain"]
    query = replaced.embeddings[:1] if kind == "faiss" else replaced.embeddings[0]
    assert index.search(query, k=1)[0][0][0] == "b0-1"  # with its new vectors
    with pytest.raises(IndexInputError, match="batch 1: .*not in the index"):
        index.add_stream([Batch(remove=["b0-3"]), Batch(remove=["b0-0"])], commit="each")
    assert "b0-3" not in index and index.generation == 5  # the batch before the bad one stays committed
    with pytest.raises(IndexInputError, match="batch 1: .*already in the index"):
        index.add_stream([Batch(remove=["b0-4"]), Batch(["new"], replaced.embeddings[:1])])
    assert "b0-4" in index and index.generation == 5  # commit="once": nothing of the stream
    with pytest.raises(IndexInputError, match="batch 0: expected a Batch"):
        index.add_stream([["a", "b", "c"]])
    with pytest.raises(IndexInputError, match="batch 0: .*embedding"):
        index.add_stream([Batch(["x"], [])])
    with pytest.raises(IndexInputError, match="commit must be"):
        index.add_stream([], commit="sometimes")


@pytest.mark.parametrize("kind", ["faiss", "plaid"])
def test_a_stream_inside_a_transaction_joins_it(tmp_path, kind):
    index = create(kind, tmp_path / "ix", **({"sample_tokens": 50} if kind == "plaid" else {}))
    with index.transaction():
        index.add_stream([batch(kind, step) for step in range(3)], commit="each")
        index.remove(["b0-0"])
    assert index.generation == 1 and len(index) == 14


def test_plaid_holds_batches_until_the_sample_then_commits_each(tmp_path):
    """sample_tokens = 3 batches: the first three are held (nothing committed), trained on together and committed in
    one commit with their removals in order; every batch after is its own commit. ``expected_tokens`` is asked once,
    when the codec is trained, after the third batch was handed over."""
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM, sample_tokens=3 * 5 * 10)
    asked: list[int] = []
    batches = [batch("plaid", 0), batch("plaid", 1, remove=("b0-0",)), batch("plaid", 2), batch("plaid", 3),
               batch("plaid", 4, remove=("b2-4", "b3-0"))]
    stream = Observed("plaid", tmp_path / "ix", batches)

    def expected_tokens() -> int:
        asked.append(len(stream.seen))  # batches handed over before this one: seen[i] is taken after batch i
        return 4000

    index.add_stream(stream, expected_tokens=expected_tokens, commit="each")
    assert stream.seen == [(0, 0), (0, 0), (1, 14), (2, 19), (3, 22)]
    assert asked == [2]  # called once, while the third batch was being committed
    assert index.settings["trained_tokens"] == 4000 and index.settings["sample_size"] == 150
    assert "b0-0" not in index and "b2-4" not in index and "b3-0" not in index and len(index) == 22


def test_plaid_stream_shorter_than_the_sample_trains_on_all_of_it(tmp_path):
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM, sample_tokens=10_000)
    stream = Observed("plaid", tmp_path / "ix", [batch("plaid", step) for step in range(3)])
    index.add_stream(stream, expected_tokens=700, commit="each")
    assert stream.seen == [(0, 0)] * 3 and index.generation == 1 and len(index) == 15
    assert index.settings["sample_size"] == 150 and index.settings["trained_tokens"] == 700  # all three batches


def test_plaid_training_settings_never_leak_between_threads(tmp_path):
    """The expected token count of one stream belongs to that stream: another thread adding to the same object while
    the stream waits for its next batch (holding batches, not in a transaction) trains the codec with its own
    figures, and the stream, finding a codec, does not train again (its estimate is never asked for)."""
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM, sample_tokens=1000)
    handed, resume = threading.Event(), threading.Event()
    asked: list[int] = []

    def batches() -> Iterator[Batch]:
        yield batch("plaid", 0)
        handed.set()
        resume.wait()
        yield batch("plaid", 1)

    def stream() -> None:
        index.add_stream(batches(), expected_tokens=lambda: asked.append(1) or 10**6, commit="each")

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        assert handed.wait(60)
        other = batch("plaid", 7, n=8)
        index.add(other.ids, other.embeddings)  # 80 tokens: trains the codec, sized for its own tokens
        assert index.generation == 1 and index.settings["trained_tokens"] == 80
    finally:
        resume.set()
        thread.join()
    assert asked == [] and index.settings["trained_tokens"] == 80
    assert index.generation == 2 and len(index) == 18  # the stream's two batches: one commit


def test_plaid_build_is_add_stream_in_one_commit(tmp_path):
    stream = [(b.ids, b.embeddings) for b in (batch("plaid", step) for step in range(6))]
    index = PlaidIndex.build(tmp_path / "ix", stream, dim=DIM, sample_tokens=100, expected_tokens=lambda: 900)
    assert index.generation == 1 and len(index) == 30 and index.settings["trained_tokens"] == 900
