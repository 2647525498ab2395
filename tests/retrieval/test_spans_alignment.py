"""ColBERT's token-level alignment chooses the span of a long hit (retrieval/codebase/alignment.py, spans.py): the
token -> line map against the tokenizer itself, the alignment arithmetic, the span rule, the scores read back from a
PLAID index, and the Retriever over a real (tiny random) ColBERT index."""

from __future__ import annotations

import numpy as np
import pytest
from support import PYLATE_MODEL, long_chunk

from indexes import PlaidIndex
from retrieval.codebase.alignment import Alignment, align, query_token_rows, stored_scores, token_lines
from retrieval.codebase.spans import MAX_SPAN_LINES, aligned_span, best_span
from retrieval.heads.colbert import ColBERT

needs_pylate = pytest.mark.skipif(not (PYLATE_MODEL / "modules.json").exists(),
                                  reason=f"the PyLate ColBERT fixture is not at {PYLATE_MODEL} (../shared is missing)")
TEXT = "  def parse(raw):\n    return raw.split(':')\n\n# Zebra, STRIPES!\nclass Herd:\n    pass\n  "


@pytest.fixture
def pylate_head():
    return ColBERT.from_pretrained(PYLATE_MODEL)


@pytest.fixture(scope="module")
def minilm_head(minilm_folder):
    return ColBERT.from_token_embeddings(minilm_folder)


def reference_lines(head: ColBERT, text: str, first: int) -> list[int]:
    """Each document vector's line, straight from the tokenizer's offsets: [CLS] ([D]) kept tokens [SEP]."""
    lead = len(text) - len(text.lstrip()) if head.strip else 0
    body = text.strip() if head.strip else text
    encoding = head.tokenizer.backend.encode(body.lower() if head.spec.do_lower_case else body)
    kept = [first + text[:lead + start].count("\n") for token, (start, _), sequence in
            zip(encoding.ids, encoding.offsets, encoding.sequence_ids) if sequence == 0 and token not in head.skiplist]
    return [-1] * (1 + (head.document_prefix_id is not None)) + kept + [-1]


@pytest.mark.parametrize("which", [pytest.param("pylate", marks=needs_pylate), "minilm"])
def test_token_lines_map_every_stored_vector_to_its_line(which, request):
    # pylate: a [D] marker, stripping and a punctuation skiplist; minilm: lower-casing, no marker, no skiplist
    head = request.getfixturevalue(f"{which}_head")
    lines = token_lines(head, TEXT, first_line=10)
    assert len(lines) == len(head.encode_documents([TEXT])[0])
    assert lines.tolist() == reference_lines(head, TEXT, 10)
    # line 12 is blank: at most a newline token (ModernBERT's) is on it
    assert {-1, 10, 11, 13, 14, 15} <= set(lines.tolist()) <= {-1, 10, 11, 12, 13, 14, 15}
    text_lines = TEXT.split("\n")
    ids = [t for t in head.tokenize([TEXT], is_query=False)[0] if t not in head.skiplist]
    for token, line in zip(ids, lines.tolist()):  # each token's text is on its line
        if line >= 0:
            piece = head.tokenizer.decode([token]).strip().lower().removeprefix("##")
            assert piece in text_lines[line - 10].lower(), (piece, line)
    if which == "pylate":  # the skiplist's punctuation has no vector, and so no line
        assert len(lines) < len(head.tokenize([TEXT], is_query=False)[0])

    head.document_length = 12  # truncated as the head truncates: the text's last tokens go, [SEP] stays
    short = token_lines(head, TEXT, 10)
    assert len(short) == len(head.encode_documents([TEXT])[0]) and short[-1] == -1
    assert short.tolist()[:-1] == lines.tolist()[:len(short) - 1]


@needs_pylate
def test_pooled_tokens_are_not_mapped(pylate_head):
    pylate_head.pool_factor = 2  # cluster means: which tokens a vector stands for is not kept
    assert token_lines(pylate_head, TEXT) is None


@needs_pylate
def test_query_rows_are_the_query_words_only(pylate_head):
    rows = query_token_rows(pylate_head, "zebra stripes")
    ids = pylate_head.tokenize(["zebra stripes"], is_query=True)[0]
    assert len(ids) == pylate_head.query_length  # [CLS] [Q] words [SEP] [MASK]...
    assert rows.tolist() == list(range(2, 2 + len(pylate_head.tokenizer.encode(["zebra stripes"])[0]) - 2))


def test_align_takes_each_query_tokens_best_token_and_each_lines_best():
    scores = np.array([[0.9, 0.2, 0.4, 0.1, 0.0],
                       [0.0, 0.3, 0.1, 0.8, 0.2]], dtype=np.float32)
    lines = np.array([-1, 3, 3, 5, -1])
    alignment = align(scores, lines, first_line=3, last_line=6)
    assert alignment.argmax_line.tolist() == [-1, 5]  # query token 0 matched [CLS]: on no line
    assert np.allclose(alignment.argmax_score, [0.9, 0.8])
    assert np.allclose(alignment.line_scores[:, [0, 2]], [[0.4, 0.1], [0.3, 0.8]])
    assert np.isneginf(alignment.line_scores[:, [1, 3]]).all()
    assert alignment.mass(3, 4) == 0 and alignment.mass(5, 6) == pytest.approx(0.8)
    assert align(scores, lines[:4], 3, 6) is None  # vectors and lines that do not belong together


