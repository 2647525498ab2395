"""retrieval.encoding.encode_texts, the one encoding pipeline (eval's cache and the codebase indexer encode through
it), with a stand-in head whose vectors are a function of the text: chunks longest first, rows back in input order,
progress, token counts, and resuming from saved parts. (The same pipeline on a real model: test_encode_cache.py.)"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from retrieval.encoding import chunk_plan, encode_texts

DIM = 4
TEXTS = ["a b", "a much longer text than the others here", "c", "middle sized text", "d e f", "g",
         "another long one with many words", "h i"]


class StandInHead:
    """The ``Head`` interface without a model: vectors derived from each text's checksum, so runs compare exactly;
    ``calls`` records what each model call received."""

    def __init__(self, kind: str):
        self.kind, self.dim = kind, DIM
        self.calls: list[list[str]] = []

    def tokenize(self, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        return [[0] * (len(text.split()) + (3 if is_query else 2)) for text in texts]

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None):
        return self._encode(texts, False)

    def encode_queries(self, texts: Sequence[str], show_progress: bool | None = None):
        return self._encode(texts, True)

    def _encode(self, texts: Sequence[str], is_query: bool):
        self.calls.append(list(texts))
        rows = [expected_row(self.kind, text, is_query) for text in texts]
        return np.stack(rows) if self.kind == "dense" else rows


def expected_row(kind: str, text: str, is_query: bool) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{is_query}:{text}".encode()))
    return rng.standard_normal(DIM if kind == "dense" else (len(text.split()) + 1, DIM)).astype(np.float32)


def assert_rows(encoded, kind: str, texts: list[str], is_query: bool) -> None:
    assert len(encoded.rows) == len(texts)
    for row, text in zip(encoded.rows, texts):
        assert np.array_equal(row, expected_row(kind, text, is_query))


@pytest.mark.parametrize("kind", ["dense", "colbert"])
@pytest.mark.parametrize("is_query", [False, True])
def test_longest_first_in_chunks_rows_in_input_order(kind, is_query):
    head, progress = StandInHead(kind), []
    encoded = encode_texts(head, TEXTS, is_query, chunk_texts=3, progress=progress.append)
    assert_rows(encoded, kind, TEXTS, is_query)
    assert [len(call) for call in head.calls] == [3, 3, 2] and progress == [3, 3, 2]
    lengths = [len(text) for call in head.calls for text in call]
    assert lengths == sorted(lengths, reverse=True)  # longest first across the chunks
    assert encoded.tokens == sum(len(ids) for ids in head.tokenize(TEXTS, is_query))
    assert encoded.seconds >= 0.0


def test_equal_lengths_keep_input_order():
    head = StandInHead("dense")
    encode_texts(head, ["bb", "aa", "cc", "d"], False, chunk_texts=2)
    assert head.calls == [["bb", "aa"], ["cc", "d"]]


def test_the_plan_made_from_lengths_alone_is_the_chunks_encoded():
    """A distributed run makes the plan from the texts' lengths (it never holds the texts): the same chunks."""
    texts = [("xy" * (i * 7 % 11)) + str(i % 3) for i in range(40)]  # many ties
    head = StandInHead("dense")
    encode_texts(head, texts, False, chunk_texts=6)
    plan = chunk_plan([len(text) for text in texts], 6)
    assert [[texts[i] for i in chunk] for chunk in plan] == head.calls
    assert sorted(i for chunk in plan for i in chunk) == list(range(40)) and chunk_plan([], 6) == []


