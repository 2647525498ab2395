"""Our tokenizer wrapper against transformers' AutoTokenizer on the real ModernBERT tokenizer.json."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from encoder import Tokenizer

TEXTS = [
    "The capital of France is [MASK].",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "    indented\twith tabs\t\tand   runs of     spaces\n\n\n",
    "Ünïcödé: naïve café, Straße, ﬁ ligature, 北京大学, Привет мир, مرحبا, 🤖🚀 emoji",
    "",
    "x" * 50,
    "SELECT * FROM users WHERE id = 42; -- comment\n<div class=\"a\">&amp;</div>",
    " ".join(f"word{i}" for i in range(3000)),  # a long text (thousands of tokens)
]


@pytest.fixture(scope="module")
def ours(tokenizer_dir):
    return Tokenizer.from_folder(tokenizer_dir)


@pytest.fixture(scope="module")
def reference(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_vocabulary_and_special_ids(ours):
    assert len(ours) == 50368
    assert (ours.cls_token_id, ours.sep_token_id, ours.pad_token_id, ours.mask_token_id) == (50281, 50282, 50283, 50284)
    assert ours.model_max_length == 8192


def test_ids_equal_transformers(ours, reference):
    expected = reference(TEXTS, truncation=True, max_length=8192)["input_ids"]
    assert ours.encode(TEXTS) == expected
    assert all(row[0] == 50281 and row[-1] == 50282 for row in expected)


@pytest.mark.parametrize("limit", [3, 16, 512])
def test_truncation_equals_transformers(ours, reference, limit):
    expected = reference(TEXTS, truncation=True, max_length=limit)["input_ids"]
    got = ours.encode(TEXTS, max_length=limit)
    assert got == expected
    assert max(map(len, got)) <= limit


def test_long_text_is_truncated_at_model_maximum(ours):
    ids = ours.encode([" ".join(["token"] * 10_000)])[0]
    assert len(ids) == 8192 and ids[-1] == 50282


def test_pack_gives_cu_seqlens(ours):
    input_ids, cu_seqlens = ours.pack(["a b c", "", "hello world"])
    rows = ours.encode(["a b c", "", "hello world"])
    assert cu_seqlens.tolist() == [0, len(rows[0]), len(rows[0]) + 2, sum(map(len, rows))]
    assert cu_seqlens.dtype == torch.int32
    assert input_ids.tolist() == [t for row in rows for t in row]


def test_bad_input_gives_clear_errors(ours):
    with pytest.raises(TypeError, match="single string"):
        ours.encode("not a list")
    with pytest.raises(TypeError, match="text 1 is NoneType"):
        ours.encode(["ok", None])
    with pytest.raises(ValueError, match="at least 3"):
        ours.encode(["ok"], max_length=2)


def test_threads_encoding_at_once_get_the_ids_of_one_thread_alone(ours):
    """Eight threads encode at once, each at its own max_length, many times over: every result equals what a lone
    call gives. (Truncation switched on the shared backend around each call failed this within a few rounds.)"""
    texts = TEXTS[:-1] + [" ".join(f"word{i}" for i in range(600))]
    limits = [3, 16, 64, 512, None, 16, 3, 512]
    expected = {limit: ours.encode(texts, limit) for limit in limits}
    start = threading.Barrier(len(limits))

    def encode_repeatedly(limit: int | None) -> list[list[list[int]]]:
        start.wait()
        return [ours.encode(texts, limit) for _ in range(30)]

    with ThreadPoolExecutor(len(limits)) as pool:
        results = list(pool.map(encode_repeatedly, limits))
    for limit, rounds in zip(limits, results):
        assert all(got == expected[limit] for got in rounds), f"max_length {limit}"
