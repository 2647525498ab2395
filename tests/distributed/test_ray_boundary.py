"""Ray stays an extra: only retrieval/distributed imports it, and without it the package says which extra to
install (one line, a ModernRetrievalError) instead of failing on import."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from modernretrieval.errors import ModernRetrievalError

ROOT = Path(__file__).resolve().parents[2]


def test_only_the_distributed_package_imports_ray():
    found = []
    for package in ("modernretrieval", "encoder", "indexes", "eval", "retrieval"):
        for path in (ROOT / package).rglob("*.py"):
            if (ROOT / "retrieval" / "distributed") in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "ray"]
    assert not found, found


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    from retrieval.distributed import RayUnavailableError, connect

    with pytest.raises(RayUnavailableError, match=r'pip install -e "\.\[distributed\]"') as error:
        connect("local")
    assert isinstance(error.value, ModernRetrievalError)
