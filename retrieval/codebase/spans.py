"""The span a hit reports: the best-matching part of a long chunk, not the whole of it.

A chunk is as long as the model allows (a whole source file for an 8192-token model), which is where long context
pays for encoding, but a person or an agent needs the function. A chunk of at most ``MAX_SPAN_LINES`` lines is its
own span; in a longer one the span is, in order:
1. the definition of a name the query asks for (ranking.queried_names), from its first line;
2. the definition or the window of ``MAX_SPAN_LINES`` lines holding the most distinct query terms (then the most
   matches, then the shortest): definitions first among equals, since a whole function reads better than a window;
3. with no query term in the chunk (a purely semantic hit), its first ``MAX_SPAN_LINES`` lines.
Spans are clipped to ``MAX_SPAN_LINES`` from their first line. Terms are compared after a light suffix strip
(``retries``/``retry``, ``configured``/``configure``), the lexical side's terms without its stemmer.
"""

from __future__ import annotations

from indexes import Document
from indexes.lexical import terms

from .ranking import queried_names

MAX_SPAN_LINES = 60
WINDOW_STEP = 10


def best_span(doc: Document, query: str) -> tuple[int, int]:
    """(first line, last line) of ``doc``'s best-matching part, 1-based and inclusive, in the file's numbering."""
    first = doc.start_line or 1
    last = max(first, doc.end_line or first)
    if last - first + 1 <= MAX_SPAN_LINES:
        return first, last
    definitions = _definitions(doc, first, last)
    names = queried_names(query)
    for name, start, end in definitions:
        if name.lower() in names:
            return start, min(end, start + MAX_SPAN_LINES - 1)
    wanted = {_stem(t) for t in terms(query)}
    lines = (doc.text or "").split("\n")
    found = [{_stem(t) for t in terms(line)} & wanted for line in lines]
    best, best_key = None, (0, 0, 0, 0)
    candidates = [(start, min(end, start + MAX_SPAN_LINES - 1), 1) for _, start, end in definitions]
    candidates += [(start, min(last, start + MAX_SPAN_LINES - 1), 0) for start in range(first, last + 1, WINDOW_STEP)]
    for start, end, is_definition in candidates:
        matched = found[start - first:end - first + 1]
        key = (len(set().union(*matched)), sum(len(m) for m in matched), is_definition, -(end - start))
        if key[0] and (best is None or key > best_key):
            best, best_key = (start, end), key
    return best if best is not None else (first, first + MAX_SPAN_LINES - 1)


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
