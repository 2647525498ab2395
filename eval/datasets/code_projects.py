"""A code-search benchmark built from real open-source projects downloaded from package registries (PyPI sdists,
npm tarballs), pinned by version and sha256: Python, JavaScript, Rust and C, with two kinds of known-answer queries.

- ``description``: the first sentence of a definition's documentation (a Python docstring; JSDoc ``/** */``; Rust
  ``///``; a C ``/* */`` or ``//`` block right above a function). The written tree has that documentation removed,
  so the query's words are not in the index.
- ``symbol``: a definition's bare name, for names defined exactly once in the whole corpus.

The answer is the definition's span in the written tree: its path, the line that names it (``def``/``function``/
``fn``/the C function name) and its last line. ``build_code_projects`` writes ``tree/``, ``queries.jsonl`` and
``manifest.json``; ``bench/code_search.py`` indexes the tree and scores search modes on it. The rules are in
``RULES`` (written to the manifest) and in the README.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import random
import re
import shutil
import tarfile
import urllib.request
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

from .codebase import SENTENCE_END
from .comment_docs import definitions as comment_definitions
from .comment_docs import language_of as comment_language_of
from .docstrings import locate

FORMAT = 1
MIN_QUERY_WORDS = 4
MIN_SYMBOL_CHARS = 4
PER_KIND = 60
TEST_PARTS = {"test", "tests", "testing", "__tests__", "spec", "benches", "bench", "benchmark", "fuzz"}
SKIPPED_DOC_STARTS = ("deprecated", "see ", "alias", "todo", "xxx", "fixme", "copyright", "spdx", "note:",
                      "references", "ref:", "this file", "the following", "(c)")


@dataclass(frozen=True)
class Project:
    """One pinned archive and the files of it that go into the tree (paths relative to the archive's top folder)."""

    name: str
    version: str
    language: str  # the main language (queries are labelled by each file's own language)
    url: str
    sha256: str
    include: str  # regex, matched against the path inside the archive's top folder
    exclude: str = r"$^"

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[1]


_PYPI = "https://files.pythonhosted.org/packages/"
_NPM = "https://registry.npmjs.org/"
PROJECTS: tuple[Project, ...] = (  # interleaved by language, so that --limit-projects N keeps the mix
    Project("requests", "2.32.3", "python",
            _PYPI + "63/70/2bf7780ad2d390a8d301ad0b550f1581eadbd9a20f896afe06353c2a2913/requests-2.32.3.tar.gz",
            "55365417734eb18255590a9ff9eb97e9e1da868d4ccd6402399eaf68af20a760", r"^(src/requests|tests)/.*\.py$"),
    Project("lodash", "4.17.21", "javascript", _NPM + "lodash/-/lodash-4.17.21.tgz",
            "6a087ac9e5702a0c9d60fbcd48696012646ec8df1491dea472b150e79fcaf804", r"^(fp/)?[^/]+\.js$",
            r"^(lodash|core)\.js$|\.min\.js$"),
    Project("jiter", "0.5.0", "rust",
            _PYPI + "d7/1a/aa64be757afc614484b370a4d9fc1747dc9237b37ce464f7f9d9ca2a3d38/jiter-0.5.0.tar.gz",
            "1d916ba875bcab5c5f7d927df998c4cb694d27dceddf3392e58beaf10563368a", r"^crates/.*\.rs$"),
    Project("psutil", "6.0.0", "c",
            _PYPI + "18/c7/8c6872f7372eb6a6b2e4708b88419fb46b857f7a2e1892966b851cc79fc9/psutil-6.0.0.tar.gz",
            "8faae4f310b6d969fa26ca0545338b21f73c6b15db7c4a8d934a5482faa818f2",
            r"^psutil/(_psutil_(common|posix|linux|osx|windows)|arch/(linux|osx|windows)/\w+)\.[ch]$"),
    Project("pluggy", "1.5.0", "python",
            _PYPI + "96/2d/02d4312c973c6050a18b314a5ad0b3210edb65a906f868e31c111dede4a6/pluggy-1.5.0.tar.gz",
            "2cffa88e94fdc978c4c574f15f9e59b7f4201d439195c3715ca9e2486f1d0cf1", r"^(src/pluggy|testing)/.*\.py$"),
    Project("express", "4.21.1", "javascript", _NPM + "express/-/express-4.21.1.tgz",
            "4097da0999b7078263460df02b0990244794d84e79e185e6d4ff50ce06d79462", r"^(index\.js|lib/.*\.js)$"),
    Project("itsdangerous", "2.2.0", "python",
            _PYPI + "9c/cb/8ac0172223afbccb63986cc25049b154ecfb5e85932587206f42317be31d/itsdangerous-2.2.0.tar.gz",
            "e0050c0b7da1eea53ffaf149c0cfbb5c6e2e2b69c4bef22c81fa6eb73e5f6173", r"^(src/itsdangerous|tests)/.*\.py$"),
    Project("commander", "12.1.0", "javascript", _NPM + "commander/-/commander-12.1.0.tgz",
            "56affc6ddafe486f94b428ae2823d059cf60d4dae2f33eaaf1b1ec4306f73173", r"^(index\.js|lib/.*\.js)$"),
    Project("safetensors", "0.4.5", "rust",
            _PYPI + "cb/46/a1c56ed856c6ac3b1a8b37abe5be0cac53219367af1331e721b04d122577/safetensors-0.4.5.tar.gz",
            "d73de19682deabb02524b3d5d1f8b3aaba94c72f1bbfc7911b9b9d5d391c0310",
            r"^(safetensors/src|bindings/python/src)/.*\.rs$"),
    Project("ws", "8.18.0", "javascript", _NPM + "ws/-/ws-8.18.0.tgz",
            "a08221f2851472c944ca0178d89a9888c7f43fbd9998afc8a7ec6fe417c4ca20", r"^(index\.js|lib/.*\.js)$"),
    Project("axios", "1.7.7", "javascript", _NPM + "axios/-/axios-1.7.7.tgz",
            "5f2dde3882446ea1cb5094dd7db99b4ed7cf09f0c96be646a8d30959b0923bec", r"^(index\.js|lib/.*\.js)$"),
)

RULES = (
    "Corpus: each project's pinned archive (PyPI sdist or npm tarball; sha256 checked on every build, a mismatch "
    "stops the build), the files its include regex selects (paths relative to the archive's top folder, written "
    "under tree/<project>/), decoded as UTF-8 (other files dropped). Languages by suffix: .py Python, "
    ".js/.mjs/.cjs JavaScript, .ts TypeScript (not .d.ts), .rs Rust, .c/.h C. "
    "Definitions: Python functions, methods and classes (ast; not inside functions); brace languages by line "
    "patterns (eval/datasets/comment_docs.py): JS/TS functions, classes, methods, `x.y = function`, top-level "
    "const/let/var; Rust fn/struct/enum/trait/type/const/static/mod/union/macro_rules; C function definitions. "
    "Test code (a path part test(s)/testing/__tests__/spec/bench(es)/benchmark/fuzz, files test_*, *_test.*, "
    "*.test.*, *.spec.*, conftest.py, names starting with test, Rust items after #[cfg(test)]) is indexed but "
    "never asked for. "
    "description queries: the documentation's first paragraph, whitespace collapsed, cut at its first sentence "
    "end; at least 4 words; not starting with a pointer word (Deprecated, See, Alias, TODO, Copyright, ...), no URL, "
    "not containing the definition's own name, not made only of the name's words; a sentence documenting more than "
    "one definition is dropped. Python docstrings must stand alone on their lines (they are cut as whole lines, a "
    "body left empty gets `pass`); comments are cut as whole lines. Only the documentation of the sampled "
    "description queries is removed; a query whose normalized text still occurs in the written tree (lower-cased, "
    "whitespace collapsed) is dropped. "
    "symbol queries: the bare name of a definition whose name is defined exactly once in the whole corpus (all "
    "kinds, all languages, test code included), at least 4 characters, not a dunder. "
    "Sampling: per project and kind, candidates in (path, line) order, shuffled with random.Random(seed), the first "
    "per_kind kept. Answer: (path, line naming the definition, its last line) in the written tree, 1-based. "
    "Split: by the answer's file, sha256('<path>') even first byte -> dev, odd -> test (every query of a file in "
    "one split; stable across builds and samplings).")


class ArchiveChanged(ValueError):
    """A cached or downloaded archive whose sha256 is not the pinned one."""


@dataclass
class Candidate:
    project: str
    path: str  # tree path: project/...
    language: str
    name: str
    kind: str
    line: int  # 0-based, in the original text
    end: int
    doc: str | None  # the description query it gives, after the rules; None when it gives none
    doc_cut: tuple[int, int, list[str]] | None = None  # (first, last, replacement) 0-based lines: the cut
    in_test: bool = False


@dataclass
class SourceFile:
    path: str
    language: str
    text: str
    candidates: list[Candidate] = field(default_factory=list)


# ----- archives
def fetch_archive(project: Project, cache: Path) -> bytes:
    """The project's archive, from ``cache`` (downloaded there first when missing), checked against its sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / project.archive_name
    if not path.exists():
        with urllib.request.urlopen(project.url, timeout=120) as response:
            data = response.read()
        check_archive(project, data, project.url)
        path.with_suffix(".part").write_bytes(data)
        path.with_suffix(".part").replace(path)
    data = path.read_bytes()
    check_archive(project, data, str(path))
    return data


def check_archive(project: Project, data: bytes, where: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != project.sha256:
        raise ArchiveChanged(f"{project.name} {project.version}: {where} has sha256 {digest}, but the manifest pins "
                             f"{project.sha256}: the archive changed; refusing to build from it (delete the cached "
                             "file to download it again, or pin the new hash deliberately)")


def archive_files(project: Project, data: bytes) -> dict[str, str]:
    """{path inside the archive's top folder: text} for the selected, UTF-8 files."""
    include, exclude = re.compile(project.include), re.compile(project.exclude)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            if not member.isfile() or "/" not in member.name:
                continue
            relative = member.name.split("/", 1)[1]
            if not include.search(relative) or exclude.search(relative):
                continue
            raw = archive.extractfile(member).read()
            try:
                files[relative] = raw.decode("utf-8").replace("\r\n", "\n")
            except UnicodeDecodeError:
                continue
    return dict(sorted(files.items()))


# ----- definitions
def language_of(path: str) -> str | None:
    return "python" if path.endswith(".py") else comment_language_of(path)


def is_test_path(path: str) -> bool:
    parts = path.lower().split("/")
    name = parts[-1]
    return bool(TEST_PARTS.intersection(parts[:-1])) or name.startswith("test_") or name == "conftest.py" or \
        bool(re.search(r"(_test\.\w+|\.test\.\w+|\.spec\.\w+)$", name))


def first_sentence(doc: str) -> str:
    paragraph = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    return SENTENCE_END.split(" ".join(paragraph.split()))[0].strip()


def description_query(doc: str | None, name: str) -> str | None:
    """The query a definition's documentation gives under the rules, or None."""
    if not doc:
        return None
    query = first_sentence(doc)
    words = re.findall(r"[A-Za-z0-9]+", query.lower())
    if len(query.split()) < MIN_QUERY_WORDS or query.lower().startswith(SKIPPED_DOC_STARTS):
        return None
    if re.search(r"https?://|www\.", query) or re.search(rf"(?<![\w$]){re.escape(name)}(?![\w$])", query, re.IGNORECASE):
        return None
    name_words = {w.lower() for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name)}
    if set(words) <= name_words | {"a", "an", "the", "of", "to", "for", "and", "or", "is", "in", "this", "it"}:
        return None
    return query


def python_candidates(project: str, path: str, text: str) -> list[Candidate]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    lines = keep_ends(text)
    out: list[Candidate] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc, cut = None, None
                docstring = locate(node, lines)
                if docstring is not None and docstring.alone:
                    doc = ast.get_docstring(node)
                    replacement = [" " * node.body[0].col_offset + "pass\n"] if len(node.body) == 1 else []
                    cut = (docstring.first_line, docstring.last_line, replacement)
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                out.append(Candidate(project, path, "python", node.name, kind, node.lineno - 1,
                                     (node.end_lineno or node.lineno) - 1, doc, cut))
                if isinstance(node, ast.ClassDef):
                    visit(node.body)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        out.append(Candidate(project, path, "python", target.id, "variable", node.lineno - 1,
                                             (node.end_lineno or node.lineno) - 1, None))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child])
                    elif isinstance(child, ast.excepthandler):
                        visit(child.body)

    visit(tree.body)
    return out


