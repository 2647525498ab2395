"""retrieval.codebase.sources (the walk, --files-from lists, the readers) and retrieval.codebase.chunking (windows of whole lines on the
real ModernBERT tokenizer). Expectations are written by hand or computed here independently of the modules: line
numbers by counting "\\n", token counts by tokenizing each chunk's text on its own."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from retrieval.codebase.chunking import Chunk, chunk_text
from retrieval.codebase.sources import LANGUAGES, TYPES, SkippedFile, SourceFile, files_under, html_text, is_code, \
    language_of, listed, matches_type, read_source, walk

EXCLUDED = "excluded folder (vendored, build, cache)"
IGNORED = "ignored (.gitignore/.mretignore)"


def write(root: Path, relative: str, content: str | bytes = "x = 1\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def source(path: Path, relative: str | None = None) -> SourceFile:
    info = path.stat()
    return SourceFile(relative or path.name, path, info.st_size, info.st_mtime_ns)


def paths(found) -> list[str]:
    return [f.path for f in found.files]


# ----------------------------------------------------------------------------------------------------------- walk
def test_walk_order_is_sorted_per_folder_whatever_the_creation_order(tmp_path):
    names = ["src/sub/m.py", "src/z.py", "docs/x.md", "b.py", "src/a.py", "a.txt", "A.md"]
    for name in names:  # created in no particular order
        write(tmp_path, name)
    found = walk(tmp_path)
    # os.walk top-down: a folder's files (sorted), then its subfolders (sorted), depth first
    assert paths(found) == ["A.md", "a.txt", "b.py", "docs/x.md", "src/a.py", "src/z.py", "src/sub/m.py"]
    assert not found.skipped
    for f in found.files:
        assert f.absolute == tmp_path.resolve() / f.path
        assert f.size == (tmp_path / f.path).stat().st_size == len("x = 1\n")
        assert f.mtime_ns == (tmp_path / f.path).stat().st_mtime_ns
    assert paths(walk(tmp_path)) == paths(found)


def test_walk_prunes_and_counts_excluded_folders(tmp_path):
    for name in ["node_modules/x.js", ".git/HEAD", "build/out.py", "pkg.egg-info/PKG-INFO", "__pycache__/m.py",
                 "src/vendor/v.py", "src/node_modules/a/node_modules/b.js", ".venv/lib/site.py", "dist/app.js",
                 "src/ok.py", "build.py", "src/target.py", "out/index.db", "out/notes.txt"]:
        write(tmp_path, name)
    found = walk(tmp_path, exclude=[tmp_path / "out"])
    assert paths(found) == ["build.py", "src/ok.py", "src/target.py"]
    # node_modules, .git, build, pkg.egg-info, __pycache__, .venv, dist at the root, vendor and node_modules in
    # src; the nested node_modules is never visited, and out (the exclude argument: an index folder) is passed
    # silently, so neither is counted
    assert found.skipped == {EXCLUDED: 9}


def test_walk_ignore_files_nested_deepest_wins_and_negation(tmp_path):
    write(tmp_path, ".gitignore", "*.log\n/secret.txt\ndocs/\n!keep.log\nnotes.md\n")
    write(tmp_path, ".mretignore", "# ours\n!notes.md\n*.csv\n")
    write(tmp_path, "src/.gitignore", "!important.log\n*.tmp\n")
    write(tmp_path, "src/.mretignore", "generated.py\n")
    write(tmp_path, "src/deep/.gitignore", "!*.tmp\n")
    kept = ["a.py", "keep.log", "notes.md", "src/important.log", "src/main.py", "src/secret.txt", "src/deep/y.tmp"]
    ignored_files = ["app.log", "secret.txt", "data.csv", "src/debug.log", "src/x.tmp", "src/generated.py",
                     "src/deep/z.log"]
    ignored_folders = ["docs/readme.md", "src/docs/guide.md"]
    for name in reversed(kept + ignored_files + ignored_folders):
        write(tmp_path, name)
    found = walk(tmp_path)
    assert paths(found) == kept  # .gitignore and .mretignore themselves are neither indexed nor counted
    assert found.skipped == {IGNORED: len(ignored_files) + len(ignored_folders)}


def test_walk_skips_an_ignore_files_invalid_lines_as_git_does(tmp_path):
    write(tmp_path, ".mretignore", "*.log\n!\nsecret\\\n")  # "!" alone and a trailing backslash: not patterns
    for name in ("a.py", "b.log", "secret\\"):
        write(tmp_path, name)
    found = walk(tmp_path)
    assert paths(found) == ["a.py", "secret\\"] and found.skipped == {IGNORED: 1}


def test_walk_ignore_rules_of_a_folder_do_not_apply_beside_it(tmp_path):
    write(tmp_path, "a/.gitignore", "*.py\n")
    write(tmp_path, "a/x.py")
    write(tmp_path, "a/x.md")
    write(tmp_path, "b/x.py")
    found = walk(tmp_path)
    assert paths(found) == ["a/x.md", "b/x.py"]
    assert found.skipped == {IGNORED: 1}


def test_walk_skips_symlinks(tmp_path):
    write(tmp_path, "real.py")
    write(tmp_path, "realdir/x.py")
    try:
        os.symlink(tmp_path / "real.py", tmp_path / "link.py")
        os.symlink(tmp_path / "realdir", tmp_path / "linkdir", target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not supported here")
    found = walk(tmp_path)
    assert paths(found) == ["real.py", "realdir/x.py"]
    assert found.skipped == {"symlink": 2}


# --------------------------------------------------------------------------------------------------------- listed
def test_listed_files_from(tmp_path):
    root = tmp_path / "root"
    write(root, "a.py")
    write(root, "src/b.py", "print(1)\n")
    write(root, "node_modules/c.js")
    outside = write(tmp_path, "outside.txt")
    (root / "folder").mkdir()
    entries = ["a.py", "  src/b.py  ", "", "# a comment", str(root / "node_modules" / "c.js"), "../outside.txt",
               str(outside), "missing.py", "folder", "a.py", "src/../a.py"]
    found = listed(root, entries)
    assert paths(found) == ["a.py", "src/b.py", "node_modules/c.js"]  # list order, each once
    assert found.skipped == {"outside the indexed root": 2, "missing or unreadable": 1, "not a regular file": 1}
    b = found.files[1]
    assert (b.absolute, b.size) == (root.resolve() / "src" / "b.py", len("print(1)\n"))
    os.symlink(root / "loop", root / "loop")
    odd = listed(root, ["a.py", "bad\0name.py", "loop/x.py"])  # a NUL in a name, a symlink loop: skipped, no crash
    assert paths(odd) == ["a.py"] and odd.skipped == {"not a valid path": 2}


# ---------------------------------------------------------------------------------------------------- read_source
@pytest.mark.parametrize("name, content, reason", [
    ("photo.png", b"plain text really\n", "binary"),
    ("model.SafeTensors", b"plain text\n", "binary"),
    ("blob.unknown", b"abc\0def\n", "binary"),
    ("blob.py", b"x = 1\n" + b"\0" * 4, "binary"),
    ("package-lock.json", b"{}\n", "generated (lock file, minified, source map)"),
    ("Cargo.lock", b"x\n", "generated (lock file, minified, source map)"),
    ("go.sum", b"x\n", "generated (lock file, minified, source map)"),
    ("app.min.js", b"var a=1;\n", "generated (lock file, minified, source map)"),
    ("APP.MIN.CSS", b"a{}\n", "generated (lock file, minified, source map)"),
    ("app.js.map", b"{}\n", "generated (lock file, minified, source map)"),
    ("empty.py", b"", "empty"),
    ("blank.md", b"  \n\t\n\n", "empty"),
    ("latin1.txt", "café\n".encode("latin-1"), "not UTF-8 or UTF-16 text"),
    ("only_script.html", b"<html><script>\nalert(1)\n</script></html>\n", "empty"),
])
def test_read_source_skips(tmp_path, name, content, reason):
    file = source(write(tmp_path, name, content))
    with pytest.raises(SkippedFile) as raised:
        read_source(file)
    assert raised.value.reason == reason


def test_read_source_refuses_utf32(tmp_path):
    """UTF-32 starts with the UTF-16 LE byte order mark; it must be refused, not read as UTF-16."""
    file = source(write(tmp_path, "wide.txt", "hello world\n".encode("utf-32")))
    with pytest.raises(SkippedFile):
        read_source(file)


def test_read_source_size_limit(tmp_path):
    file = source(write(tmp_path, "a.txt", "x" * 2047 + "\n"))
    assert read_source(file, max_bytes=2048) == "x" * 2047 + "\n"  # exactly at the limit
    with pytest.raises(SkippedFile) as raised:
        read_source(file, max_bytes=2047)
    assert raised.value.reason == "larger than 1 KiB"
    big = source(write(tmp_path, "big.py", b"#" * ((1 << 20) + 1)))
    with pytest.raises(SkippedFile) as raised:
        read_source(big)  # the default limit is 1 MiB
    assert raised.value.reason == "larger than 1024 KiB"


TEXT = "naïve café 北京 🤖\r\nline two\n"


@pytest.mark.parametrize("encoded", [
    TEXT.encode("utf-8"),
    b"\xef\xbb\xbf" + TEXT.encode("utf-8"),
    b"\xff\xfe" + TEXT.encode("utf-16-le"),
    b"\xfe\xff" + TEXT.encode("utf-16-be"),
], ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom"])
def test_read_source_decodes(tmp_path, encoded):
    assert read_source(source(write(tmp_path, "t.txt", encoded))) == TEXT  # no BOM, line ends as they are


def test_read_source_utf16_without_bom_is_refused(tmp_path):
    file = source(write(tmp_path, "t.txt", "plain ascii\n".encode("utf-16-le")))
    with pytest.raises(SkippedFile) as raised:
        read_source(file)
    assert raised.value.reason == "binary"


# ----------------------------------------------------------------------------------------------------------- HTML
HTML = """<!DOCTYPE html>
<html>
<head>
<title>Page &amp; title</title>
<style>
body { color: red; }
</style>
<script type="text/javascript">
var secretScript = 1;
alert("x");
</script>
</head>
<body>
<!-- a comment
  spanning lines -->
