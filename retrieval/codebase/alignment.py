"""ColBERT's token-level alignment of a query with a hit: which lines of a long chunk the query's tokens matched.

MaxSim scores a chunk by giving each query token its most similar document token; those document tokens are where
the chunk answers the query, a signal no lexical rule has for a purely semantic hit. For the k reported hits of a
ColBERT (PLAID) index this module gives, per query token and per line of the chunk, the best cosine of the query
token with a token of that line (``Alignment``), from which spans.py chooses the span.

Where the document side comes from: the index's own stored tokens (centroid codes and residuals), scored against
the query exactly as PLAID's last stage scores them (``ResidualCodec.scores``): nothing is re-encoded, and the cost
per search is one decode of the hits' tokens (a table lookup per byte) and one (query tokens x chunk tokens) product
each, plus one tokenization of each chunk's text for the token -> line map (the larger part: bench/
span_alignment.py --cost). It is computed only for long hits that the lexical rules leave open (spans.py).

The map (``token_lines``) repeats what the head does to a document, with character offsets kept: the text stripped
of edge whitespace and lower-cased when the head does so, [CLS] [D] text [SEP] truncated at the document length,
skiplist (punctuation) tokens dropped. Special and marker tokens sit on no line (-1). Its token count is checked
against the stored vectors': a difference (a text re-indexed since the search) gives no alignment rather than a
wrong one (tests/retrieval/test_spans_alignment.py checks the map against the head's vectors and tokenizer). A
head that pools documents' tokens (pool_factor > 1) stores cluster means whose members are not recorded, so its
vectors cannot be mapped to lines: no alignment (spans.py then keeps its lexical rules; re-encoding an 8,192-token
chunk per hit would cost more than the search).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from indexes import Document, PlaidIndex

if TYPE_CHECKING:  # (the head's module loads torch: spans.py, which imports this one, does not need it)
    from ..heads.colbert import ColBERT


@dataclass(frozen=True)
class Alignment:
    """``line_scores[q, i]``: the best cosine of query token q with a token on line ``first_line + i`` (-inf: a line
    without tokens). ``argmax_line[q]``: the line (file numbering) of query token q's MaxSim token, -1 when that token
    is on no line ([CLS], [D], [SEP]); ``argmax_score[q]``: its cosine."""

    first_line: int
    line_scores: np.ndarray  # (n_query_tokens, n_lines) float32
    argmax_line: np.ndarray  # (n_query_tokens,) int64
    argmax_score: np.ndarray  # (n_query_tokens,) float32

    def mass(self, start: int, end: int) -> float:
        """The alignment mass of lines start..end: the summed (positive) MaxSim cosines of the query tokens whose
        best document token lies there."""
        inside = (self.argmax_line >= start) & (self.argmax_line <= end)
        return float(np.clip(self.argmax_score[inside], 0, None).sum())

    def window_maxsim(self, start: int, end: int) -> float:
        """MaxSim of the query against lines start..end alone (each query token's best token in them)."""
        a, b = max(start - self.first_line, 0), max(end - self.first_line + 1, 0)
        part = self.line_scores[:, a:b]
        if part.shape[1] == 0:
            return 0.0
        best = part.max(axis=1)
        return float(np.where(np.isfinite(best), best, 0).sum())


def token_lines(head: ColBERT, text: str, first_line: int = 1) -> np.ndarray | None:
    """The line (in the file's numbering, the chunk starting at ``first_line``) of each vector ``head`` makes of the
    document ``text``, -1 for the special and marker tokens; None when the head's vectors cannot be mapped to lines
    (not a ColBERT head, or pooled tokens)."""
    if getattr(head, "kind", None) != "colbert" or head.pool_factor != 1:
        return None
    backend = head.tokenizer.backend
    lead = len(text) - len(text.lstrip()) if head.strip else 0
    body = text.strip() if head.strip else text
    if head.spec.do_lower_case:
        lowered = body.lower()
        if len(lowered) != len(body):  # offsets would shift (a few Unicode letters)
            return None
        body = lowered
    encoding = backend.encode(body, add_special_tokens=True)
    ids, offsets, sequence = list(encoding.ids), list(encoding.offsets), list(encoding.sequence_ids)
    prefix = head.document_prefix_id
    limit = head.document_length - (prefix is not None)  # the head's length is used as given (encoder.tokenizer)
    if len(ids) > limit:  # as encoder.tokenizer._truncated: the text's last tokens go, the special ones stay
        start = sequence.index(0)
        end = len(sequence) - sequence[::-1].index(0)
        room = limit - (len(ids) - (end - start))
        keep = list(range(start + room)) + list(range(end, len(ids)))
        ids, offsets, sequence = [ids[i] for i in keep], [offsets[i] for i in keep], [sequence[i] for i in keep]
    positions = [offset[0] + lead if s == 0 else -1 for offset, s in zip(offsets, sequence)]
    if prefix is not None:
        ids, positions = ids[:1] + [prefix] + ids[1:], positions[:1] + [-1] + positions[1:]
    skiplist = head.skiplist
    kept = np.array([p for token, p in zip(ids, positions) if token not in skiplist], dtype=np.int64)
    starts = np.array([0] + [m.end() for m in re.finditer("\n", text)], dtype=np.int64)  # each line's first char
    return np.where(kept >= 0, first_line + np.searchsorted(starts, kept, side="right") - 1, -1)


def align(scores: np.ndarray, lines: np.ndarray, first_line: int, last_line: int) -> Alignment | None:
    """``scores`` (query tokens x document vectors, cosines) and each vector's line -> the Alignment; None when
    they do not belong together (counts differ)."""
    if scores.ndim != 2 or scores.shape[1] != len(lines) or not len(lines):
        return None
    n_lines = last_line - first_line + 1
    line_scores = np.full((scores.shape[0], n_lines), -np.inf, dtype=np.float32)
    on = (lines >= first_line) & (lines <= last_line)
    index = lines[on] - first_line
    if len(index):
        # max over the tokens of each line: tokens in line order, so one reduceat over the runs of a line
        order = np.argsort(index, kind="stable")
        index, part = index[order], scores[:, on][:, order]
        bounds = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
        line_scores[:, index[bounds]] = np.maximum.reduceat(part, bounds, axis=1)
    best = scores.argmax(axis=1)
    return Alignment(first_line, line_scores, np.where(lines[best] >= first_line, lines[best], -1),
                     scores[np.arange(len(best)), best].astype(np.float32))


def stored_scores(index: PlaidIndex, query: np.ndarray, doc_ids: Sequence[str]) -> list[np.ndarray | None]:
    """For each document id, the cosines (query tokens x the document's stored vectors) as the index's last search
    stage computes them (``PlaidIndex.token_scores``); None for a document no longer in the index."""
    return index.token_scores(query, doc_ids)


def query_token_rows(head: ColBERT, query: str) -> np.ndarray:
    """The rows of ``head.encode_queries([query])[0]`` that are the query's own tokens: not [CLS], the [Q] marker,
    [SEP] or the [MASK] expansion: those match by context rather than by what the query says, so where they land
    says little about where its words were matched (on the benchmark's MiniLM stand-in, which has no expansion,
    keeping [CLS] and [SEP] changed nothing: 0.499 against 0.501, bench/span_alignment.py)."""
    tokenizer = head.tokenizer
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id,
               head.query_prefix_id} - {None}
    ids = head.tokenize([query], is_query=True)[0]
    return np.array([i for i, token in enumerate(ids) if token not in special], dtype=np.int64)


def hit_alignment(index: PlaidIndex, head: ColBERT, query: str, encoded: np.ndarray,
                  doc: Document) -> Alignment | None:
    """The alignment of ``query`` (``encoded``: its (n_tokens, dim) vectors) with a hit of ``index``, from the vectors
    the index stores for it; None when they cannot be mapped to its lines (see ``token_lines``)."""
    first = doc.start_line or 1
    last = max(first, doc.end_line or first)
    rows = query_token_rows(head, query)
    lines = token_lines(head, doc.text or "", first)
    if lines is None or not len(rows) or rows[-1] >= len(encoded):
        return None
    scores = stored_scores(index, np.asarray(encoded)[rows], [doc.doc_id])[0]
    return align(scores, lines, first, last) if scores is not None else None
