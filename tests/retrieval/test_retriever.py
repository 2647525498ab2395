"""Retriever (retrieval/retriever.py) on real source trees: which files are indexed and why others are skipped,
chunk spans, incremental runs (what is read, encoded, loaded), kill safety with real SIGKILLs, search against a
brute-force cosine, filters, and a ColBERT/PLAID index that follows a changed file.

The models are tiny random ModernBERTs with the real tokenizer from ../shared: scores mean nothing, but they are
deterministic, so every result can be checked against a computation done here."""

from __future__ import annotations

import email
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from retrieval.codebase.ranking import Rules
from support import PYLATE_MODEL, TOKENIZER_DIR, copy_package, dense_model_folder, editor_lines, \
    single_torch_thread

pytestmark = pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").exists(),
                                reason=f"the ModernBERT tokenizer is not at {TOKENIZER_DIR} (../shared is missing)")

MAX_BYTES = 20_000  # email's larger modules are skipped as too large, which keeps the runs short
MAX_LENGTH = 128  # tokens per chunk: most modules become several chunks
ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("indexing_child.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models run faster on one thread, and far faster on a machine shared with other jobs."""
    yield from single_torch_thread()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return dense_model_folder(tmp_path_factory.mktemp("dense") / "model")


def decoded(data: bytes) -> str:
    return data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8-sig")


def odd_tree(root: Path) -> tuple[set[str], Counter]:
    """json and email from the standard library plus odd files; (the paths that must be indexed, the skipped
    reasons and counts that the summary must report)."""
    copy_package(json, root / "json")
    copy_package(email, root / "email")
    indexed, skipped = set(), Counter()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        data = path.read_bytes()
        if relative == "json/tool.py":
            skipped["ignored (.gitignore/.mretignore)"] += 1  # by the .mretignore below
        elif len(data) > MAX_BYTES:
            skipped[f"larger than {MAX_BYTES // 1024} KiB"] += 1
        elif not data.strip():
            skipped["empty"] += 1
        else:
            indexed.add(relative)
    files = {
        ".gitignore": b"*.log\nsecret/\n",
        ".mretignore": b"# not this one\njson/tool.py\n",
        "logs/.mretignore": b"!keep.log\n",  # the deeper file re-includes what the root .gitignore ignores
        "logs/keep.log": b"indexer restarted after the kill\nqueue drained\n",
        "logs/other.log": b"ignored by *.log\n",
        "debug.log": b"ignored\n",
        "secret/key.txt": b"ignored folder\n",
        "node_modules/pkg/index.js": b"module.exports = 1;\n",
        "json/__pycache__/decoder.cpython-311.pyc": b"\x00\x01compiled",
        "odd/latin1.txt": "caf\u00e9 na\u00efve r\u00e9sum\u00e9\n".encode("latin-1"),
        "odd/nul.txt": b"looks like text\x00but has a NUL\n",
        "odd/logo.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
        "odd/empty.py": b"",
        "odd/blank.md": b"  \n\n\t\n",
        "odd/huge.txt": b"a line of plain words that repeats\n" * (MAX_BYTES // 30),
        "odd/package-lock.json": b'{"lockfileVersion": 3}\n',
        "odd/app.min.js": b"var a=1;function b(){return a}\n",
        "odd/utf16.txt": "UTF-16 text with a byte order mark\nsecond line of it\n".encode("utf-16"),
        "odd/bom.py": "\ufeffdef with_bom():\n    return 'bom'\n".encode("utf-8"),
        "odd/crlf.txt": b"".join(b"windows line %d ends in CR LF\r\n" % i for i in range(60)),
        "odd/formfeed.py": "".join(f"\f\ndef section_{i}(value):\n    \"\"\"Section {i}, after a form feed.\"\"\"\n"
                                   f"    total = value * {i}\n    return total + {i}\n\n" for i in range(14)).encode(),
        "odd/page.html": b"<html><head><title>Page</title>\n<script>\nvar hidden = 'script text';\n</script>\n"
                         b"</head><body>\n<h1>Harbour tides</h1>\n<p>The tide tables are\nprinted weekly.</p>\n"
                         b"</body></html>\n",
        "README.md": b"# Odd tree\n\nA copy of json and email with odd files around them.\n",
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    (root / "odd" / "link.py").symlink_to(root / "json" / "decoder.py")
    indexed |= {"logs/keep.log", "odd/utf16.txt", "odd/bom.py", "odd/crlf.txt", "odd/formfeed.py", "odd/page.html",
                "README.md"}
    skipped[f"larger than {MAX_BYTES // 1024} KiB"] += 1  # huge.txt
    skipped["empty"] += 2
    skipped["binary"] += 2  # NUL bytes, .png
    skipped["not UTF-8 or UTF-16 text"] += 1
    skipped["generated (lock file, minified, source map)"] += 2
    skipped["ignored (.gitignore/.mretignore)"] += 3  # debug.log, logs/other.log, the secret/ folder
    # node_modules/ and json/__pycache__/ (the index's own .mret/ in the root is passed silently)
    skipped["excluded folder (vendored, build, cache)"] += 2
    skipped["symlink"] += 1
    return indexed, skipped


def documents(retriever) -> dict[str, dict]:
    rows = retriever.vectors.store.db.execute(
        "SELECT doc_id, source, start_line, end_line, content_hash, metadata, text FROM documents")
    return {r[0]: {"source": r[1], "start_line": r[2], "end_line": r[3], "content_hash": r[4],
                   "metadata": json.loads(r[5]), "text": r[6]} for r in rows}


def by_source(docs: dict[str, dict]) -> dict[str, list[tuple[str, dict]]]:
    grouped = defaultdict(list)
    for doc_id, doc in docs.items():
        grouped[doc["source"]].append((doc_id, doc))
    return {s: sorted(items, key=lambda item: item[1]["metadata"]["chunk"]) for s, items in grouped.items()}


@pytest.fixture(scope="module")
def odd(tmp_path_factory, model_dir):
    from retrieval.codebase.retriever import Retriever

    root = tmp_path_factory.mktemp("odd") / "tree"
    root.mkdir()
    expected, skipped = odd_tree(root)
    retriever = Retriever(root, model=model_dir, max_length=MAX_LENGTH, max_file_bytes=MAX_BYTES, show_progress=False)
    summary = retriever.index()
    yield root, retriever, summary, expected, skipped
    retriever.close()


# ----- 1. what is indexed, and how it is chunked
def test_exactly_the_right_files_are_indexed_with_counted_skips(odd):
    root, retriever, summary, expected, skipped = odd
    docs = documents(retriever)
    assert {d["source"] for d in docs.values()} == expected
    assert summary.skipped == dict(skipped)
    assert (summary.files, summary.chunks) == (len(expected), len(docs))
    assert (summary.encoded_files, summary.encoded_chunks) == (len(expected), len(docs))
    assert summary.unchanged_files == summary.removed_files == 0
    assert summary.encoded_tokens == sum(d["metadata"]["tokens"] for d in docs.values())
    status = retriever.status()
    assert (status["files"], status["chunks"], status["kind"], status["max_length"]) == (
        len(expected), len(docs), "dense", MAX_LENGTH)
    assert status["root"] == str(root.resolve())
    assert status["languages"]["python"] == sum(p.endswith(".py") for p in expected)
    assert sum(status["languages"].values()) == len(expected)
    assert status["index"]["documents"] == len(docs)
    last = json.loads((root / ".mret" / "last_run.json").read_text())
    assert last["files"] == len(expected) and last["skipped"] == dict(skipped)
    assert status["last_run"] == last


def test_chunks_cover_every_file_on_its_own_line_numbers(odd):
    from retrieval.codebase.sources import html_text

    root, retriever, _, expected, _ = odd
    tokenizer = retriever.model.backbone.tokenizer.backend
    multi = 0
    for source, chunks in by_source(documents(retriever)).items():
        text = decoded((root / source).read_bytes())
        if source.endswith(".html"):
            text = html_text(text)  # the page's text, each tag's newlines kept
        lines = editor_lines(text)
        assert [doc_id for doc_id, _ in chunks] == [f"{source}#{i}" for i in range(len(chunks))]
        assert all(d["metadata"]["chunks"] == len(chunks) for _, d in chunks)
        assert all(d["content_hash"] == hashlib.sha256(text.encode()).hexdigest() for _, d in chunks), source
        assert chunks[0][1]["start_line"] == 1, source
        assert chunks[-1][1]["end_line"] == len(lines), source
        for (_, a), (_, b) in zip(chunks, chunks[1:]):  # in order, overlapping or touching, never a gap
            assert a["start_line"] < b["start_line"] <= a["end_line"] + 1, source
        for _, doc in chunks:
            assert doc["text"] == "".join(lines[doc["start_line"] - 1:doc["end_line"]]), (source, doc["start_line"])
            # the chunk fits the model whole: re-tokenized alone with [CLS]/[SEP], nothing is truncated
            assert len(tokenizer.encode(doc["text"]).ids) <= MAX_LENGTH, source
        multi += len(chunks) > 1
    assert multi >= 15  # max_length 128 really splits the modules
    assert len(by_source(documents(retriever))["odd/formfeed.py"]) > 1
    page = by_source(documents(retriever))["odd/page.html"]
    page_text = "".join(d["text"] for _, d in page)
    assert "Harbour tides" in page_text and "<h1>" not in page_text and "script text" not in page_text
    assert decoded((root / "odd/bom.py").read_bytes()).startswith("def")  # the BOM is not part of the text
    assert by_source(documents(retriever))["odd/bom.py"][0][1]["text"].startswith("def with_bom")


# ----- 4. search
_encoded: dict[tuple, np.ndarray] = {}


def brute_force(retriever, query: str, allowed=None) -> list[tuple[str, float]]:
    """Every chunk's cosine with the query, from vectors encoded here with the index's own model, best first."""
    docs = documents(retriever)
    every = sorted(docs)
    key = (str(retriever.index_dir), retriever.vectors.generation, tuple(every))
    if key not in _encoded:  # the chunks' vectors, encoded once per index state
        _encoded[key] = retriever.model.encode_documents([docs[i]["text"] for i in every])
    ids = [i for i in every if allowed is None or allowed(docs[i]["source"])]
    if not ids:
        return []
    position = {doc_id: n for n, doc_id in enumerate(every)}
    vectors = _encoded[key][[position[i] for i in ids]]
    query_vector = retriever.model.encode_queries([query])[0]
    scores = vectors @ query_vector / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query_vector)
    return sorted(zip(ids, scores.tolist()), key=lambda item: -item[1])


def hit_ids(retriever, hits) -> list[str]:
    where = {(d["source"], d["start_line"], d["end_line"], d["text"]): i for i, d in documents(retriever).items()}
    return [where[(h.path, h.chunk_start_line, h.chunk_end_line, h.text)] for h in hits]


def assert_equal_to_brute_force(retriever, hits, expected, k):
    assert len(hits) == min(k, len(expected))
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert np.allclose(scores, [s for _, s in expected[:k]], atol=1e-4)
    exact = dict(expected)
    for doc_id, hit in zip(hit_ids(retriever, hits), hits):
        assert abs(exact[doc_id] - hit.score) <= 1e-4, doc_id


SEMANTIC = {"mode": "semantic", "rules": Rules.off()}  # the embedding ranking alone: equal to brute-force cosine
QUERIES = ["decode a JSON document into Python objects", "parse the address list of an email header",
           "MIME image subtype detection", "harbour tide tables"]


@pytest.mark.parametrize("query", QUERIES)
def test_search_equals_brute_force_cosine(odd, query):
    _, retriever, *_ = odd
    expected = brute_force(retriever, query)
    for k in (1, 7):
        assert_equal_to_brute_force(retriever, retriever.search(query, k=k, **SEMANTIC), expected, k)
    everything = retriever.search(query, k=10_000, **SEMANTIC)
    assert_equal_to_brute_force(retriever, everything, expected, 10_000)
    assert len(everything) == len(documents(retriever))


def test_hit_fields_and_snippets_come_from_the_chunk(odd):
    from retrieval.codebase.snippets import WORD, query_terms

    root, retriever, *_ = odd
    docs = documents(retriever)
    searches = [(q, None) for q in QUERIES] + [("section total value", "odd/formfeed.py"),
                                               ("windows line ends", "odd/crlf.txt"), ("tide tables", "*.html")]
    for query, path_glob in searches:
        terms = query_terms(query)
        hits = retriever.search(query, k=8, path_glob=path_glob)
        assert hits
        for hit in hits:
            doc = docs[hit_ids(retriever, [hit])[0]]
            assert (hit.path, hit.start_line, hit.end_line, hit.text) == (
                doc["source"], doc["start_line"], doc["end_line"], doc["text"])
            assert set(hit.to_json()) == {"path", "start_line", "end_line", "score", "snippet"}
            assert not Path(hit.path).is_absolute() and (root / hit.path).is_file()
            assert "\r" not in hit.snippet  # shown in a terminal: a CR would overwrite the line
            snippet = hit.snippet.split("\n")
            assert 1 <= len(snippet) <= 3 and hit.start_line <= hit.snippet_line <= hit.end_line
            chunk_lines = editor_lines(hit.text)
            offset = hit.snippet_line - hit.start_line
            for j, line in enumerate(snippet):  # consecutive lines of the chunk (dedented together)
                assert chunk_lines[offset + j].rstrip("\r\n").endswith(line) and line.strip() == \
                    chunk_lines[offset + j].strip(), (hit.path, hit.snippet_line)
            if hit.path != "odd/page.html":  # the snippet's line number points at that line of the file itself
                file_lines = editor_lines(decoded((root / hit.path).read_bytes()))
                assert file_lines[hit.snippet_line - 1].strip() == snippet[0].strip(), (hit.path, hit.snippet_line)
            chunk_words = {w.lower() for w in WORD.findall(hit.text)}
            if terms & chunk_words:  # the snippet shows a matching line when there is one
                assert terms & {w.lower() for w in WORD.findall(hit.snippet)}, (query, hit.path)


def test_a_definition_in_two_overlapping_chunks_is_one_hit(tmp_path, model_dir):
    """Chunks overlap: a short definition in the overlap starts in both, both get the definition rule and the same
    span. It is reported once, and the next candidate fills its place (k hits still come back)."""
    from retrieval.codebase.retriever import Retriever

    root = tmp_path / "tree"
    root.mkdir()
    rng = random.Random(0)
    (root / "m.py").write_text("".join(
        f"def fn_{i}():\n" + "    x = 1\n" * rng.randint(1, 6) + "    return x\n\n" for i in range(150)))
    with Retriever(root, model=model_dir, max_length=1024, show_progress=False) as retriever:
        retriever.index()
        chunks = documents(retriever).values()
        assert all(chunk["end_line"] - chunk["start_line"] > 60 for chunk in chunks)  # spans are parts of them
        defined: dict[str, list[int]] = defaultdict(list)
        for chunk in chunks:
            for name, *_ in chunk["metadata"]["symbols"]:
                defined[name].append(chunk["start_line"])
        twice = sorted(name for name, starts in defined.items() if len(starts) > 1)
        assert twice  # the case at hand: definitions in the overlaps
        for name in twice[:3]:
            hits = retriever.search(f"{name} return", k=3, mode="lexical")
            assert len(hits) == 3
            spans = [(h.path, h.start_line, h.end_line) for h in hits]
            assert len(set(spans)) == 3, spans
            lines = (root / "m.py").read_text().split("\n")
            assert hits[0].start_line == lines.index(f"def {name}():") + 1  # the definition first


def test_filters_by_path_glob_and_file_type(odd):
    from retrieval.codebase.retriever import RetrieverError

    _, retriever, *_ = odd
    query = "encode a value"
    cases = [
        ("json/*.py", None, lambda p: re.fullmatch(r"json/[^/]+\.py", p)),
        ("./json/*.py", None, lambda p: re.fullmatch(r"json/[^/]+\.py", p)),  # as the shell completes it
        (str(retriever.root / "json" / "*.py"), None, lambda p: re.fullmatch(r"json/[^/]+\.py", p)),
        (["email/mime/**", "README.md"], None, lambda p: p.startswith("email/mime/") or p == "README.md"),
        ("*.log", None, lambda p: p == "logs/keep.log"),
        (None, "python", lambda p: p.endswith(".py")),
        (None, ".PY", lambda p: p.endswith(".py")),
        (None, ["markdown", "html"], lambda p: p.endswith((".md", ".html"))),
        (None, "rst", lambda p: p.endswith(".rst")),
        ("email/**", "py", lambda p: p.startswith("email/") and p.endswith(".py")),
    ]
    for path_glob, file_type, allowed in cases:
        expected = brute_force(retriever, query, allowed)
        assert expected, (path_glob, file_type)
        hits = retriever.search(query, k=5, path_glob=path_glob, file_type=file_type, **SEMANTIC)
        assert all(allowed(h.path) for h in hits)
        assert_equal_to_brute_force(retriever, hits, expected, 5)
    assert retriever.search(query, path_glob="nowhere/**") == []
    assert retriever.search(query, file_type="cobol") == []
    for query, k in (("", 5), ("   \n", 5), ("fine", 0), ("fine", -3)):
        with pytest.raises(RetrieverError):
            retriever.search(query, k=k)


def test_file_type_follows_ripgrep_types(tmp_path, model_dir):
    """`--type` selects ripgrep's type globs: text is *.txt only (not Makefile, LICENSE or dotfiles, which have no
    extension), cpp includes the .h/.hh/.hpp headers, and a header is C as well."""
    from retrieval.codebase.retriever import Retriever

    root = tmp_path / "tree"
    files = {"Makefile": "all:\n\tcc -o tool main.c\n", "LICENSE": "Permission is hereby granted\n",
             ".editorconfig": "root = true\n", "notes.txt": "build notes for the tool\n",
             "main.c": "int main(void) { return 0; }\n", "api.h": "int api(void);\n",
             "util.hh": "struct Util {};\n", "vec.hpp": "template <class T> struct Vec {};\n",
             "vec.cc": "#include \"vec.hpp\"\n", "tool.py": "def tool():\n    return 1\n"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
        assert {d["source"] for d in documents(retriever).values()} == set(files)
        for file_type, expected in (("text", {"notes.txt"}), ("txt", {"notes.txt"}),
                                    ("cpp", {"api.h", "util.hh", "vec.hpp", "vec.cc"}), ("c", {"main.c", "api.h"}),
                                    ("hh", {"util.hh"}), ("py", {"tool.py"})):
            hits = retriever.search("the tool", k=50, file_type=file_type, **SEMANTIC)
            assert {h.path for h in hits} == expected, file_type


def test_remove_a_file_and_a_folder(tmp_path, model_dir, monkeypatch):
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = tmp_path / "tree"
    copy_package(json, root / "json")
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text("on: push\njobs:\n  test:\n    runs-on: ubuntu\n")
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
        sources = lambda: {d["source"] for d in documents(retriever).values()}  # noqa: E731
        assert ".github/workflows/ci.yml" in sources()
        monkeypatch.chdir(root)
        assert retriever.remove(".github")[0] == 1  # a folder whose name starts with a dot
        assert retriever.remove(root / "json" / "decoder.py")[0] == 1  # absolute, under the root
        monkeypatch.chdir(tmp_path)
        assert retriever.remove("json/scanner.py")[0] == 1  # relative to the root, from elsewhere
        assert sources() == {"json/__init__.py", "json/encoder.py", "json/tool.py"}
        assert all(h.path in sources() for h in retriever.search("scanner decoder workflow", k=100))
        with pytest.raises(RetrieverError, match="nothing indexed"):
            retriever.remove("json/decoder.py")
        with pytest.raises(RetrieverError, match="not under"):
            retriever.remove(tmp_path / "elsewhere")
        left = len(documents(retriever))
        assert retriever.remove(root) == (3, left)  # the root itself: everything
        assert retriever.status()["files"] == 0 and retriever.search("anything") == []
        summary = retriever.index()  # the next run takes everything back
        assert summary.encoded_files == 6 and retriever.status()["files"] == 6


def test_remove_a_root_relative_path_from_a_subfolder_and_refuse_the_root(tmp_path, model_dir, monkeypatch):
    """`mret remove sub/f2.py` typed inside sub/ (a path relative to the root, not to here); `..` out of the root is
    refused; `whole_root=False` (the command line) refuses the root itself."""
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    for name in ("f1.py", "sub/f2.py", "sub/f3.py"):
        (root / name).write_text(f"def {name.replace('/', '_')[:-3]}():\n    return 1\n")
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
        monkeypatch.chdir(root / "sub")
        assert retriever.remove("sub/f2.py")[0] == 1  # not ./sub/f2.py on disk nor indexed: relative to the root
        assert retriever.remove("f3.py")[0] == 1  # relative to here, as before
        with pytest.raises(RetrieverError, match="not under the indexed root"):
            retriever.remove("../../elsewhere.py")
        for here, path in ((root / "sub", ".."), (root / "sub", root), (root, "."), (root, ""), (tmp_path, ".")):
            monkeypatch.chdir(here)  # (".", from outside the root: the root, read as relative to it)
            with pytest.raises(RetrieverError, match=r"delete its folder .*mret index --rebuild"):
                retriever.remove(path, whole_root=False)
        assert retriever.status()["files"] == 1


def test_a_newer_or_mistyped_config_and_a_damaged_last_run(tmp_path):
    """config.json from a newer modernretrieval is refused (read and rewritten here, its new keys would be lost);
    fields of the wrong type are one line; a damaged last_run.json (only a report) reads as none."""
    from retrieval.codebase.config import FORMAT, IndexConfig, RetrieverError, read_last_run

    good = {"format": FORMAT, "root": str(tmp_path), "model": "m", "kind": "dense", "max_length": 128,
            "max_length_setting": 0, "dim": 8, "index": "index", "pool_factor": 1}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(good))
    assert IndexConfig.read(tmp_path).format == FORMAT
    path.write_text(json.dumps({**good, "format": FORMAT + 1, "new_key": 1}))
    with pytest.raises(RetrieverError, match="newer modernretrieval.*upgrade"):
        IndexConfig.read(tmp_path)
    for key, bad in (("format", "1"), ("format", 1.5), ("format", True), ("max_length", "128"), ("dim", None),
                     ("max_length_setting", 1.0), ("root", 3), ("model", ["m"]), ("index", 1)):
        path.write_text(json.dumps({**good, key: bad}))
        with pytest.raises(RetrieverError) as error:
            IndexConfig.read(tmp_path)
        assert "\n" not in str(error.value) and (key in str(error.value) or "format" in str(error.value)), key
    assert read_last_run(tmp_path) is None
    for damaged in (b"{not json", b"\xff\xfe", b"[1, 2]"):
        (tmp_path / "last_run.json").write_bytes(damaged)
        assert read_last_run(tmp_path) is None
    (tmp_path / "last_run.json").write_text('{"encoded_files": 3}')
    assert read_last_run(tmp_path) == {"encoded_files": 3}


# ----- 2. incremental runs
class Counting:
    """Counts model loads, documents encoded (their texts) and files read, across Retriever instances."""

    def __init__(self, monkeypatch):
        import retrieval.codebase.indexing as indexing
        import retrieval.codebase.retriever as module

        self.loads, self.texts, self.reads = 0, [], []
        load_head, read_source = module.load_head, indexing.read_source

        def counting_load(*args, **kwargs):
            self.loads += 1
            model = load_head(*args, **kwargs)
            encode = model.encode_documents

            def counting_encode(texts, **kw):
                self.texts += list(texts)
                return encode(texts, **kw)

            model.encode_documents = counting_encode
            return model

        def counting_read(file, *args, **kwargs):
            self.reads.append(file.path)
            return read_source(file, *args, **kwargs)

        monkeypatch.setattr(module, "load_head", counting_load)
        monkeypatch.setattr(indexing, "read_source", counting_read)

    def reset(self):
        self.loads, self.texts, self.reads = 0, [], []


def test_incremental_runs_read_load_and_encode_only_what_changed(tmp_path, model_dir, monkeypatch):
    from retrieval.codebase.retriever import Retriever

    root = tmp_path / "tree"
    copy_package(json, root / "json")
    (root / "docs").mkdir()
    (root / "docs" / "guide.md").write_text("# Guide\n\nHow the decoder scans strings.\n\n## Numbers\n\nFloats.\n")
    (root / "docs" / "notes.txt").write_text("short notes\n")
    (root / "blob.bin").write_bytes(b"\x00" * 64)  # skipped every run, never indexed
    counting = Counting(monkeypatch)

    def run(**kwargs):
        counting.reset()
        with Retriever(root, model=model_dir, max_length=MAX_LENGTH, max_file_bytes=MAX_BYTES, show_progress=False,
                       **kwargs) as retriever:
            summary = retriever.index()
            return summary, retriever._model is None, documents(retriever), retriever

    first, _, docs, _ = run()
    assert counting.loads == 1 and first.encoded_files == first.files == 7
    assert sorted(counting.texts) == sorted(d["text"] for d in docs.values())

    # no change: nothing read (but the binary file, which is never indexed), nothing loaded or encoded
    summary, not_loaded, again, _ = run()
    assert not_loaded and counting.loads == 0 and counting.texts == [] and counting.reads == ["blob.bin"]
    assert (summary.encoded_files, summary.unchanged_files, summary.files, summary.chunks) == (0, 7, 7, len(docs))
    assert again == docs

    # touched (new mtime, same bytes): read once, not encoded, not loaded; the next run does not read it again
    decoder = root / "json" / "decoder.py"
    os.utime(decoder, ns=(decoder.stat().st_atime_ns, decoder.stat().st_mtime_ns + 5_000_000_000))
    summary, not_loaded, again, _ = run()
    assert not_loaded and counting.texts == [] and sorted(counting.reads) == ["blob.bin", "json/decoder.py"]
    assert summary.encoded_files == 0 and summary.unchanged_files == 7
    assert {i: {**d, "metadata": {**d["metadata"], "mtime_ns": 0}} for i, d in again.items()} == \
        {i: {**d, "metadata": {**d["metadata"], "mtime_ns": 0}} for i, d in docs.items()}
    assert {d["metadata"]["mtime_ns"] for d in again.values() if d["source"] == "json/decoder.py"} == \
        {decoder.stat().st_mtime_ns}
    run()
    assert counting.reads == ["blob.bin"]

    # one file changed (and shorter: fewer chunks): only its new chunks are encoded; its old extra chunks are gone
    old_count = sum(d["source"] == "json/encoder.py" for d in docs.values())
    assert old_count >= 3
    (root / "json" / "encoder.py").write_text('"""Now a tiny module."""\n\ndef encode_tiny(value):\n'
                                              '    return repr(value)\n')
    summary, _, docs, _ = run()
    assert counting.loads == 1 and summary.encoded_files == 1 and summary.unchanged_files == 6
    # (the encoding pipeline hands texts to the model longest first: compared as collections)
    assert sorted(counting.texts) == sorted(d["text"] for d in docs.values() if d["source"] == "json/encoder.py")
    assert sorted(i for i in docs if i.startswith("json/encoder.py#")) == ["json/encoder.py#0"]
    assert docs["json/encoder.py#0"]["text"].startswith('"""Now a tiny module.')

    # a file that grows (more chunks than before, the same ids among them): replaced whole, in one commit
    (root / "json" / "decoder.py").write_text((root / "json" / "decoder.py").read_text() + "".join(
        f"\n\ndef appended_{i}(text):\n    \"\"\"Appended helper {i}.\"\"\"\n    return text[{i}:]\n"
        for i in range(30)))
    old_count = sum(d["source"] == "json/decoder.py" for d in docs.values())
    summary, _, docs, _ = run()
    new_ids = sorted((i for i in docs if i.startswith("json/decoder.py#")), key=lambda i: int(i.split("#")[1]))
    assert summary.encoded_files == 1 and len(new_ids) > old_count
    assert new_ids == [f"json/decoder.py#{i}" for i in range(len(new_ids))]
    assert sorted(counting.texts) == sorted(docs[i]["text"] for i in new_ids)
    assert "appended_29" in docs[new_ids[-1]]["text"]

    # a new file in a new folder, and a deleted one: only the new one is encoded
    (root / "extra").mkdir()
    (root / "extra" / "tides.py").write_text("def high_tide(hour):\n    return hour % 12 == 6\n")
    (root / "json" / "scanner.py").unlink()
    summary, _, docs, retriever = run()
    assert summary.encoded_files == 1 and summary.removed_files == 1 and summary.files == 7
    assert counting.texts == [docs["extra/tides.py#0"]["text"]]
    assert not any(d["source"] == "json/scanner.py" for d in docs.values())
    with Retriever.open(root / ".mret") as retriever:
        hits = retriever.search("scanner py_make_scanner", k=1000)
        assert len(hits) == len(docs) and all(h.path != "json/scanner.py" for h in hits)
        assert retriever.status()["files"] == 7 and retriever.status()["chunks"] == len(docs)
        assert retriever.search("scanner", path_glob="json/scanner.py") == []

    # a deletion alone needs no model
    (root / "docs" / "notes.txt").unlink()
    summary, not_loaded, docs, _ = run()
    assert not_loaded and summary.removed_files == 1 and summary.files == 6

    # a folder newly ignored (.mretignore): its files leave the index, no model loaded
    (root / "docs" / "more.md").write_text("# More\n\nmore docs\n")
    run()
    (root / ".mretignore").write_text("docs/more.md\n")
    summary, not_loaded, docs, _ = run()
    assert not_loaded and summary.removed_files == 1 and summary.skipped["ignored (.gitignore/.mretignore)"] == 1
    assert not any(d["source"] == "docs/more.md" for d in docs.values())

    # a file that becomes empty, and one that becomes binary: removed, counted as skipped, no model loaded
    (root / "docs" / "guide.md").write_text("\n\n")
    (root / "extra" / "tides.py").write_bytes(b"\x00\x01\x02 not text any more")
    summary, not_loaded, docs, _ = run()
    assert not_loaded and summary.removed_files == 2 and summary.files == 4
    assert summary.skipped == {"binary": 2, "empty": 1, "ignored (.gitignore/.mretignore)": 1}
    assert {d["source"] for d in docs.values()} == {"json/__init__.py", "json/decoder.py", "json/encoder.py",
                                                     "json/tool.py"}

    # and the incremental index is the index a fresh run of the final tree builds
    with Retriever(root, index_dir=tmp_path / "fresh", model=model_dir, max_length=MAX_LENGTH,
                   max_file_bytes=MAX_BYTES, show_progress=False) as fresh:
        fresh.index()
        assert documents(fresh) == docs


def test_a_moved_tree_keeps_its_index(tmp_path, model_dir):
    from retrieval.codebase.retriever import Retriever

    root = tmp_path / "tree"
    copy_package(json, root / "json")
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
        before = [(h.path, h.start_line, h.score) for h in retriever.search(QUERIES[0], k=5)]
    moved = shutil.move(root, tmp_path / "moved")
    with Retriever.open(Path(moved) / ".mret") as retriever:  # found by `mret search`/`remove`, before any index
        assert retriever.root == Path(moved).resolve() and retriever.status()["root"] == str(retriever.root)
        assert retriever._relative(Path(moved) / "json" / "decoder.py") == "json/decoder.py"
    with Retriever(moved, show_progress=False) as retriever:  # .mret moved with the tree
        summary = retriever.index()
        assert retriever._model is None and summary.encoded_files == 0 and summary.unchanged_files == 5
        assert retriever.status()["root"] == str(Path(moved).resolve())
    assert Retriever.find(Path(moved) / "json") == Path(moved).resolve() / ".mret"
    with Retriever.open(Path(moved) / ".mret") as retriever:  # exact: the same files, model and query, one path
        assert [(h.path, h.start_line, h.score) for h in retriever.search(QUERIES[0], k=5)] == before


def test_files_from_indexes_exactly_the_list(tmp_path, model_dir):
    from retrieval.codebase.retriever import Retriever

    root = tmp_path / "tree"
    copy_package(json, root / "json")
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        summary = retriever.index(["json/decoder.py", str(root / "json" / "scanner.py"), "# a comment", "",
                                   "json/decoder.py", "json/missing.py", "../outside.py"])
        assert {d["source"] for d in documents(retriever).values()} == {"json/decoder.py", "json/scanner.py"}
        assert summary.skipped == {"missing or unreadable": 1, "outside the indexed root": 1}
        summary = retriever.index(["json/scanner.py"])  # what is not listed any more is removed
        assert summary.removed_files == 1 and {d["source"] for d in documents(retriever).values()} == {
            "json/scanner.py"}


def test_a_lowered_size_limit_removes_the_files_now_over_it(tmp_path, model_dir):
    from retrieval.codebase.retriever import Retriever

    root = tmp_path / "tree"
    copy_package(json, root / "json")
    largest = max((root / "json").glob("*.py"), key=lambda p: p.stat().st_size)
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        assert retriever.index().files == 5
    limit = largest.stat().st_size - 1
    with Retriever(root, max_file_bytes=limit, show_progress=False) as retriever:
        summary = retriever.index()  # the file did not change; the limit did
        assert summary.removed_files == 1 and summary.files == 4
        assert summary.skipped == {f"larger than {limit // 1024} KiB": 1}


def test_a_list_that_names_no_file_leaves_the_index_as_it_was(tmp_path, model_dir):
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = tmp_path / "tree"
    copy_package(json, root / "json")
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
        for files, message in (([], "the file list is empty"), (["", "# none"], "the file list is empty"),
                               (["decoder.py", "json/missing.py"], "none of the 2 paths listed")):
            with pytest.raises(RetrieverError, match=message):
                retriever.index(files)
        assert retriever.status()["files"] == 5


def test_a_first_run_never_writes_into_the_tree_a_file_or_a_folder_of_other_files(tmp_path, model_dir):
    from indexes import FaissIndex
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = tmp_path / "tree"
    copy_package(json, root / "json")
    (root / "index").mkdir()
    (root / "index" / "important.txt").write_text("mine\n")
    (tmp_path / "a-file").write_text("x\n")
    for index_dir, message in ((root, "is the tree itself"), (tmp_path / "a-file", "is a file"),
                               (root / "index", "holds files that are not an index"),
                               (tmp_path / "mine", "holds files that are not an index")):
        if index_dir.name == "mine":
            (index_dir / "index").mkdir(parents=True)
            (index_dir / "index" / "notes.txt").write_text("mine too\n")
        retriever = Retriever(root, index_dir=index_dir, model=model_dir, max_length=MAX_LENGTH, show_progress=False)
        with pytest.raises(RetrieverError, match=message):
            retriever.index()
        assert retriever._model is None  # refused before the model loads
    assert (root / "index" / "important.txt").read_text() == "mine\n"
    assert (tmp_path / "mine" / "index" / "notes.txt").exists()
    FaissIndex.create(tmp_path / "killed" / "index", dim=8, kind="flat").close()  # what a killed first run leaves
    with Retriever(root, index_dir=tmp_path / "killed", model=model_dir, max_length=MAX_LENGTH,
                   show_progress=False) as retriever:
        assert retriever.index().files == 6  # the json package and the tree's own index/important.txt


def test_settings_are_fixed_when_the_index_is_created(tmp_path, model_dir):
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text("def a():\n    return 1\n")
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
    other = shutil.copytree(model_dir, tmp_path / "other-model")
    for kwargs in ({"model": other}, {"max_length": 256}, {"kind": "colbert"}):
        with pytest.raises(RetrieverError, match="was built with"):
            Retriever(root, **kwargs)
    Retriever(root, model=model_dir, max_length=MAX_LENGTH, kind="dense").close()  # the same settings are fine
    with pytest.raises(RetrieverError, match="not a folder"):
        Retriever(root / "a.py")
    with pytest.raises(RetrieverError, match="no index"):
        Retriever.open(tmp_path / "nothing")


@pytest.mark.parametrize("max_length", [5, 20])
def test_a_max_length_too_small_is_a_user_error_that_leaves_no_index(tmp_path, model_dir, max_length):
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text("def a():\n    return 1\n")
    with pytest.raises(RetrieverError, match="max.length"):
        Retriever(root, model=model_dir, max_length=max_length, show_progress=False).index()
    assert not (root / ".mret" / "config.json").exists()  # nothing half made that the next run would reuse
    with Retriever(root, model=model_dir, max_length=64, show_progress=False) as retriever:
        assert retriever.index().files == 1


# ----- 3. kill safety
def snapshot(index_dir: Path, queries: list[str]) -> tuple[dict, list]:
    from retrieval.codebase.retriever import Retriever

    with Retriever.open(index_dir) as retriever:
        retriever.vectors.verify()
        docs = documents(retriever)
        results = [[(h.path, h.start_line, h.end_line, h.score) for h in retriever.search(q, k=8)] for q in queries]
    return docs, results


def test_killed_runs_end_in_the_same_index_as_an_uninterrupted_one(tmp_path, model_dir):
    from retrieval.codebase.retriever import Retriever

    root = tmp_path / "tree"
    copy_package(json, root / "json")
    copy_package(email, root / "email")
    args = {"root": str(root), "index_dir": str(root / ".mret"), "model": str(model_dir), "max_length": MAX_LENGTH,
            "batch_tokens": 1500, "max_file_bytes": MAX_BYTES, "sleep": 0.02}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    rng = random.Random(7)
    # (batches to see begin, then a random delay: inside the sleep, the encoding or the commit); None: while loading
    plan = [None, 3, 6, 4]  # of 17 batches (a file or more each)
    counts = []
    for after in plan:
        child = subprocess.Popen([sys.executable, str(CHILD), json.dumps(args)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        try:
            if after is None:
                time.sleep(rng.uniform(0.3, 1.0))
            else:
                for _ in range(after):
                    line = child.stdout.readline()
                    assert line.startswith("encode"), (line, child.stderr.read() if not line else "")
                time.sleep(rng.uniform(0.0, 0.06))
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait()
            child.stdout.close()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        if (root / ".mret" / "config.json").exists():
            with Retriever.open(root / ".mret") as killed:
                killed.vectors.verify()  # a killed run leaves a whole index: its last commit
                counts.append(len(killed.vectors))
    assert len(counts) >= len(plan) - 1 and counts == sorted(counts) and counts[-1] > 0  # each run got further
    final = subprocess.run([sys.executable, str(CHILD), json.dumps({**args, "sleep": 0})], capture_output=True,
                           text=True, cwd=ROOT, env=env, timeout=120)
    assert final.returncode == 0, final.stderr
    assert final.stdout.splitlines()[-1].startswith("done")
    assert json.loads((root / ".mret" / "last_run.json").read_text())["encoded_files"] > 0

    with Retriever(root, index_dir=tmp_path / "clean", model=model_dir, max_length=MAX_LENGTH, batch_tokens=1500,
                   max_file_bytes=MAX_BYTES, show_progress=False) as clean:
        summary = clean.index()
    assert summary.files >= 20 and summary.chunks > counts[-1]
    queries = QUERIES + ["quoted printable encoding of a header", "charset aliases"]
    killed_docs, killed_results = snapshot(root / ".mret", queries)
    clean_docs, clean_results = snapshot(tmp_path / "clean", queries)
    assert set(killed_docs) == set(clean_docs)
    assert killed_docs == clean_docs  # source, spans, hash, text, metadata (mtime, size, tokens, chunk numbers)
    for killed, clean_hits in zip(killed_results, clean_results):
        assert np.allclose([h[3] for h in killed], [h[3] for h in clean_hits], atol=1e-4)
        # the same chunks in the same order (chunks of equal text tie, and may come in either order)
        canonical = lambda hits: sorted(hits, key=lambda h: (-round(h[3], 4), h[:3]))  # noqa: E731
        assert [h[:3] for h in canonical(killed)] == [h[:3] for h in canonical(clean_hits)]


# ----- 6. ColBERT with a PLAID index
def test_colbert_plaid_index_follows_a_changed_file(tmp_path, monkeypatch):
    if not (PYLATE_MODEL / "modules.json").exists():
        pytest.skip(f"the PyLate ColBERT fixture is not at {PYLATE_MODEL} (../shared is missing)")
    from retrieval.codebase.retriever import Retriever

    topics = {
        "animals.txt": "zebras migrate across the savanna grasslands every dry season",
        "cooking.md": "# Bread\n\nknead the sourdough and let it rise overnight in a warm kitchen",
        "space.py": "def orbit_period(radius):\n    \"\"\"Kepler: the orbit period grows with the radius.\"\"\"\n"
                    "    return radius ** 1.5\n",
        "music.txt": "the violin section tunes to the oboe before the symphony starts",
        "weather.txt": "thunderstorms bring heavy rain and hail to the northern valleys",
        "long.md": "".join(f"## Chapter {i}\n\nsailors chart the coastline and record the depth of bay {i}\n\n"
                           for i in range(12)),
    }
    root = tmp_path / "tree"
    root.mkdir()
    for name, text in topics.items():
        (root / name).write_text(text + "\n")
    counting = Counting(monkeypatch)

    def run():
        counting.reset()
        with Retriever(root, model=PYLATE_MODEL, kind="colbert", max_length=64, show_progress=False) as retriever:
            return retriever.index(), retriever._model is None

    summary, _ = run()
    assert summary.files == 6 and summary.chunks > 6  # long.md is cut into several chunks of 64 tokens
    with Retriever.open(root / ".mret") as retriever:
        assert retriever.status()["kind"] == "colbert" and retriever.status()["index"]["kind"] == "plaid"
        assert retriever.vectors.codec is not None
        top = retriever.search(topics["animals.txt"], k=3)
        assert top[0].path == "animals.txt" and top[0].text == topics["animals.txt"] + "\n"
        assert [h.score for h in top] == sorted((h.score for h in top), reverse=True)

    summary, not_loaded = run()
    assert not_loaded and summary.encoded_files == 0 and summary.unchanged_files == 6

    new = "volcanic eruptions reshape the island coastline and bury the old harbour"
    (root / "animals.txt").write_text(new + "\n")
    summary, _ = run()
    assert summary.encoded_files == 1 and summary.files == 6 and counting.texts == [new + "\n"]
    with Retriever.open(root / ".mret") as retriever:
        top = retriever.search(new, k=3)
        assert top[0].path == "animals.txt" and top[0].text == new + "\n" and top[0].start_line == 1
        every = retriever.search("zebras migrate across the savanna", k=100)
        assert all("zebras" not in h.text for h in every)
        assert len({(h.path, h.start_line) for h in every}) == len(every)


def test_the_next_batch_is_encoded_while_the_current_one_commits(tmp_path, model_dir, monkeypatch):
    """The overlapped pipeline: while batch i commits, batch i+1 is already being encoded (encoding.ahead); what
    is committed is the same as without the overlap."""
    import threading

    from indexes.base import VectorIndex
    from retrieval.codebase import indexing
    from retrieval.codebase.retriever import Retriever

    copy_package(json, tmp_path / "tree" / "json")
    encodes, commits, overlapped, patience = [0], [0], [], [10.0]
    changed = threading.Condition()
    real_encode, real_commit = indexing.encode_texts, VectorIndex._commit_batches

    def encode(*args, **kwargs):
        with changed:
            encodes[0] += 1
            changed.notify_all()
        return real_encode(*args, **kwargs)

    def commit(self, batches, expected_tokens):
        commits[0] += 1
        with changed:  # the next batch's encoding starts before this commit ends (the last one has no next)
            overlapped.append(changed.wait_for(lambda: encodes[0] > commits[0], timeout=patience[0]))
        return real_commit(self, batches, expected_tokens)

    monkeypatch.setattr(indexing, "encode_texts", encode)
    monkeypatch.setattr(VectorIndex, "_commit_batches", commit)
    runs = {}
    for overlap in (True, False):
        with Retriever(tmp_path / "tree", index_dir=tmp_path / f"index-{overlap}", model=model_dir,
                       max_length=MAX_LENGTH, batch_tokens=1000) as retriever:
            retriever.settings.overlap = overlap
            patience[0] = 10.0 if overlap else 0.05  # without the overlap the wait can only time out
            encodes[0] = commits[0] = 0
            overlapped.clear()
            retriever.index()
            runs[overlap] = documents(retriever), list(overlapped)
    with_overlap, without = runs[True][1], runs[False][1]
    assert len(with_overlap) >= 3 and all(with_overlap[:-1])  # every commit but the last met the next encode
    assert not any(without[:-1])
    assert runs[True][0] == runs[False][0]