def aligned_at(lines: list[int], scores: list[float], first: int = 11, last: int = 310) -> Alignment:
    """Query token q matched only line lines[q] (-1: a token on no line), with cosine scores[q]."""
    line_scores = np.full((len(lines), last - first + 1), -np.inf, np.float32)
    for q, (line, score) in enumerate(zip(lines, scores)):
        if line >= 0:
            line_scores[q, line - first] = score
    return Alignment(first, line_scores, np.array(lines), np.array(scores, np.float32))


def test_a_semantic_hit_reports_where_its_query_tokens_matched():
    chunk, query = long_chunk(), "wait a moment before trying again"  # no term of the query in the chunk
    assert best_span(chunk, query) == (11, 11 + MAX_SPAN_LINES - 1)  # without alignment: the first lines
    assert best_span(chunk, query, aligned_at([211, 212, 212, 40], [0.7, 0.6, 0.5, 0.2])) == (210, 212)
    # matches outside any definition: the window holding the most mass, of at most MAX_SPAN_LINES lines
    start, end = best_span(chunk, query, aligned_at([150, 158, 290], [0.6, 0.5, 0.4]))
    assert start <= 150 and 158 <= end and end - start + 1 <= MAX_SPAN_LINES
    # only special tokens matched, or a dense index (no alignment): the first lines
    assert best_span(chunk, query, aligned_at([-1, -1], [0.9, 0.9])) == (11, 70)
    assert best_span(chunk, query, lambda: None) == (11, 70)


def test_alignment_comes_after_the_queried_definition_and_the_terms():
    chunk = long_chunk()

    def never() -> Alignment:
        raise AssertionError("the alignment is computed only when the rules before it leave the span open")

    assert best_span(chunk, "parse_header", never) == (110, 112)
    assert best_span(chunk, "exponential backoff schedule", never) == (210, 212)
    assert aligned_span(chunk, aligned_at([111], [0.5])) == (110, 112)  # definitions first among equals
    for by in ("maxsim", "mass"):  # two matches a window apart: the window holding both, not the definition
        assert aligned_span(chunk, aligned_at([111, 150], [0.5, 0.4]), by=by) == (91, 150)


def test_stored_scores_are_the_cosines_of_the_indexed_tokens(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(16, 32))
    docs = [centers[rng.integers(0, 16, n)] + 0.15 * rng.normal(size=(n, 32)) for n in (120, 90, 150)]
    docs = [(d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32) for d in docs]
    query = docs[2][[5, 70, 140]] + 0.05 * rng.normal(size=(3, 32)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    with PlaidIndex.create(tmp_path / "plaid", dim=32, nbits=4) as index:
        index.add(["a", "b"], docs[:2])
        index.add(["c"], docs[2:])  # a second segment
        got = stored_scores(index, query, ["c", "missing", "a"])
        assert got[1] is None
        for scores, doc in ((got[0], docs[2]), (got[2], docs[0])):
            exact = query @ doc.T
            assert scores.shape == exact.shape and np.abs(scores - exact).max() < 0.1
        assert got[0].argmax(axis=1).tolist() == [5, 70, 140]
        index.remove(["c"])
        assert stored_scores(index, query, ["c"]) == [None]


@needs_pylate
def test_retriever_reports_the_aligned_span_of_a_long_colbert_hit(tmp_path, monkeypatch):
    from retrieval.codebase.retriever import Retriever

    root = tmp_path / "tree"
    root.mkdir()
    for name, at in (("late.py", 250), ("early.py", 120)):  # the query's symbols only on these lines
        lines = [f"value_{i} = compute_total(items, {i})" if i % 5 == 0 else "" for i in range(1, 401)]
        lines[at - 1:at + 3] = ["# ∑ ∀", "# ⇒ ∂", "# ∮ ≈", "# ∇ ∞"]
        (root / name).write_text("\n".join(lines) + "\n")
    query = "∑ ⇒ ∮ ∇"  # one symbol of each line, no word: nothing for the terms rule, a purely semantic hit
    with Retriever(root, model=PYLATE_MODEL, kind="colbert", max_length=2048, show_progress=False) as retriever:
        retriever.index()
        hits = {h.path: h for h in retriever.search(query, k=2, mode="semantic")}
        assert set(hits) == {"late.py", "early.py"}
        for path, at in (("late.py", 250), ("early.py", 120)):
            hit = hits[path]
            assert (hit.chunk_start_line, hit.chunk_end_line) == (1, 400)  # one long chunk
            assert hit.start_line <= at and at + 3 <= hit.end_line <= hit.start_line + MAX_SPAN_LINES - 1
        monkeypatch.setattr(Retriever, "_alignment", lambda *args: None)  # alignment off: the first lines
        assert {(h.start_line, h.end_line) for h in retriever.search(query, k=2, mode="semantic")} == {(1, 60)}
