"""Code-aware ranking: rules applied to the fused candidates of a codebase search, each one switchable (``Rules``)
so that its effect is measured on its own (bench/code_search.py, the ablation table in the README).

Scores enter normalized to [0, 1] as a share of the best one (fused, BM25 and most cosine scores are positive; a
list holding a negative score is min-max normalized instead) and the rules move them by fixed amounts (with every rule off the candidates
keep their own scores and order):
- ``path_match``: a file whose stem the query names (or all of whose stem's parts it names) gets ``PATH_BONUS``;
- ``demote_tests``: tests, examples, benchmarks, generated and vendored files are multiplied by
  ``SECONDARY_FACTOR`` unless the query asks for one of those (names "test", "example", ..., or their plurals);
- ``definitions``: a chunk that defines a name the query asks for (an identifier-shaped query word, or a one-word
  query) gets ``DEFINITION_BONUS`` after the above, more than any other chunk's value can be (1 + ``PATH_BONUS``),
  so every definition of a queried name comes before every chunk that only uses it, whatever their scores; one in
  a demoted file (a test's helper, a vendored copy) gets ``SECONDARY_DEFINITION_BONUS`` instead, which puts it
  below the other definitions and still above the uses;
- ``per_file``: at most that many chunks of one file in the results (the rest follow, so a short list still fills);
  off by default (measured: README), ``mret search --per-file N``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath

from indexes import Document
from indexes.lexical import symbol_names, terms

PATH_BONUS = 0.1
SECONDARY_FACTOR = 0.75
SECONDARY_DEFINITION_BONUS = 2.0  # more than 1 + PATH_BONUS, the most a chunk has before the definition rule
DEFINITION_BONUS = 2 * SECONDARY_DEFINITION_BONUS  # a definition outside the demoted files: above those in them
SECONDARY_FOLDERS = frozenset({"test", "tests", "testing", "__tests__", "spec", "specs", "example", "examples",
                               "demo", "demos", "bench", "benches", "benchmarks", "vendor", "vendored", "third_party",
                               "thirdparty", "node_modules", "dist", "build", "generated", "__generated__", "fixtures"})
SECONDARY_FILE = re.compile(r"(^test_|_test\.|\.test\.|\.spec\.|_spec\.|\.min\.|_pb2\.|\.pb\.|\.generated\.|^conftest\.py$)")
ASKS_FOR_SECONDARY = frozenset({"test", "tests", "testing", "spec", "example", "examples", "demo", "bench",
                                "benchmark", "benches", "vendor", "vendored", "generated", "fixture", "fixtures",
                                "mock"})  # and plurals (asks_for_secondary)
IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*")


@dataclass(frozen=True)
class Rules:
    """Which code-aware rules a search applies (on by default but the per-file limit; ``Rules.off()`` for the bare
    fused ranking)."""

    definitions: bool = True
    demote_tests: bool = True
    path_match: bool = True
    per_file: int = 0  # 0: no limit (the default: a limit of 3 or 5 lost nDCG on the code benchmark's dev split)

    @classmethod
    def off(cls) -> "Rules":
        return cls(definitions=False, demote_tests=False, path_match=False, per_file=0)

    @property
    def any(self) -> bool:
        return self.definitions or self.demote_tests or self.path_match or self.per_file > 0


def queried_names(query: str) -> set[str]:
    """Lower-cased names the query asks for: identifier-shaped words (snake_case, camelCase, dotted: the last part
    too), or the query's only word."""
    words = IDENTIFIER.findall(query)
    names = set()
    for word in words:
        last = word.rsplit(".", 1)[-1]
        shaped = "_" in last or "." in word or re.search(r"[a-z][A-Z]|[A-Z]{2,}[a-z]|\d", last) is not None
        if shaped or len(words) == 1:
            names.add(last.lower())
    return names


@lru_cache(maxsize=1 << 16)  # a search checks up to 100 candidates' paths, and the same paths come back
def is_secondary(path: str) -> bool:
    """A test, example, benchmark, generated or vendored file (by its folders or its name)."""
    parts = PurePosixPath(path).parts
    return any(p.lower() in SECONDARY_FOLDERS for p in parts[:-1]) or SECONDARY_FILE.search(parts[-1].lower()) is not None


def rerank(query: str, candidates: Sequence[tuple[Document, float]], rules: Rules, k: int) -> list[tuple[Document, float]]:
    """The ``k`` best of ``candidates`` (documents with their fused scores, best first) after the rules."""
    if not rules.any:
        return list(candidates[:k])
    scores = [score for _, score in candidates]
    low, high = min(scores, default=0.0), max(scores, default=0.0)
    if low >= 0 and high > 0:  # RRF, BM25: a share of the best score
        low = 0.0
    names = queried_names(query) if rules.definitions else set()
    query_terms = set(terms(query))
    keep_secondary = asks_for_secondary(query_terms)
    scored = []
    for position, (doc, score) in enumerate(candidates):
        value = (score - low) / (high - low) if high > low else 1.0
        path = doc.source or ""
        if rules.path_match and path and _names_file(path, query_terms):
            value += PATH_BONUS
        demoted = rules.demote_tests and not keep_secondary and bool(path) and is_secondary(path)
        if demoted:
            value *= SECONDARY_FACTOR
        if names and names & {n.lower() for n in symbol_names(doc.metadata)}:
            value += SECONDARY_DEFINITION_BONUS if demoted else DEFINITION_BONUS
        scored.append((value, -position, doc))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    ranked = [(doc, value) for value, _, doc in scored]
    if rules.per_file > 0:
        ranked = _limit_per_file(ranked, rules.per_file)
    return ranked[:k]


def asks_for_secondary(query_terms: set[str]) -> bool:
    """Whether the query names tests, examples, benchmarks... ("test", "benchmarks", "mocks": a plural's "s" off)."""
    return any(t in ASKS_FOR_SECONDARY or t.endswith("s") and t[:-1] in ASKS_FOR_SECONDARY for t in query_terms)


def _names_file(path: str, query_terms: set[str]) -> bool:
    stem, parts = _stem_terms(path)
    return len(stem) >= 3 and (stem in query_terms or bool(parts) and parts <= query_terms)


@lru_cache(maxsize=1 << 16)
def _stem_terms(path: str) -> tuple[str, frozenset[str]]:
    """A file's stem and the parts of it (retry_policy: retry, policy)."""
    stem = PurePosixPath(path).name.split(".")[0].strip("_").lower()
    return stem, frozenset(terms(stem)) - {stem}


def _limit_per_file(ranked: list[tuple[Document, float]], limit: int) -> list[tuple[Document, float]]:
    seen: Counter[str] = Counter()
    first, rest = [], []
    for doc, value in ranked:
        source = doc.source or doc.doc_id
        seen[source] += 1
        (first if seen[source] <= limit else rest).append((doc, value))
    return first + rest
