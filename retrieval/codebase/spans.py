"""The span a hit reports: the best-matching part of a long chunk, not the whole of it.

A chunk is as long as the model allows (a whole source file for an 8192-token model), which is where long context
pays for encoding, but a person or an agent needs the function. A chunk of at most ``MAX_SPAN_LINES`` lines is its
own span; in a longer one the span is, in order:
1. the definition of a name the query asks for (ranking.queried_names), from its first line;
2. the definition or the window of ``MAX_SPAN_LINES`` lines holding the most distinct query terms (then the most
   matches, then the shortest): definitions first among equals, since a whole function reads better than a window;
3. with no query term in the chunk (a purely semantic hit): on a ColBERT index, the definition or window whose own
   MaxSim with the query is highest (alignment.py: each query word's token takes its most similar token among the
   candidate's lines; again definitions first among equals, then the shortest); else its first
   ``MAX_SPAN_LINES`` lines.
Spans are clipped to ``MAX_SPAN_LINES`` from their first line. Terms are compared after a light suffix strip
(``retries``/``retry``, ``configured``/``configure``), the lexical side's terms without its stemmer.

Alignment comes after the terms, and scores candidates by their MaxSim rather than by where each query token's
single best match lies (its "mass"), as measured by bench/span_alignment.py on the code benchmark's description
queries (whole files as hits, all-MiniLM-L6-v2's token states standing in for a ColBERT; README, "Hybrid search"):
the span holds the answer for 50.1% of long hits with the terms, 50.1% with MaxSim alone, 43% with the mass, 20%
with the first lines; the terms first need no decoding for most hits. On hits made semantic-only (the query's words
found in the file removed) that stand-in's alignment is no better than the first lines (27% and 26%): what a
trained ColBERT gives there is not measured yet.
"""

from __future__ import annotations

from collections.abc import Callable

from indexes import Document
from indexes.lexical import terms

from .alignment import Alignment
from .ranking import queried_names

MAX_SPAN_LINES = 60
WINDOW_STEP = 10


def best_span(doc: Document, query: str,
              alignment: Alignment | Callable[[], Alignment | None] | None = None) -> tuple[int, int]:
    """(first line, last line) of ``doc``'s best-matching part, 1-based and inclusive, in the file's numbering.
    ``alignment``: the query's MaxSim alignment with ``doc`` (ColBERT indexes), or a function that computes it,
    called only when the rules before it leave the span open (the Retriever's: it costs a decode of the hit)."""
    first, last = chunk_lines(doc)
    if last - first + 1 <= MAX_SPAN_LINES:
        return first, last
    span = queried_definition(doc, query) or lexical_span(doc, query)
    if span is None and alignment is not None:
        aligned = alignment() if callable(alignment) else alignment
        span = aligned_span(doc, aligned) if aligned is not None else None
    return span or (first, first + MAX_SPAN_LINES - 1)


def chunk_lines(doc: Document) -> tuple[int, int]:
    first = doc.start_line or 1
    return first, max(first, doc.end_line or first)


def queried_definition(doc: Document, query: str) -> tuple[int, int] | None:
    """The first line of the definition of a name the query asks for, and up to MAX_SPAN_LINES from it."""
    names = queried_names(query)
    for name, start, end in _definitions(doc, *chunk_lines(doc)):
        if name.lower() in names:
            return start, min(end, start + MAX_SPAN_LINES - 1)
    return None


def lexical_span(doc: Document, query: str,
                 tiebreak: Callable[[int, int], float] | None = None) -> tuple[int, int] | None:
    """The definition or window holding the most distinct query terms; None when the chunk holds none.
    ``tiebreak(start, end)``: a score that orders candidates with as many terms and matches (bench/span_alignment.py
    tries the alignment there)."""
    first, last = chunk_lines(doc)
    wanted = {_stem(t) for t in terms(query)}
    lines = (doc.text or "").split("\n")
    found = [{_stem(t) for t in terms(line)} & wanted for line in lines]
    best, best_key = None, (0, 0, 0.0, 0, 0)
    for start, end, is_definition in _candidates(doc, first, last):
        matched = found[start - first:end - first + 1]
        key = (len(set().union(*matched)), sum(len(m) for m in matched),
               round(tiebreak(start, end), 5) if tiebreak is not None else 0.0, is_definition, -(end - start))
        if key[0] and (best is None or key > best_key):
            best, best_key = (start, end), key
    return best


def aligned_span(doc: Document, alignment: Alignment, by: str = "maxsim") -> tuple[int, int] | None:
    """The definition or window with the highest MaxSim of the query against its lines alone (``by="mass"``: the
    most alignment mass, the variant the benchmark compares); None when nothing aligns."""
    first, last = chunk_lines(doc)
    score = alignment.window_maxsim if by == "maxsim" else alignment.mass
    best, best_key = None, (0.0, 0, 0)
    for start, end, is_definition in _candidates(doc, first, last):
        key = (round(score(start, end), 5), is_definition, -(end - start))
        if key[0] > 0 and (best is None or key > best_key):
            best, best_key = (start, end), key
    return best


def _candidates(doc: Document, first: int, last: int) -> list[tuple[int, int, int]]:
    """(start, end, is_definition): the chunk's definitions and its windows every WINDOW_STEP lines, clipped."""
    out = [(start, min(end, start + MAX_SPAN_LINES - 1), 1) for _, start, end in _definitions(doc, first, last)]
    return out + [(start, min(last, start + MAX_SPAN_LINES - 1), 0) for start in range(first, last + 1, WINDOW_STEP)]


def _definitions(doc: Document, first: int, last: int) -> list[tuple[str, int, int]]:
    """(name, start, end) of the definitions stored with the chunk (metadata "symbols"), within its lines."""
    out = []
    for item in doc.metadata.get("symbols") or ():
        if isinstance(item, (list, tuple)) and len(item) >= 4 and isinstance(item[2], int) and isinstance(item[3], int):
            start, end = max(first, item[2]), min(last, item[3])
            if start <= end:
                out.append((str(item[0]), start, end))
    return out


def _stem(term: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "y", "e"):
        if term.endswith(suffix) and len(term) - len(suffix) >= 3:
            return term[: -len(suffix)]
    return term
