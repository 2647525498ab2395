"""eval.datasets.code_projects (the code-search benchmark's builder) and eval.datasets.comment_docs, on three tiny
synthetic projects packed as registry-like archives in tmp_path (a Python sdist, an npm tarball, a Rust + C sdist)
and fetched through file:// URLs: no network."""

from __future__ import annotations

import hashlib
import json
import tarfile
import textwrap
from pathlib import Path

import pytest

from eval.datasets.code_projects import (
    ArchiveChanged,
    Project,
    build_code_projects,
    read_queries,
    split_of,
)
from eval.datasets.comment_docs import definitions

PY_CORE = textwrap.dedent('''\
    """Module doc."""
    import os


    def parse_header_line(line):
        """Split one header line into its name and value parts.

        More detail.
        """
        name, _, value = line.partition(":")
        return name.strip(), value.strip()


    class TokenBucket:
        """Limit how often requests may be sent per second."""

        def take_tokens(self, count):
            """Remove tokens from the bucket when enough remain."""
            return count


    def shared_name():
        """Does a thing that is shared between two languages."""
        return 1
    ''')
PY_TEST = textwrap.dedent('''\
    def test_parse():
        """Check that parsing header lines works well enough."""
        assert True


    def helper_for_tests():
        """Build a fake connection object for the parser tests."""
        return None
    ''')
JS_UTIL = textwrap.dedent('''\
    'use strict';

    /**
     * Merge the properties of several source objects into a target.
     *
     * @param {Object} target
     * @returns {Object}
     */
    function mergeObjects(target) {
      return target;
    }

    /**
     * Convert a string to camel case words joined.
     */
    const toCamelWords = (s) => s;

    function shared_name() {
      return 2;
    }
    ''')
JS_PICK = textwrap.dedent('''\
    /**
     * Pick the first defined value from a list of candidates.
     */
    function pickDefined(values) {
      return values[0];
    }
    ''')
JS_NOTES = "// Pick the first defined value from a list of candidates.\nvar notesOnPicking = 1;\n"
RUST_LIB = textwrap.dedent('''\
    /// Decode a run of bytes into a number with a sign.
    ///
    /// # Examples
    pub fn decode_signed_number(bytes: &[u8]) -> i64 {
        0
    }

    /// Hold the state of the streaming parser between calls.
    #[derive(Debug)]
    pub struct StreamState {
        pos: usize,
    }

    #[cfg(test)]
    mod tests {
        /// Check that decoding negative numbers gives the sign back.
        fn check_negative_decoding() {}
    }
    ''')
C_FDS = textwrap.dedent('''\
    #include <stdio.h>

    /*
     * Return the number of open file descriptors of a process.
     */
    static int
    count_open_fds(int pid) {
        return 0;
    }
    ''')
C_DUPLICATES = textwrap.dedent('''\

    /*
     * Close every descriptor that the child process inherited.
     */
    static void close_inherited(void) {
    }

    /*
     * Close every descriptor that the child process inherited.
     */
    static void close_inherited_fds(void) {
    }
    ''')  # a sentence that documents two definitions answers neither

# the answers in the written tree, counted by hand: (start_line, end_line)
EXPECTED_SPANS = {
    "parse_header_line": ("pyproj/pkg/core.py", 5, 7), "TokenBucket": ("pyproj/pkg/core.py", 10, 13),
    "take_tokens": ("pyproj/pkg/core.py", 12, 13), "mergeObjects": ("jsproj/lib/util.js", 3, 5),
    "toCamelWords": ("jsproj/lib/util.js", 7, 7), "decode_signed_number": ("native/src/lib.rs", 1, 3),
    "StreamState": ("native/src/lib.rs", 6, 8), "count_open_fds": ("native/src/fds.c", 4, 6),
    "pickDefined": ("jsproj/lib/pick.js", 1, 3),
}
DESCRIPTIONS = {
    "parse_header_line": "Split one header line into its name and value parts.",
    "TokenBucket": "Limit how often requests may be sent per second.",
    "take_tokens": "Remove tokens from the bucket when enough remain.",
    "shared_name": "Does a thing that is shared between two languages.",
    "mergeObjects": "Merge the properties of several source objects into a target.",
    "toCamelWords": "Convert a string to camel case words joined.",
    "decode_signed_number": "Decode a run of bytes into a number with a sign.",
    "StreamState": "Hold the state of the streaming parser between calls.",
    "count_open_fds": "Return the number of open file descriptors of a process.",
}


def pack(folder: Path, top: str, files: dict[str, str]) -> tuple[Path, str]:
    """A .tar.gz whose members lie under ``top``/, and its sha256."""
    archive = folder / f"{top}.tar.gz"
    source = folder / "src" / top
    for relative, text in files.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text(text)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=top)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.fixture