@pytest.mark.parametrize("kind", ["dense", "colbert"])
def test_an_interrupted_run_resumes_from_its_saved_parts(kind, tmp_path):
    head, interrupted = StandInHead(kind), []
    real = head.encode_documents

    def interrupted_at_the_third_chunk(texts, show_progress=None):
        if len(head.calls) == 2 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real(texts, show_progress)

    head.encode_documents = interrupted_at_the_third_chunk  # replaced on the instance: looked up at call time
    with pytest.raises(KeyboardInterrupt):
        encode_texts(head, TEXTS, False, chunk_texts=3, parts=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs-000000.npz", "docs-000001.npz"]
    head.calls.clear()
    encoded = encode_texts(head, TEXTS, False, chunk_texts=3, parts=tmp_path)
    assert [len(call) for call in head.calls] == [2]  # only the chunk that was not finished
    assert_rows(encoded, kind, TEXTS, False)
    assert encoded.tokens == encode_texts(StandInHead(kind), TEXTS, False).tokens


def test_saved_parts_carry_their_seconds_and_tokens(tmp_path):
    first = encode_texts(StandInHead("colbert"), TEXTS, True, chunk_texts=3, parts=tmp_path)
    head = StandInHead("colbert")
    head.encode_queries = None  # the model must not be called: every chunk is read from its part
    again = encode_texts(head, TEXTS, True, chunk_texts=3, parts=tmp_path)
    assert again.seconds == first.seconds and again.tokens == first.tokens
    assert_rows(again, "colbert", TEXTS, True)


def test_parts_of_other_texts_are_not_served(tmp_path):
    encode_texts(StandInHead("dense"), TEXTS, False, chunk_texts=3, parts=tmp_path)
    other = [text.upper() for text in TEXTS]  # same count, same lengths: only the texts tell the parts apart
    head = StandInHead("dense")
    encoded = encode_texts(head, other, False, chunk_texts=3, parts=tmp_path)
    assert [len(call) for call in head.calls] == [3, 3, 2]
    assert_rows(encoded, "dense", other, False)
    head.calls.clear()  # and the parts now hold the new texts
    encode_texts(head, other, False, chunk_texts=3, parts=tmp_path)
    assert head.calls == []


def test_a_damaged_part_is_encoded_again(tmp_path):
    encode_texts(StandInHead("colbert"), TEXTS, False, chunk_texts=3, parts=tmp_path)
    part = tmp_path / "docs-000001.npz"
    part.write_bytes(part.read_bytes()[:50])
    head = StandInHead("colbert")
    encoded = encode_texts(head, TEXTS, False, chunk_texts=3, parts=tmp_path)
    assert [len(call) for call in head.calls] == [3]
    assert_rows(encoded, "colbert", TEXTS, False)


def test_nothing_to_encode_and_mistakes(tmp_path):
    head = StandInHead("dense")
    encoded = encode_texts(head, [], False, parts=tmp_path)
    assert (encoded.rows, encoded.seconds, encoded.tokens, head.calls) == ([], 0.0, 0, [])
    with pytest.raises(ValueError, match="chunk_texts"):
        encode_texts(head, TEXTS, False, chunk_texts=0)


# ----- ahead: the next batch encoded while the current one is consumed

def test_ahead_keeps_order_and_overlaps_producer_and_consumer():
    import threading

    from retrieval.encoding import ahead

    second_started = threading.Event()

    def work(item: int) -> int:
        if item == 2:
            second_started.set()  # only reached while item 1 is held when the work runs ahead of the consumer
        return item * 10

    seen = []
    for item, result in ahead(work, [1, 2, 3]):
        if item == 1:  # still holding item 1: a stream that is not ahead would never start item 2 meanwhile
            assert second_started.wait(timeout=10), "the next item was not worked on while the current one was held"
        seen.append((item, result))
    assert seen == [(1, 10), (2, 20), (3, 30)]


def test_ahead_raises_a_work_error_at_its_place_in_the_stream():
    from retrieval.encoding import ahead

    def work(item: str) -> str:
        if item == "b":
            raise KeyError("boom")
        return item

    stream = ahead(work, ["a", "b", "c"])
    assert next(stream) == ("a", "a")
    with pytest.raises(KeyError, match="boom"):
        next(stream)


def test_ahead_reads_items_in_the_consumers_thread_and_stops_when_it_leaves():
    import threading
    import time

    from retrieval.encoding import ahead

    readers, worked = set(), []

    def items():
        for i in range(1000):
            readers.add(threading.current_thread().name)
            yield i

    def work(item: int) -> int:
        worked.append(item)
        return item

    before = threading.active_count()
    for item, _ in ahead(work, items(), depth=2):
        if item == 3:
            break
    assert readers == {threading.current_thread().name}  # the items (the store's reads) never leave this thread
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before  # the worker thread ended
    assert len(worked) <= 3 + 1 + 2  # what was consumed, and at most depth + 1 more
    with pytest.raises(ValueError):
        next(ahead(work, [], depth=0))


# ----- a huge text is not tokenized whole
@pytest.mark.parametrize("which", ["modernbert", "bert"])
def test_a_huge_text_is_tokenized_from_a_prefix_with_the_same_ids(which, tokenizer_dir, minilm_folder):
    """A text far longer than max_length characters is tokenized from a prefix of max_length * CUT_CHARS_PER_TOKEN
    characters (an 8 MB line whole took seconds and GBs): the ids are exactly those of tokenizing it whole and
    cutting, for texts below and above the cut, cut anywhere (inside a word, a run of spaces, an emoji), and a
    text whose prefix holds too few words is tokenized whole."""
    from encoder import Tokenizer
    from encoder.tokenizer import CUT_CHARS_PER_TOKEN, _truncated

    tokenizer = Tokenizer.from_folder(tokenizer_dir if which == "modernbert" else minilm_folder)

    def whole(text: str, limit: int, special: bool = True) -> list[int]:
        encoding = tokenizer.backend.encode(text, add_special_tokens=special)
        if not special:
            return encoding.ids[:limit]
        return encoding.ids if len(encoding.ids) <= limit else _truncated(encoding, limit)

    pieces = ["alpha", "  ", "\n", "北京", "[MASK]", "x" * 40, "...", "    indent", "émoji🚀", "\t", "don't", "42"]
    generator = np.random.default_rng(0)
    texts = ["".join(pieces[i] + " " * int(generator.integers(0, 2)) for i in generator.integers(0, len(pieces), n))
             for n in (3, 40, 300, 2000, 9000)]
    texts += ["x" * 5000, " " * 5000 + "tail", "word " * 4000]  # one huge word; a space run; plain words
    for limit in (3, 8, 16, 64, 200):
        cut = limit * CUT_CHARS_PER_TOKEN
        for text in texts + [t[:cut + shift] for t in texts for shift in (-2, -1, 0, 1, 2)]:
            assert tokenizer.encode([text], limit) == [whole(text, limit)], (limit, len(text))
            assert tokenizer.encode([text], limit, add_special_tokens=False) == [whole(text, limit, False)]

    class Spy:  # the backend, with encode_batch recording the longest text it is given
        def __init__(self, backend):
            self.backend, self.longest = backend, 0

        def encode_batch(self, texts, **kwargs):
            self.longest = max(self.longest, *map(len, texts))
            return self.backend.encode_batch(texts, **kwargs)

        def __getattr__(self, name):
            return getattr(self.backend, name)

    huge = "a few plain words, again and again. " * 30_000  # 1 MB
    spy = tokenizer.backend = Spy(tokenizer.backend)
    try:
        ids = tokenizer.encode([huge, "short"], 512)
    finally:
        tokenizer.backend = spy.backend
    assert spy.longest <= 512 * CUT_CHARS_PER_TOKEN < len(huge)
    assert ids == [whole(huge, 512), whole("short", 512)]
