"""A CodeSearchNet-style Python set built offline from installed sources (by default the standard library), for
when the real CodeSearchNet cannot be downloaded.

As in CodeSearchNet, a query is the first paragraph of a function's docstring and its one relevant document is that
function's code with the docstring cut out (left in, it would give the answer away). The split follows the
top-level module or package (CodeSearchNet splits by repository), taken in a stable hash order so that every
build on the same sources gives the same split. Unlike CodeSearchNet, whose corpus is each split's own functions, the
corpus here holds the functions of both splits: a test query is searched against every function, which is harder
than CodeSearchNet's per-split corpus."""

from __future__ import annotations

import ast
import hashlib
import platform
import re
import sysconfig
import tokenize
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .beir import write_beir
from .docstrings import function_lines_without_docstring

EXCLUDED_FOLDERS = {"test", "tests", "testing", "idle_test", "__pycache__", "site-packages"}
KEPT_DUNDERS = {"__init__", "__call__"}
MAX_DOCUMENT_CHARS = 20_000
MIN_QUERY_WORDS = 4
MIN_CODE_LINES = 3
CONSTRUCTION = (
    "Every function and method (not functions nested in functions) with a docstring; query = the docstring's first "
    "paragraph (inspect.cleandoc, whitespace collapsed); document = the function's source with decorators, the "
    "docstring's lines removed, dedented to column 0. Skipped: test files and test* functions, dunders other than "
    "__init__/__call__, queries under 4 words, signature-like queries (name followed by '('), queries starting "
    "'Deprecated' or 'See ', fewer than 3 non-blank non-comment code lines or a body of only pass/.../raise "
    "NotImplementedError, documents over 20000 chars, every function whose normalized query occurs more than once, "
    "repeated documents after the first. Split by top-level module: in sha256 order of the names, a module joins test "
    "when that brings test closer to test_fraction of the functions. The corpus holds both splits.")


@dataclass
class Function:
    doc_id: str
    top_level: str  # the top-level module or package: the unit of the split
    query: str
    document: str
    skip: str | None  # why it is left out, None when kept


def default_sources() -> list[Path]:
    """The standard library of the running Python: installed everywhere, so the set can always be built."""
    return [Path(sysconfig.get_paths()["stdlib"])]


def build_code_dataset(output: Path, sources: list[Path] | None = None, *, test_fraction: float = 0.2,
                       show_progress: bool = False) -> dict:
    """Build the set from ``sources`` (folders or single .py files; the standard library when None) and write it
    to ``output`` in the BEIR layout (splits train and test). Returns the info written to dataset.json.

    A folder that is a package (it has ``__init__.py``) is named from its parent, so ``.../json`` gives modules
    ``json.decoder``; any other folder is the root of its modules. Doc ids are ``module.qualname`` (``#2``, ``#3``
    for a name defined again, in source order) and query ids ``q:`` + doc id."""
    sources = [Path(s) for s in (sources if sources is not None else default_sources())]
    files = [(root, path) for source in sources for root, path in _python_files(source)]
    functions: list[Function] = []
    failed_files = 0
    seen_ids: Counter[str] = Counter()
    for root, path in tqdm(files, desc="parsing", disable=not show_progress):
        parsed = _parse(path)
        if parsed is None:
            failed_files += 1
            continue
        source, tree = parsed
        module = _module_name(root, path)
        for qualname, node in _functions(tree.body, ""):
            dotted = f"{module}.{qualname}"
            seen_ids[dotted] += 1
            doc_id = dotted if seen_ids[dotted] == 1 else f"{dotted}#{seen_ids[dotted]}"
            functions.append(_describe(doc_id, module.split(".")[0], _is_test_file(path), node, source))

    _mark_duplicates(functions)
    with_docstring = [f for f in functions if f.skip != "no_docstring"]
    kept = [f for f in functions if f.skip is None]

    test_modules = _test_modules(Counter(f.top_level for f in kept), test_fraction)
    qrels: dict[str, dict[str, dict[str, int]]] = {"train": {}, "test": {}}
    for function in kept:
        split = "test" if function.top_level in test_modules else "train"
        qrels[split][f"q:{function.doc_id}"] = {function.doc_id: 1}
    corpus = {f.doc_id: {"title": "", "text": f.document} for f in kept}
    queries = {f"q:{f.doc_id}": f.query for f in kept}
    info = {
        "name": "pycode-" + ".".join(platform.python_version_tuple()[:2]),
        "python": platform.python_version(),
        "sources": [str(s) for s in sources],
        "test_fraction": test_fraction,
        "construction": CONSTRUCTION,
        "counts": {
            "files": len(files),
            "files_failed": failed_files,
            "functions": len(functions),
            "functions_with_docstring": len(with_docstring),
            "kept": len(kept),
            "queries": {split: len(judged) for split, judged in qrels.items()},
            "top_level_modules": {"train": len({f.top_level for f in kept}) - len(test_modules),
                                  "test": len(test_modules)},
            "skipped": dict(sorted(Counter(f.skip for f in with_docstring if f.skip is not None).items())),
        },
    }
    write_beir(output, corpus, queries, qrels, info)
    return info


