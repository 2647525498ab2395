"""Short snippets for search results: the few lines of a chunk that share the most words with the query."""

from __future__ import annotations

import re
import textwrap

WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")  # splits snake_case and camelCase identifiers too
STOPWORDS = frozenset("the and for with that this from into are was were how what which when where who why does "
                      "not you your can will has have had all any its use using get set".split())
MAX_LINE = 160


def query_terms(query: str) -> set[str]:
    return {w.lower() for w in WORD.findall(query) if len(w) >= 3 and w.lower() not in STOPWORDS}


def best_lines(text: str, terms: set[str], width: int = 3) -> tuple[int, list[str]]:
    """(offset of the first line within ``text``, up to ``width`` lines): the window matching most distinct query
    terms (then most matches); the first non-blank lines when nothing matches."""
    # "\n" only, as chunk line numbers count (not \f, U+2028, ...); a CRLF file's "\r" is not part of the line
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    words = [[w.lower() for w in WORD.findall(line)] for line in lines]
    best, best_score = None, (0, 0)
    for start in range(len(lines)):
        window = [w for ws in words[start:start + width] for w in ws if w in terms]
        score = (len(set(window)), len(window))
        if score > best_score:
            best, best_score = start, score
    if best is None:
        best = next((i for i, line in enumerate(lines) if line.strip()), 0)
    chosen = [line[:MAX_LINE] for line in lines[best:best + width]]
    while chosen and not chosen[0].strip():
        chosen.pop(0)
        best += 1
    while chosen and not chosen[-1].strip():
        chosen.pop()
    return best, textwrap.dedent("\n".join(chosen)).split("\n") if chosen else []
