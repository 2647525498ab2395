"""Fixtures of the serve tests: a tiny random dense model (the real tokenizer) and a small indexed tree (the standard
library's json package plus a few files). Servers are started by serving.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import TOKENIZER_DIR, copy_package, dense_model_folder

pytest.importorskip("fastapi", reason='pip install -e ".[serve]"')
MAX_LENGTH = 128
EXTRA_FILES = {
    "notes/retries.md": "# Retries\n\nHTTP retries are configured in the client with a backoff of two seconds.\n",
    "src/cache.py": "def cached(function):\n    \"\"\"Remember the results of function by its arguments.\"\"\"\n"
                    "    memo = {}\n    return lambda *a: memo.setdefault(a, function(*a))\n",
}


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"the ModernBERT tokenizer is not at {TOKENIZER_DIR} (../shared is missing)")
    return dense_model_folder(tmp_path_factory.mktemp("dense") / "model")


def make_tree(root: Path) -> Path:
    import json as json_package

    copy_package(json_package, root / "json")
    for relative, text in EXTRA_FILES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


@pytest.fixture(scope="session")
def indexed_tree(tmp_path_factory, model_dir) -> Path:
    """A tree indexed once for the session (tests that change files make their own)."""
    from retrieval.codebase.retriever import Retriever

    root = make_tree(tmp_path_factory.mktemp("tree"))
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
    return root
