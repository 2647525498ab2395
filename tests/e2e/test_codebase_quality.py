"""End to end on real code with real weights: index the stdlib's ``email`` package with all-MiniLM-L6-v2 and find
functions from their docstrings' first sentences (bench/codebase_quality.py prints the full figures)."""

from __future__ import annotations

import email
import shutil
from pathlib import Path

from eval.datasets.codebase import docstring_queries, hit_at_k, strip_docstrings
from retrieval.codebase.retriever import Retriever

EMAIL = Path(email.__file__).parent


def test_docstring_queries_have_one_answer_file_each(tmp_path):
    shutil.copytree(EMAIL, tmp_path / "email", ignore=shutil.ignore_patterns("__pycache__"))
    queries = docstring_queries(tmp_path)
    assert len(queries) > 100
    for query in queries[:50]:
        assert query.query.split()[0] in (tmp_path / query.path).read_text(encoding="utf-8")


def test_stripped_copy_has_no_docstrings_and_still_compiles(tmp_path):
    removed = strip_docstrings(EMAIL, tmp_path / "email")
    assert removed > 100
    assert docstring_queries(tmp_path, min_words=1) == []
    for path in (tmp_path / "email").rglob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_minilm_finds_functions_from_their_docstrings_without_docstrings_in_the_index(tmp_path, minilm_folder):
    """Queries are docstring sentences; the index holds the code with every docstring removed. MiniLM measured
    hit@5 0.75 on these 40 queries (random ranking: about 0.15: 29 files, 5 chunks)."""
    shutil.copytree(EMAIL, tmp_path / "plain" / "email", ignore=shutil.ignore_patterns("__pycache__"))
    strip_docstrings(EMAIL, tmp_path / "stripped" / "email")
    queries = docstring_queries(tmp_path / "plain", n=40)
    with Retriever(tmp_path / "stripped", model=minilm_folder, kind="dense", show_progress=False) as retriever:
        retriever.index()
        hit5 = hit_at_k(retriever, queries, 5)
    print(f"hit@5 = {hit5:.3f}")
    assert hit5 >= 0.6
