"""Known-answer queries over a source tree, for checking `mret index` + `mret search` end to end on real code.

Each query is the first sentence of a function's or class's docstring; its answer is the file that defines it
(sentences found in more than one file are dropped: they have no single answer). ``strip_docstrings`` copies a tree
with every docstring removed, so that the query's words are not in the index: natural language against code alone.
"""

from __future__ import annotations

import ast
import random
import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .docstrings import strip_file

SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True)
class KnownQuery:
    query: str
    path: str  # the answer: the defining file, relative to the root
    name: str  # the function or class it documents


def docstring_queries(root: Path, n: int | None = None, seed: int = 0, min_words: int = 5) -> list[KnownQuery]:
    """Up to ``n`` queries (all when None), sampled with ``seed``, from the .py files under ``root``."""
    found: dict[str, list[KnownQuery]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        tree = _parse(path)
        if tree is None:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or node.name.startswith("_"):
                continue
            sentence = SENTENCE_END.split(" ".join(doc.split("\n\n")[0].split()))[0].strip()
            if len(sentence.split()) >= min_words:
                found[sentence].append(KnownQuery(sentence, path.relative_to(root).as_posix(), node.name))
    queries = [hits[0] for hits in found.values() if len({q.path for q in hits}) == 1]
    random.Random(seed).shuffle(queries)
    return queries[:n] if n is not None else queries


def strip_docstrings(source: Path, target: Path) -> int:
    """Copy the tree at ``source`` to ``target`` with the docstrings of every module, class and function removed
    (``docstrings.strip_file``: a body left empty gets ``pass``). Returns the docstrings removed."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    removed = 0
    for path in sorted(target.rglob("*.py")):
        try:
            stripped, count = strip_file(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # left as copied
        removed += count
        path.write_text(stripped, encoding="utf-8")
    return removed


def hit_at_k(retriever: Any, queries: Sequence[KnownQuery], k: int = 5) -> float:
    """Share of queries whose answer file is among the files of the top ``k`` chunks."""
    if not queries:
        raise ValueError("no queries")
    hits = 0
    for query in queries:
        paths = {hit.path for hit in retriever.search(query.query, k=k)}
        hits += query.path in paths
    return hits / len(queries)


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
