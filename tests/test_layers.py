"""The architecture, checked: every module imports only its own layer and the layers below it (README,
"Architecture"). Function-level imports count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modernretrieval", "encoder", "indexes", "eval", "retrieval")

# module prefix -> layer (the longest prefix wins)
LAYER_OF = {
    "modernretrieval": "foundation",
    "encoder": "encoder",
    "indexes": "indexes",
    "eval.datasets": "datasets",
    "retrieval.scoring": "scoring",
    "retrieval.fusion": "scoring",  # fusing rankings: pure arithmetic over (id, score) lists, beside MaxSim
    "retrieval.kinds": "scoring",  # the kinds of model: constants the command line reads without torch
    "retrieval.heads": "heads",
    "retrieval.encoding": "pipeline",
    "retrieval.codebase": "codebase",
    "retrieval.training": "training",
    "retrieval.serve": "serve",
    "retrieval.distributed": "distributed",  # Ray: the only package that imports it
    "eval": "harness",
    "retrieval.cli": "cli",
    "retrieval": "facade",  # retrieval/__init__.py: the public names, re-exported
}
BOTTOM = {"foundation"}
ALLOWED = {
    "foundation": set(),
    "encoder": BOTTOM,
    "indexes": BOTTOM,
    "datasets": BOTTOM,
    "scoring": BOTTOM,
    "heads": BOTTOM | {"encoder", "scoring"},
    "pipeline": BOTTOM | {"encoder", "scoring", "heads"},
    "codebase": BOTTOM | {"encoder", "scoring", "heads", "pipeline", "indexes"},
    "training": BOTTOM | {"encoder", "scoring", "heads", "pipeline", "indexes", "datasets"},
    "harness": BOTTOM | {"encoder", "scoring", "heads", "pipeline", "indexes", "datasets"},
    "serve": BOTTOM | {"encoder", "scoring", "heads", "pipeline", "indexes", "codebase"},
    "distributed": BOTTOM | {"encoder", "scoring", "heads", "pipeline", "indexes", "datasets"},
    "facade": {"heads", "scoring", "codebase"},
    "cli": set(LAYER_OF.values()),
}


def layer_of(module: str) -> str | None:
    matches = [prefix for prefix in LAYER_OF if module == prefix or module.startswith(prefix + ".")]
    return LAYER_OF[max(matches, key=len)] if matches else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module of ours that ``source`` imports, relative imports resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from retrieval.heads import dense" imports retrieval.heads.dense when it is a module
            found.update(f"{base}.{alias.name}" if (ROOT / Path(*f"{base}.{alias.name}".split("."))).with_suffix(
                ".py").exists() or (ROOT / Path(*f"{base}.{alias.name}".split("."))).is_dir() else base
                for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def violations(source: str, module: str, is_package: bool) -> list[str]:
    layer = layer_of(module)
    out = []
    for target in sorted(imported_modules(source, module, is_package)):
        target_layer = layer_of(target)
        if target_layer is None or target_layer == layer:
            continue
        if target_layer not in ALLOWED[layer]:
            out.append(f"{module} ({layer}) imports {target} ({target_layer})")
    return out


def project_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_module_has_a_layer():
    assert project_modules(), "no package found"
    assert all(layer_of(module_name(p)) for p in project_modules())


def test_each_layer_imports_only_the_layers_below_it():
    found = []
    for path in project_modules():
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module,source", [
    ("encoder.model", "from retrieval.heads import BiEncoder"),
    ("indexes.base", "def f():\n    import eval.runner\n"),
    ("eval.datasets.beir", "from eval.runner import run_eval"),
    ("retrieval.heads.dense", "from ..codebase import Retriever"),
    ("retrieval.training.trainer", "from eval.runner import evaluate_head"),
    ("eval.runner", "from retrieval.codebase.retriever import Retriever"),
    ("retrieval.codebase.retriever", "from ..cli.console import err"),
])
def test_the_check_catches_an_upward_import(module, source):
    assert violations(source, module, False)


def test_the_check_lets_downward_imports_through():
    assert not violations("from indexes import FaissIndex\nfrom ..heads import Head\n",
                          "retrieval.codebase.retriever", False)
    assert not violations("from .colbert import ColBERT\nfrom ..scoring import maxsim\n", "retrieval.heads", True)
