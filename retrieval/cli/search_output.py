"""How ``mret search`` prints its hits, in the standard library only: the warm path (fast.py) prints them before
typer or rich is imported, and the full command prints them with the same functions, so the two never differ.

Plain text when the output is not a terminal (or NO_COLOR is set, or TERM is dumb): ``path:start-end  score``, then
the snippet's numbered lines; on a terminal the path, score, line numbers and the query's words are coloured."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ..codebase.snippets import WORD, query_terms
from ..serve.warm import json_score  # (standard library only, as this module)

PATH, SCORE, NUMBER, TERM, RESET = "\x1b[1;36m", "\x1b[32m", "\x1b[2m", "\x1b[1;33m", "\x1b[0m"
# a hit: codebase.retriever.Hit, or serve.warm.RemoteHit (path, start_line, end_line, score, snippet, snippet_line,
# text; chunk_start_line/chunk_end_line for --full, which only a Hit has; to_json())
Hits = Sequence[Any]


def use_color(stream: TextIO) -> bool:
    """As rich decides: a terminal, unless NO_COLOR is set or TERM is dumb (FORCE_COLOR forces a terminal, but
    NO_COLOR and TERM=dumb still win over it)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return hasattr(stream, "isatty") and stream.isatty()


def hits_as_json(hits: Hits) -> str:
    """Strict JSON: a score that is not a finite number is null (``json_score``), as the HTTP API's /search has it."""
    rows = [{**row, "score": json_score(row["score"])} for row in (hit.to_json() for hit in hits)]
    return json.dumps(rows, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def hits_as_text(hits: Hits, query: str, color: bool, full: bool = False) -> str:
    """Each hit's location and score, then its snippet (``full``: its whole chunk, from the chunk's first line)."""
    terms = query_terms(query)

    def paint(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if color else text

    def highlighted(line: str) -> str:
        if not color:
            return line
        out, position = [], 0
        for match in WORD.finditer(line):
            if match.group().lower() in terms:
                out.append(line[position:match.start()] + paint(TERM, match.group()))
                position = match.end()
        return "".join(out) + line[position:]

    out = []
    for hit in hits:
        first, last = (hit.chunk_start_line, hit.chunk_end_line) if full else (hit.start_line, hit.end_line)  # type: ignore[attr-defined]
        out.append(f"{paint(PATH, hit.path)}:{first}-{last}  {paint(SCORE, f'{hit.score:.4f}')}")
        lines = hit.text.split("\n")[:last - first + 1] if full else hit.snippet.split("\n")
        for number, line in enumerate(lines, start=first if full else hit.snippet_line):
            out.append(f"  {paint(NUMBER, f'{number:>5}')}  {highlighted(line)}")
    return "".join(line + "\n" for line in out)


def print_hits(hits: Hits, query: str, as_json: bool, full: bool = False) -> None:
    if as_json:
        sys.stdout.write(hits_as_json(hits))
    elif not hits:
        sys.stderr.write("no results\n")
    else:
        sys.stdout.write(hits_as_text(hits, query, use_color(sys.stdout), full))
    sys.stdout.flush()