def file_candidates(project: str, path: str, language: str, text: str) -> list[Candidate]:
    if language == "python":
        found = python_candidates(project, path, text)
    else:
        found = [Candidate(project, path, language, d.name, d.kind, d.line, d.end, d.doc,
                           (d.doc_first, d.doc_last, []) if d.doc_first is not None else None)
                 for d in comment_definitions(text, language)]
    test = is_test_path(path)
    test_module = re.search(r"^\s*#\[cfg\(test\)\]", text, re.MULTILINE) if language == "rust" else None
    test_from = text.count("\n", 0, test_module.start()) if test_module else len(text)
    for candidate in found:
        candidate.in_test = test or candidate.name.lower().startswith("test") or candidate.line > test_from
        candidate.doc = description_query(candidate.doc, candidate.name)
        if candidate.doc is None:
            candidate.doc_cut = None
    return found


# ----- the tree with cuts
def apply_cuts(text: str, cuts: Iterable[tuple[int, int, list[str]]]) -> tuple[str, list[int]]:
    """``text`` with each cut's lines (first..last, 0-based) replaced, and where each original line went
    (new 0-based index; a cut line maps to where its replacement starts)."""
    lines = keep_ends(text)
    ordered = sorted(cuts, key=lambda c: c[0])
    for (_, last, _), (first, _, _) in pairwise(ordered):
        if first <= last:
            raise ValueError("overlapping cuts")
    mapping, out = [], []
    position = 0
    for first, last, replacement in ordered:
        for i in range(position, first):
            mapping.append(len(out))
            out.append(lines[i])
        start = len(out)
        out.extend(replacement)
        mapping.extend([start] * (last - first + 1))
        position = last + 1
    for i in range(position, len(lines)):
        mapping.append(len(out))
        out.append(lines[i])
    return "".join(out), mapping