def projects(tmp_path: Path) -> list[Project]:
    made = []
    for name, top, language, files in (
            ("pyproj", "pyproj-1.0", "python", {"pkg/core.py": PY_CORE, "tests/test_core.py": PY_TEST,
                                                "docs/conf.py": "x = 1\n"}),
            ("jsproj", "package", "javascript", {"lib/util.js": JS_UTIL, "lib/pick.js": JS_PICK,
                                                 "lib/notes.js": JS_NOTES, "README.md": "# readme\n"}),
            ("native", "native-0.1", "rust", {"src/lib.rs": RUST_LIB, "src/fds.c": C_FDS + C_DUPLICATES})):
        archive, sha = pack(tmp_path / "archives-src" / name, top, files)
        made.append(Project(name, "1.0", language, archive.as_uri(), sha, r"^(pkg|tests|lib|src)/"))
    return made


@pytest.fixture
def built(tmp_path: Path, projects: list[Project]) -> tuple[Path, dict, list[dict]]:
    folder = tmp_path / "data"
    manifest = build_code_projects(folder, projects, cache=tmp_path / "cache")
    return folder, manifest, read_queries(folder)


def tree_text(folder: Path, path: str) -> str:
    return (folder / "tree" / path).read_text()


def test_description_queries_are_the_first_sentences_and_their_documentation_is_cut(built):
    folder, _, queries = built
    descriptions = {q["name"]: q["query"] for q in queries if q["kind"] == "description"}
    assert descriptions == DESCRIPTIONS  # test code, the leaked pickDefined and tag lines are not asked
    corpus = " ".join(" ".join(tree_text(folder, p).split()) for p in
                      ("pyproj/pkg/core.py", "jsproj/lib/util.js", "native/src/lib.rs", "native/src/fds.c"))
    for query in DESCRIPTIONS.values():
        assert query not in corpus
    assert "More detail" not in corpus and "@param" not in corpus and "# Examples" not in corpus
    assert tree_text(folder, "pyproj/pkg/core.py").startswith('"""Module doc."""')  # not a queried definition
    assert "Check that decoding negative numbers" in tree_text(folder, "native/src/lib.rs")  # test code: kept
    compile(tree_text(folder, "pyproj/pkg/core.py"), "core.py", "exec")
    assert "        pass" not in tree_text(folder, "pyproj/pkg/core.py")  # no body was left empty here


def test_answers_point_at_the_definition_lines_of_the_written_tree(built):
    folder, _, queries = built
    for query in queries:
        path, start, end = EXPECTED_SPANS.get(query["name"], (None, None, None))
        if path is None:
            continue
        assert (query["path"], query["start_line"], query["end_line"]) == (path, start, end), query
        lines = tree_text(folder, path).split("\n")
        assert query["name"] in lines[start - 1]
    asked = {q["name"] for q in queries}
    assert set(EXPECTED_SPANS) <= asked
    assert {q["language"] for q in queries} == {"python", "javascript", "rust", "c"}


def test_symbol_queries_are_names_defined_once_and_never_test_code(built):
    _, _, queries = built
    symbols = sorted(q["query"] for q in queries if q["kind"] == "symbol")
    assert symbols == sorted(["parse_header_line", "TokenBucket", "take_tokens", "mergeObjects", "toCamelWords",
                              "pickDefined", "notesOnPicking", "decode_signed_number", "StreamState",
                              "count_open_fds", "close_inherited", "close_inherited_fds"])
    assert "shared_name" not in symbols  # defined in core.py and in util.js
    assert not {"test_parse", "helper_for_tests", "check_negative_decoding", "tests"} & set(symbols)


def test_split_is_stable_per_file_and_across_builds(built, tmp_path, projects):
    _, _, queries = built
    for query in queries:
        assert query["split"] == split_of(query["path"])
    assert {split_of(p) for p in (f"p/f{i}.py" for i in range(40))} == {"dev", "test"}
    assert split_of("requests/src/requests/adapters.py") == split_of("requests/src/requests/adapters.py")
    again = build_code_projects(tmp_path / "again", projects, cache=tmp_path / "cache", per_kind=2, seed=5)
    fewer = read_queries(tmp_path / "again")
    by_path = {q["path"]: q["split"] for q in queries}
    assert fewer and all(by_path[q["path"]] == q["split"] for q in fewer)
    assert again["counts"]["queries"]["symbol"] <= 2 * len(projects)