<p class="intro"
   id="first">Hello &lt;world&gt;</p>
<noscript>
noscriptText
</noscript>
<ul><li>Home</li><li>About</li></ul>
<a href="/x"
  >linked</a
>
<pre>keep   spaces</pre>
<?processing instruction
  over two lines?>
<div><![CDATA[
raw
]]></div>
<br/>After break
</body>
</html>
"""


def test_html_text_keeps_line_numbers_and_drops_hidden_parts():
    out = html_text(HTML)
    source_lines, text_lines = HTML.split("\n"), out.split("\n")
    assert len(text_lines) == len(source_lines)

    def line_of(needle: str, lines: list[str]) -> int:
        return next(i for i, line in enumerate(lines) if needle in line)

    for needle in ["Page", "Hello", "linked", "keep   spaces", "After break"]:
        assert line_of(needle, text_lines) == line_of(needle, source_lines), needle
    assert text_lines[line_of("Page", source_lines)].strip() == "Page & title"
    assert text_lines[line_of("Hello", source_lines)].strip() == "Hello <world>"
    for hidden in ["color", "secretScript", "alert", "comment", "spanning", "noscriptText", "href", "intro",
                   "processing", "raw", "<p", "</", "<!", "<?"]:
        assert hidden not in out, hidden
    # text in separate block elements does not run together
    assert "HomeAbout" not in out
    assert re.search(r"\bHome\b", out) and re.search(r"\bAbout\b", out)
    assert not re.search(r"[ \t]\n", out)  # no trailing blanks left by the dropped tags


def test_read_source_html_file(tmp_path):
    text = read_source(source(write(tmp_path, "page.htm", HTML)))
    assert text == html_text(HTML)
    assert text.count("\n") == HTML.count("\n")
    # .xml is not read as HTML
    assert read_source(source(write(tmp_path, "page.xml", "<a>x</a>\n"))) == "<a>x</a>\n"


# ------------------------------------------------------------------------------------------------------------ PDF
def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF: one Helvetica text object per page, the xref offsets computed from the bytes."""
    objects: dict[int, bytes] = {1: b"<< /Type /Catalog /Pages 2 0 R >>"}
    font = 3 + 2 * len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects[2] = f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode()
    for i, text in enumerate(pages):
        page, contents = 3 + 2 * i, 4 + 2 * i
        objects[page] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {contents} 0 R "
                         f"/Resources << /Font << /F1 {font} 0 R >> >> >>").encode()
        stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
        objects[contents] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)
    objects[font] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    out, offsets = bytearray(b"%PDF-1.4\n"), {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref, size = len(out), len(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[n] for n in range(1, size))
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def test_read_source_pdf(tmp_path):
    pytest.importorskip("pypdf")
    data = make_pdf(["Hello PDF world"])
    assert re.search(rb"startxref\n(\d+)", data).group(1) == str(data.index(b"xref\n0 ")).encode()
    assert read_source(source(write(tmp_path, "doc.pdf", data))).strip() == "Hello PDF world"
    two = read_source(source(write(tmp_path, "two.PDF", make_pdf(["First page text", "Second page text"]))))
    assert [page.strip() for page in two.split("\f")] == ["First page text", "Second page text"]
    assert two.index("First") < two.index("\f") < two.index("Second")


def test_read_source_bad_or_textless_pdf(tmp_path):
    pytest.importorskip("pypdf")
    with pytest.raises(SkippedFile) as raised:
        read_source(source(write(tmp_path, "junk.pdf", b"this is not a PDF at all\n")))
    assert raised.value.reason == "unreadable PDF"
    with pytest.raises(SkippedFile) as raised:
        read_source(source(write(tmp_path, "blank.pdf", make_pdf([""]))))
    assert raised.value.reason == "empty"


# ------------------------------------------------------------------------------------------ languages and prefixes
@pytest.mark.parametrize("path, language, code", [
    ("src/main.py", "python", True), ("x.PYI", "python", True), ("a/b.tsx", "typescript", True),
    ("lib.rs", "rust", True), ("Makefile", "text", False), ("README.md", "markdown", False),
    ("docs/index.rst", "rst", False), ("page.HTML", "html", False), ("paper.pdf", "pdf", False),
    ("notes.txt", "text", False), ("conf.yml", "yaml", True), ("x.weird", "weird", True),
    (".gitignore", "text", False), ("dir.v2/file", "text", False),
])
def test_language_of_and_is_code(path, language, code):
    assert language_of(path) == language
    assert is_code(path) is code


@pytest.mark.parametrize("path, types, selected", [
    ("Makefile", ["text"], False), ("LICENSE", ["text"], False), (".gitignore", ["text"], False),
    ("docs/notes.txt", ["text"], True), ("docs/notes.txt", ["txt"], True),
    ("include/api.h", ["cpp"], True), ("x.hh", ["cpp"], True), ("x.hpp", ["cpp"], True), ("x.hxx", ["cpp"], True),
    ("x.inl", ["cpp"], True), ("x.H", ["cpp"], True), ("x.c", ["cpp"], False), ("x.h", ["c"], True),
    ("x.hpp", ["c"], False), ("a.tsx", ["ts"], True), ("a.mjs", ["javascript"], True), ("x.pyi", ["python"], True),
    ("x.vue", ["vue"], True), ("Gemfile", ["ruby"], True), (".bashrc", ["shell"], True),
    ("x.weird", ["weird"], True), ("x.weird", ["text"], False), ("README.md", ["python", "md"], True),
])
def test_matches_type_follows_ripgrep(path, types, selected):
    assert matches_type(path, types) is selected


def test_every_language_is_a_type():
    assert set(LANGUAGES.values()) <= set(TYPES)


def test_files_under():
    indexed = ["src/a.py", "src/sub/b.py", "srcx/c.py", "src", "docs/d.md", "top.py"]
    assert list(files_under(indexed, "src")) == ["src/a.py", "src/sub/b.py", "src"]
    assert list(files_under(indexed, "/src/sub/")) == ["src/sub/b.py"]
    assert list(files_under(indexed, "top.py")) == ["top.py"]
    assert list(files_under(indexed, "")) == indexed
    assert list(files_under(indexed, "sr")) == []


# ------------------------------------------------------------------------------------------------------- chunking
@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def lines_of(text: str) -> list[str]:
    """Lines as editors and grep -n number them: ended by "\\n" (kept), the last one possibly unterminated."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def check_chunks(text: str, chunks: list[Chunk], tokenizer, budget: int, whole_lines: bool = True,
                 overlap: bool = False, slack: int = 3) -> None:
    """Chunks are in order, cover the text, always advance, are exact slices of it on the right line numbers, and
    fit the budget when tokenized on their own."""
    assert chunks and all(isinstance(c, Chunk) for c in chunks)
    lines = lines_of(text)
    previous = None  # (start, end) character offsets of the previous chunk
    for chunk in chunks:
        assert chunk.text
        begin = text.find(chunk.text, 0 if previous is None else previous[0] + 1)
        assert begin >= 0, "a chunk is not a slice of the text"
        end = begin + len(chunk.text)
        if previous is None:
            assert begin == 0
        else:
            assert begin <= previous[1], "a gap between chunks"
            assert end > previous[1], "a chunk that adds nothing after the previous one"
            if overlap:
                assert begin < previous[1], "consecutive chunks do not overlap"
        assert chunk.start_line == text.count("\n", 0, begin) + 1
        assert chunk.end_line == text.count("\n", 0, end - 1) + 1
        if whole_lines:
            assert chunk.text == "".join(lines[chunk.start_line - 1:chunk.end_line])
        assert chunk.tokens <= budget
        assert n_tokens(tokenizer, chunk.text) <= budget + slack
        assert abs(n_tokens(tokenizer, chunk.text) - chunk.tokens) <= slack
        previous = (begin, end)
    assert previous[1] == len(text)
    assert chunks[-1].end_line == len(lines)
    starts = [c.start_line for c in chunks]
    assert starts == sorted(starts)


WORDS = ("retrieval index vector token query score chunk window overlap budget encoder model dense sparse late "
         "interaction passage document corpus ranking recall precision embedding").split()


def prose(lines: int, seed: int = 0, blank_every: int = 6) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        out.append(f"L{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) + "\n")
        if i % blank_every == blank_every - 1:
            out.append("\n")
    return "".join(out)


def test_budget_too_small(tokenizer):
    with pytest.raises(ValueError):
        chunk_text("hello\n", tokenizer, 15, code=False)
    assert [c.text for c in chunk_text("hello\n", tokenizer, 16, code=False)] == ["hello\n"]


@pytest.mark.parametrize("text", ["one line\n", "a\nb\nc", "first\r\nsecond\r\n\r\nfourth\r\n", "x", "\n\nz\n"])
def test_text_within_budget_is_one_chunk(tokenizer, text):
    assert chunk_text(text, tokenizer, 64, code=True) == [
        Chunk(text, 1, len(lines_of(text)), n_tokens(tokenizer, text))]


def test_exactly_at_the_budget(tokenizer):
    text = prose(12)
    total = n_tokens(tokenizer, text)
    assert total > 64
    assert chunk_text(text, tokenizer, total, code=False) == [Chunk(text, 1, len(lines_of(text)), total)]
    chunks = chunk_text(text, tokenizer, total - 1, code=False)
    assert len(chunks) >= 2
    check_chunks(text, chunks, tokenizer, total - 1)


@pytest.mark.parametrize("budget", [16, 40, 128, 300])
def test_long_prose_windows(tokenizer, budget):
    text = prose(300, seed=budget)
    chunks = chunk_text(text, tokenizer, budget, code=False)
    assert len(chunks) > 1
    longest_line = max(n_tokens(tokenizer, line) for line in lines_of(text))
    # lines shorter than the overlap (budget / 8): consecutive chunks share at least one line
    check_chunks(text, chunks, tokenizer, budget, overlap=longest_line <= budget // 8)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_line > a.start_line and b.end_line > a.end_line
        if longest_line <= budget // 8:
            assert b.start_line <= a.end_line
    for chunk in chunks[:-1]:  # windows are not cut needlessly short
        assert n_tokens(tokenizer, chunk.text) >= budget // 2 - longest_line


def python_module(functions: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out = ['"""A generated module."""\n', "import os\n", "\n"]
    for i in range(functions):
        out.append("\n\n")
        if i % 5 == 2:
            out.append(f"@decorator_{i}\n")
            if i % 10 == 2:
                out.append(f"@another(option={i})\n")
        if i % 7 == 3:
            out.append(f"class Thing{i}:\n    value = {i}\n    name = 'thing {i}'\n")
            continue
        out.append(f"def function_{i}(alpha, beta):\n    \"\"\"Compute result number {i}.\"\"\"\n")
        for k in range(rng.randint(1, 6)):
            out.append(f"    alpha = alpha * {k + i} + beta - {rng.randint(0, 99)}\n")
            if k == 2:
                out.append("\n")
        out.append("    return alpha\n")
    return "".join(out)


TOP_LEVEL_DEFINITION = re.compile(r"(?:def|class) \w")


def test_python_windows_end_before_top_level_definitions(tokenizer):
    text, budget = python_module(120), 256
    lines = lines_of(text)
    chunks = chunk_text(text, tokenizer, budget, code=True)
    assert len(chunks) > 5
    check_chunks(text, chunks, tokenizer, budget)
    for chunk in chunks[:-1]:
        following = lines[chunk.end_line]  # the line right after the window (0-based index end_line)
        first = following
        if following.startswith("@"):  # a decorator stays with its definition
            after = chunk.end_line
            while lines[after].startswith("@"):
                after += 1
            first = lines[after]
        else:
            assert not lines[chunk.end_line - 1].startswith("@"), "a window ends between a decorator and its def"
        assert TOP_LEVEL_DEFINITION.match(first), (chunk.end_line, following)
        assert n_tokens(tokenizer, chunk.text) >= budget // 2 - 4


def test_python_decorator_stays_with_its_definition(tokenizer):
    filler = "".join(f"VALUE_{i} = {i} * {i}\n" for i in range(30))
    text = filler + "\n@first\n@second(1)\ndef decorated():\n    return 1\n" + filler.replace("VALUE", "OTHER")
    budget = n_tokens(tokenizer, filler) + 12  # the first window fits the filler and the decorators, not the def
    chunks = chunk_text(text, tokenizer, budget, code=True)
    check_chunks(text, chunks, tokenizer, budget)
    first_decorator = lines_of(text).index("@first\n") + 1
    assert chunks[0].end_line == first_decorator - 1
    assert chunks[1].start_line <= first_decorator


def markdown(sections: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out = ["# Title\n", "\n"]
    for s in range(sections):
        out.append(f"{'#' * rng.randint(2, 4)} Section {s}\n\n")
        for p in range(rng.randint(1, 3)):
            out.extend(f"S{s}P{p}L{k} " + " ".join(rng.choice(WORDS) for _ in range(5)) + "\n"
                       for k in range(rng.randint(2, 4)))
            out.append("\n")
    return "".join(out)


def test_markdown_windows_end_before_headings(tokenizer):
    text, budget = markdown(60), 256
    lines = lines_of(text)
    chunks = chunk_text(text, tokenizer, budget, code=False)
    assert len(chunks) > 5
    check_chunks(text, chunks, tokenizer, budget)
    for chunk in chunks[:-1]:
        assert re.match(r"#{1,6} ", lines[chunk.end_line]), lines[chunk.end_line]
    # the same text chunked as code ignores headings: some window ends elsewhere
    as_code = chunk_text(text, tokenizer, budget, code=True)
    assert any(not lines[c.end_line].startswith("#") for c in as_code[:-1])


def minified(chars: int) -> str:
    parts, i = [], 0
    while sum(map(len, parts)) < chars:
        parts.append(f"var v{i}=function(a,b){{return a*{i}+b-{i % 7}}};")
        i += 1
    return "".join(parts)


def test_over_long_line_alone(tokenizer):
    line = minified(20_000)
    budget = 512
    chunks = chunk_text(line, tokenizer, budget, code=True)
    assert len(chunks) >= n_tokens(tokenizer, line) // budget
    assert all(c.start_line == c.end_line == 1 for c in chunks)
    assert "".join(c.text for c in chunks) == line
    check_chunks(line, chunks, tokenizer, budget, whole_lines=False)


def test_over_long_line_inside_a_file(tokenizer):
    head = "".join(f"// header line {i}\n" for i in range(40))
    tail = "".join(f"console.log({i});\n" for i in range(40))
    long_line = minified(6_000)
    text = head + long_line + "\n" + tail
    budget = 128
    chunks = chunk_text(text, tokenizer, budget, code=True)
    check_chunks(text, chunks, tokenizer, budget, whole_lines=False)
    number = head.count("\n") + 1
    pieces = [c for c in chunks if c.start_line == c.end_line == number]
    assert len(pieces) >= n_tokens(tokenizer, long_line) // budget - 1
    for chunk in chunks:  # every chunk that is not a piece of the long line is made of whole lines
        if not chunk.start_line <= number <= chunk.end_line:
            assert chunk.text == "".join(lines_of(text)[chunk.start_line - 1:chunk.end_line])


def test_crlf_and_no_trailing_newline(tokenizer):
    budget = 64
    crlf = prose(80, seed=3).replace("\n", "\r\n")
    chunks = chunk_text(crlf, tokenizer, budget, code=False)
    check_chunks(crlf, chunks, tokenizer, budget)
    assert all(c.text.endswith("\r\n") and not c.text.startswith("\n") for c in chunks)
    bare = prose(80, seed=4).rstrip("\n")
    chunks = chunk_text(bare, tokenizer, budget, code=False)
    check_chunks(bare, chunks, tokenizer, budget)
    assert chunks[-1].text.endswith(bare.rsplit("\n", 1)[1])
    assert chunks[-1].end_line == bare.count("\n") + 1


def test_line_numbers_count_newlines_only(tokenizer):
    """Form feeds, vertical tabs, U+2028 and other characters str.splitlines breaks on are not line ends in a
    file: line numbers must match what an editor or ``grep -n`` shows."""
    small = "x = 1\n\f\ny = '\u2028'\nz = 3\x0b4\n"
    assert chunk_text(small, tokenizer, 64, code=True) == [Chunk(small, 1, 4, n_tokens(tokenizer, small))]
    odd = ["\f", "\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]
    rng = random.Random(5)
    text = "".join(f"L{i} " + " ".join(rng.choice(WORDS) for _ in range(4)) + rng.choice(odd) + "tail\n"
                   for i in range(200))
    budget = 64
    chunks = chunk_text(text, tokenizer, budget, code=False)
    check_chunks(text, chunks, tokenizer, budget)
    assert chunks[-1].end_line == 200