def keep_ends(text: str) -> list[str]:
    """The lines of ``text`` split at "\\n" only (not at form feeds, as str.splitlines would: line numbers are
    ast's and the index's), each with its newline."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def split_of(path: str) -> str:
    return "dev" if hashlib.sha256(path.encode("utf-8")).digest()[0] % 2 == 0 else "test"


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


# ----- the build
def build_code_projects(folder: str | Path, projects: Sequence[Project] = PROJECTS, *, cache: str | Path | None = None,
                        per_kind: int = PER_KIND, seed: int = 0) -> dict:
    """Build the benchmark into ``folder`` (tree/, queries.jsonl, manifest.json) from ``projects``' archives
    (kept in ``cache``, by default ``folder``/../archives). Returns the manifest. A folder whose manifest records the
    same projects and settings is reused as it is (its tree and queries are not rewritten)."""
    folder = Path(folder)
    cache = Path(cache) if cache is not None else folder.parent / "archives"
    settings = {"format": FORMAT, "per_kind": per_kind, "seed": seed,
                "projects": [asdict(p) for p in projects]}
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") == settings and (folder / "queries.jsonl").exists():
            for project in projects:  # the archives are checked on reuse too
                fetch_archive(project, cache)
            return manifest

    sources: list[SourceFile] = []
    project_info = []
    for project in projects:
        files = archive_files(project, fetch_archive(project, cache))
        chars = 0
        for relative, text in files.items():
            language = language_of(relative)
            if language is None:
                continue
            path = f"{project.name}/{relative}"
            source = SourceFile(path, language, text, file_candidates(project.name, path, language, text))
            sources.append(source)
            chars += len(text)
        project_info.append({"name": project.name, "version": project.version, "language": project.language,
                             "url": project.url, "sha256": project.sha256, "include": project.include,
                             "exclude": project.exclude,
                             "files": sum(s.path.startswith(project.name + "/") for s in sources), "chars": chars})

    everything = [c for s in sources for c in s.candidates]
    name_counts = Counter(c.name for c in everything)
    doc_counts = Counter(_normalize(c.doc) for c in everything if c.doc)
    rng = random.Random(seed)
    chosen: dict[str, list[tuple[str, Candidate]]] = defaultdict(list)  # path -> (kind, candidate)
    for project in projects:
        mine = [c for c in everything if c.project == project.name and not c.in_test]
        describable = [c for c in mine if c.doc and c.doc_cut is not None and doc_counts[_normalize(c.doc)] == 1]
        symbols = [c for c in mine if name_counts[c.name] == 1 and len(c.name) >= MIN_SYMBOL_CHARS
                   and not (c.name.startswith("__") and c.name.endswith("__"))]
        for kind, pool in (("description", describable), ("symbol", symbols)):
            pool = sorted(pool, key=lambda c: (c.path, c.line))
            rng.shuffle(pool)
            for candidate in pool[:per_kind]:
                chosen[candidate.path].append((kind, candidate))

    tree = folder / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    queries = []
    written: dict[str, str] = {}
    for source in sources:
        picked = chosen.get(source.path, [])
        cuts = [c.doc_cut for kind, c in picked if kind == "description"]
        text, mapping = apply_cuts(source.text, cuts)
        written[source.path] = text
        target = tree / source.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        for kind, candidate in picked:
            query = candidate.doc if kind == "description" else candidate.name
            queries.append({"kind": kind, "split": split_of(source.path), "query": query, "path": source.path,
                            "start_line": mapping[candidate.line] + 1, "end_line": mapping[candidate.end] + 1,
                            "language": source.language, "project": candidate.project, "name": candidate.name})

    corpus = _normalize("\n".join(written.values()))
    leaked = [q for q in queries if q["kind"] == "description" and _normalize(q["query"]) in corpus]
    queries = [q for q in queries if not (q["kind"] == "description" and _normalize(q["query"]) in corpus)]
    queries.sort(key=lambda q: (q["kind"], q["project"], q["path"], q["start_line"]))
    for number, query in enumerate(queries):
        query["id"] = f"{query['kind'][:3]}-{number:04d}"
    check_answers(folder, queries)

    with open(folder / "queries.jsonl", "w", encoding="utf-8") as out:
        for query in queries:
            out.write(json.dumps({key: query[key] for key in ("id", "kind", "split", "query", "path", "start_line",
                                                              "end_line", "language", "project", "name")}) + "\n")
    counts: dict = {"files": len(sources), "chars": sum(len(t) for t in written.values()),
                    "files_by_language": dict(Counter(s.language for s in sources)),
                    "chars_by_language": dict(sum((Counter({s.language: len(written[s.path])}) for s in sources),
                                                  Counter())),
                    "definitions": len(everything), "descriptions_leaked_dropped": len(leaked), "queries": {}}
    for query in queries:
        for key in (query["kind"], f"{query['kind']}/{query['split']}", f"{query['kind']}/{query['language']}",
                    f"{query['kind']}/{query['project']}"):
            counts["queries"][key] = counts["queries"].get(key, 0) + 1
    manifest = {"name": "code-projects", "settings": settings, "rules": RULES, "projects": project_info,
                "counts": counts}
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_answers(folder: Path, queries: list[dict]) -> None:
    """Every answer's first line, in the written tree, names the definition (a builder bug stops the build)."""
    cache: dict[str, list[str]] = {}
    for query in queries:
        lines = cache.setdefault(query["path"], (folder / "tree" / query["path"]).read_text("utf-8").split("\n"))
        line = lines[query["start_line"] - 1]
        if not re.search(rf"(?<![\w$]){re.escape(query['name'])}(?![\w$])", line):
            raise AssertionError(f"{query['path']}:{query['start_line']} does not name {query['name']}: {line!r}")


def read_queries(folder: str | Path) -> list[dict]:
    with open(Path(folder) / "queries.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