def _python_files(source: Path) -> Iterator[tuple[Path, Path]]:
    """(root, file) for each .py file under ``source`` in sorted order, leaving out excluded folders below the
    root (the root's own path may contain anything)."""
    if source.is_file():
        yield source.parent, source
        return
    root = source.parent if (source / "__init__.py").exists() else source
    for path in sorted(source.rglob("*.py")):
        if not EXCLUDED_FOLDERS.intersection(path.relative_to(root).parts[:-1]) and path.is_file():
            yield root, path


def _parse(path: Path) -> tuple[str, ast.Module] | None:
    """The source (decoded as Python does: coding cookie, universal newlines) and its tree; None when either fails."""
    try:
        with tokenize.open(path) as f:
            source = f.read()
        with warnings.catch_warnings():  # invalid escape sequences in old code are not our concern
            warnings.simplefilter("ignore")
            return source, ast.parse(source, filename=str(path))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
        return None


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _is_test_file(path: Path) -> bool:
    return path.name.startswith("test_") or path.stem.endswith("_test")


def _functions(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualname, node) for the functions defined in ``body``: in classes (nested too) and in compound statements
    (``if``, ``try``...: conditional definitions), but not inside other functions."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                    yield from _functions([child], prefix)


def _describe(doc_id: str, top_level: str, in_test_file: bool, node: ast.FunctionDef | ast.AsyncFunctionDef,
              source: str) -> Function:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring:
        return Function(doc_id, top_level, "", "", "no_docstring")
    query = " ".join(re.split(r"\n\s*\n", docstring, maxsplit=1)[0].split())
    document = function_lines_without_docstring(node, source.split("\n"))
    return Function(doc_id, top_level, query, document or "", _skip_reason(node, in_test_file, query, document))


def _skip_reason(node: ast.FunctionDef | ast.AsyncFunctionDef, in_test_file: bool, query: str,
                 document: str | None) -> str | None:
    name = node.name
    if in_test_file or name.startswith("test"):
        return "test_function"
    if name.startswith("__") and name.endswith("__") and name not in KEPT_DUNDERS:
        return "dunder"
    if len(query.split()) < MIN_QUERY_WORDS:
        return "short_query"
    if re.match(rf"[\w.]*\b{re.escape(name)}\s*\(", query):
        return "signature_query"
    if query.startswith(("Deprecated", "See ")):
        return "pointer_query"
    if document is None:
        return "inline_docstring"
    if _is_trivial(node.body[1:], document):
        return "trivial_body"
    if len(document) > MAX_DOCUMENT_CHARS:
        return "too_long"
    return None


def _is_trivial(body: list[ast.stmt], document: str) -> bool:
    """Too little code to be worth finding: under 3 non-blank, non-comment lines (the def line counts), or a body
    of only ``pass``, ``...`` and ``raise NotImplementedError``."""
    code_lines = [line for line in document.split("\n") if line.strip() and not line.strip().startswith("#")]
    return len(code_lines) < MIN_CODE_LINES or all(_is_placeholder(statement) for statement in body)


def _is_placeholder(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.Pass):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return statement.value.value is Ellipsis
    if isinstance(statement, ast.Raise) and statement.exc is not None:
        raised = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
        return isinstance(raised, ast.Name) and raised.id == "NotImplementedError"
    return False


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def _mark_duplicates(functions: list[Function]) -> None:
    """Skip every function whose query is asked by another too (which of them is meant is ambiguous), and a
    document seen before (the same code under another name would be a second right answer)."""
    query_counts = Counter(_normalize(f.query) for f in functions if f.skip is None)
    seen_documents: set[str] = set()
    for function in functions:
        if function.skip is not None:
            continue
        if query_counts[_normalize(function.query)] > 1:
            function.skip = "duplicate_query"
        elif function.document in seen_documents:
            function.skip = "duplicate_document"
        else:
            seen_documents.add(function.document)


def _test_modules(sizes: Counter[str], test_fraction: float) -> set[str]:
    """The top-level modules of the test split: in sha256 order of their names (stable, unlike hash()), each one
    joins when that brings the test split's function count closer to ``test_fraction`` of all; packages differ in
    size by hundreds of functions, so a plain hash threshold would miss the fraction by far."""
    target = test_fraction * sum(sizes.values())
    chosen: set[str] = set()
    count = 0
    for name in sorted(sizes, key=lambda name: hashlib.sha256(name.encode()).hexdigest()):
        if count + sizes[name] / 2 < target:
            chosen.add(name)
            count += sizes[name]
    return chosen
