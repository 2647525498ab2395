"""Chunks that use the long context: a text that fits the model's budget is one chunk; a longer one becomes windows
of whole lines that overlap a little and prefer to end before a definition (code) or a heading or blank line (prose).

Token counts come from one tokenization of the whole text (offsets map each token to its line), so chunking a file
costs one pass of the fast tokenizer. A line longer than the whole budget (minified code, a table row) is cut into
pieces on token boundaries; its pieces keep the line's number.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from tokenizers import Tokenizer as HFTokenizer

OVERLAP_FRACTION = 1 / 8  # of the budget, carried from the end of one window to the start of the next
MIN_FILL = 1 / 2  # a window ends at a preferred boundary only if that keeps it at least this full
CODE_BOUNDARY = re.compile(
    r"^\s{0,4}(?:@\w|(?:export\s+|pub(?:\(\w+\))?\s+|public\s+|private\s+|static\s+|async\s+)*"
    r"(?:def|class|function|func|fn|impl|struct|enum|interface|trait|module|package|namespace)\b)")
PROSE_BOUNDARY = re.compile(r"^(?:#{1,6}\s|\.\. |\f|[=\-~^]{3,}\s*$)")


@dataclass(frozen=True)
class Chunk:
    text: str
    start_line: int  # 1-based, inclusive
    end_line: int
    tokens: int  # tokens of the text, without the model's special tokens


@dataclass(frozen=True)
class _Unit:
    """A line (or a piece of an over-long line) with its token count."""

    line: int
    text: str
    tokens: int
    boundary: int  # 2: a definition or heading starts here; 1: follows a blank line; 0: neither


def chunk_text(text: str, tokenizer: HFTokenizer, budget: int, code: bool) -> list[Chunk]:
    """``text`` in chunks of at most ``budget`` tokens each (as counted in the whole text's tokenization)."""
    if budget < 16:
        raise ValueError(f"a chunk budget of {budget} tokens is too small (at least 16)")
    units = _units(text, tokenizer, budget, code)
    total = sum(u.tokens for u in units)
    if total <= budget:
        return [Chunk(text, 1, max(1, units[-1].line if units else 1), total)]
    prefix = [0]
    for unit in units:
        prefix.append(prefix[-1] + unit.tokens)
    chunks, start, overlap = [], 0, int(budget * OVERLAP_FRACTION)
    while True:
        end = bisect.bisect_right(prefix, prefix[start] + budget) - 1  # furthest end that fits
        end = max(end, start + 1)
        if end >= len(units):
            chunks.append(_chunk(units, start, len(units), prefix))
            return chunks
        end = _best_break(units, prefix, start, end, budget)
        chunks.append(_chunk(units, start, end, prefix))
        # no more overlap than lets the next window reach past this one (else it would repeat a part of it)
        start = _next_start(units, prefix, start, end, min(overlap, budget - units[end].tokens))


def _best_break(units: list[_Unit], prefix: list[int], start: int, end: int, budget: int) -> int:
    """The window [start, end) ends before the last definition/heading that keeps it MIN_FILL full, else after the
    last blank line, else where the budget runs out."""
    floor = prefix[start] + budget * MIN_FILL
    for strength in (2, 1):
        for b in range(end, start, -1):
            if prefix[b] < floor:
                break
            if units[b].boundary >= strength:
                return b
    return end


def _next_start(units: list[_Unit], prefix: list[int], start: int, end: int, overlap: int) -> int:
    """Back up from ``end`` by about ``overlap`` tokens, to a boundary inside that overlap when there is one."""
    s = bisect.bisect_left(prefix, prefix[end] - overlap, lo=start + 1, hi=end)
    for b in range(s, end):
        if units[b].boundary:
            return b
    return max(s, start + 1)


def _chunk(units: list[_Unit], start: int, end: int, prefix: list[int]) -> Chunk:
    parts = units[start:end]
    return Chunk("".join(u.text for u in parts), parts[0].line, parts[-1].line, prefix[end] - prefix[start])


def _units(text: str, tokenizer: HFTokenizer, budget: int, code: bool) -> list[_Unit]:
    # lines end at "\n" only, as editors and grep -n count them (str.splitlines also breaks at \f, \v, U+2028...)
    lines = [line for line in re.split(r"(?<=\n)", text) if line]
    starts, position = [], 0
    for line in lines:
        starts.append(position)
        position += len(line)
    counts = [0] * len(lines)
    token_starts: list[list[int]] = [[] for _ in lines]
    for begin, _ in tokenizer.encode(text, add_special_tokens=False).offsets:
        line = bisect.bisect_right(starts, begin) - 1
        counts[line] += 1
        token_starts[line].append(begin - starts[line])
    pattern = CODE_BOUNDARY if code else PROSE_BOUNDARY
    units, blank_before, decorated = [], False, False
    for number, (line, count) in enumerate(zip(lines, counts), start=1):
        # a definition under a decorator starts at the decorator
        boundary = 2 if pattern.match(line) and not decorated else int(blank_before and not decorated)
        decorated = code and line.lstrip().startswith("@")
        if count <= budget:
            units.append(_Unit(number, line, count, boundary))
        else:  # an over-long line: pieces of ``budget`` tokens, cut where a token starts
            cuts = token_starts[number - 1][::budget] + [len(line)]
            cuts[0] = 0
            for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
                units.append(_Unit(number, line[a:b], min(budget, count - i * budget), boundary if i == 0 else 0))
        blank_before = not line.strip()
    return units