def test_manifest_pins_the_archives_and_a_changed_archive_is_refused(built, tmp_path, projects):
    folder, manifest, _ = built
    assert [(p["name"], p["sha256"]) for p in manifest["projects"]] == [(p.name, p.sha256) for p in projects]
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert manifest["counts"]["files"] == 7 and "sha256" in manifest["rules"]
    cached = tmp_path / "cache" / projects[1].archive_name
    cached.write_bytes(cached.read_bytes() + b"\0")  # the cached archive changes
    with pytest.raises(ArchiveChanged, match=r"jsproj 1\.0: .* has sha256 [0-9a-f]{64}, but the manifest pins"):
        build_code_projects(folder, projects, cache=tmp_path / "cache")  # reusing the built folder checks too
    with pytest.raises(ArchiveChanged, match="refusing"):
        build_code_projects(tmp_path / "fresh", projects, cache=tmp_path / "cache")
    moved = [Project(p.name, p.version, p.language, p.url, "0" * 64, p.include) for p in projects[:1]]
    with pytest.raises(ArchiveChanged):  # a download that does not match is refused before it is cached
        build_code_projects(tmp_path / "other", moved, cache=tmp_path / "cache-2")
    assert not (tmp_path / "cache-2" / moved[0].archive_name).exists()


def test_comment_docs_find_definitions_docs_and_ends_in_each_language():
    js = {d.name: d for d in definitions(JS_UTIL + "class Pool {\n  acquireSlot(n) {\n    return '}';\n  }\n}\n"
                                         "app.render = function render(view) {\n  view = view.replace(/[}]/g, '');\n  return view;\n};\n",
                                         "javascript")}
    assert js["mergeObjects"].doc == "Merge the properties of several source objects into a target."
    assert (js["mergeObjects"].line, js["mergeObjects"].end, js["mergeObjects"].doc_first) == (8, 10, 2)
    assert js["toCamelWords"].end == js["toCamelWords"].line and js["shared_name"].doc is None
    assert (js["Pool"].end - js["Pool"].line, js["acquireSlot"].end - js["acquireSlot"].line) == (4, 2)
    assert js["render"].end - js["render"].line == 3  # a regex literal's brace is not a bracket
    rust = {d.name: d for d in definitions(RUST_LIB + "fn lifetimes<'a>(x: &'a str) -> char {\n    '{'\n}\n",
                                           "rust")}
    assert rust["StreamState"].doc == "Hold the state of the streaming parser between calls."
    assert (rust["StreamState"].doc_first, rust["StreamState"].line) == (7, 9)
    assert rust["lifetimes"].end - rust["lifetimes"].line == 2
    c = definitions(C_FDS + "\n// Count the threads that a process runs.\nint count_threads(int pid)\n{\n"
                            "    if (pid) {\n#ifdef X\n    }\n#else\n    }\n#endif\n    return 0;\n"
                            "}\nint prototype_only(int pid);\n", "c")
    assert [(d.name, d.doc) for d in c] == [
        ("count_open_fds", "Return the number of open file descriptors of a process."),
        ("count_threads", "Count the threads that a process runs.")]
    assert c[1].end == len((C_FDS + "\n").split("\n")) + 9  # the "}" in column 0, despite #ifdef braces


def test_runner_scores_line_span_relevance_and_skips_configs_the_retriever_cannot_take():
    import importlib.util
    import math
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("code_search", Path(__file__).parents[2] / "bench" / "code_search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def hit(path, start, end, snippet_line=None):
        return SimpleNamespace(path=path, start_line=start, end_line=end, snippet="a\nb",
                               snippet_line=snippet_line or start)

    answers = {  # query -> hits, best first
        "q1": [hit("p/a.py", 1, 9), hit("p/b.py", 10, 30, 20), hit("p/b.py", 15, 40)],  # rank 2, then a duplicate
        "q2": [hit("p/b.py", 1, 9)],  # the right file, the wrong span
        "q3": [hit("p/c.py", 5, 8)],
    }
    retriever = SimpleNamespace(search=lambda query, k, **kw: answers[query])
    queries = [{"id": q, "query": q, "path": "p/b.py", "start_line": 20} for q in ("q1", "q2")] + \
              [{"id": "q3", "query": "q3", "path": "p/c.py", "start_line": 5}]
    results = bench.evaluate_config(retriever, queries, {})
    metrics = bench.summarize(queries, results)
    assert [results[q]["rank"] for q in ("q1", "q2", "q3")] == [2, None, 1]
    assert metrics["hit@1"] == pytest.approx(1 / 3) and metrics["hit@5"] == pytest.approx(2 / 3)
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(3) + 0 + 1) / 3)  # the duplicate is not counted
    assert metrics["file@10"] == 1.0 and metrics["span_ok"] == pytest.approx(2 / 3)
    assert metrics["snip_ok"] == 1.0 and metrics["span_len"] == pytest.approx((21 + 4) / 2)

    semantic_only = {"query", "k", "path_glob", "file_type"}
    assert bench.search_kwargs("semantic", bench.CONFIGS["semantic"], semantic_only) == ({}, "")
    assert bench.search_kwargs("lexical", bench.CONFIGS["lexical"], semantic_only)[0] is None
    with_mode = semantic_only | {"mode"}
    assert bench.search_kwargs("lexical", bench.CONFIGS["lexical"], with_mode) == ({"mode": "lexical"}, "")
    assert bench.search_kwargs("rules", bench.CONFIGS["hybrid+rules"], with_mode)[0] is None
