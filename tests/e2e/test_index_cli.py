"""``mret index/search/status/remove`` (retrieval/index_cli.py) through typer's CliRunner, against the Retriever
API on the same index, and every user mistake as exit code 2 with one "error:" line and no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support import TOKENIZER_DIR, copy_package, dense_model_folder, single_torch_thread

ROOT = Path(__file__).resolve().parents[2]
QUERY = "decode a JSON document"
runner = CliRunner()


def mret(*args: str, input: str | None = None):
    from retrieval.cli import app

    return runner.invoke(app, [str(a) for a in args], input=input)


def ok(result):
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def assert_user_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("error:"), result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models run faster on one thread, and far faster on a machine shared with other jobs."""
    yield from single_torch_thread()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"the ModernBERT tokenizer is not at {TOKENIZER_DIR} (../shared is missing)")
    return dense_model_folder(tmp_path_factory.mktemp("dense") / "model")


def make_tree(root: Path) -> Path:
    copy_package(json, root / "json")
    (root / "docs").mkdir()
    (root / "docs" / "notes [draft].md").write_text("# Draft notes\n\n[bold]not markup[/bold] :smile: stays as is\n")
    (root / "docs" / "guide.md").write_text("# Guide\n\nHow the decoder scans JSON strings.\n")
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "sub" / "deep" / "tides.py").write_text("def high_tide(hour):\n    return hour % 12 == 6\n")
    return root


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, model_dir) -> Path:
    """A tree indexed once by `mret index` (tests that change it make their own)."""
    root = make_tree(tmp_path_factory.mktemp("cli") / "tree [v1]")  # a root that looks like rich markup
    result = ok(mret("index", root, "--model", model_dir, "--max-length", "128"))
    assert str(root / ".mret") in " ".join(result.stderr.split())
    return root


def api_hits(index_dir: Path, query: str, k: int, **filters) -> list[dict]:
    from retrieval.codebase.retriever import Retriever

    with Retriever.open(index_dir) as retriever:
        return [h.to_json() for h in retriever.search(query, k=k, **filters)]


def test_index_then_search_json_equals_the_api(indexed, monkeypatch):
    root = indexed
    assert (root / ".mret" / "config.json").exists()
    monkeypatch.chdir(root)
    hits = json.loads(ok(mret("search", QUERY, "--json", "-k", "5")).stdout)
    assert hits == api_hits(root / ".mret", QUERY, 5) and len(hits) == 5
    for hit in hits:
        assert set(hit) == {"path", "start_line", "end_line", "score", "snippet"}
        assert not Path(hit["path"]).is_absolute() and (root / hit["path"]).is_file()
        assert isinstance(hit["start_line"], int) and hit["start_line"] <= hit["end_line"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    monkeypatch.chdir(root / "sub" / "deep")  # the nearest .mret above, paths still relative to the root
    from_below = json.loads(ok(mret("search", QUERY, "--json")).stdout)
    assert from_below == api_hits(root / ".mret", QUERY, 10) and len(from_below) == 10

    markdown = json.loads(ok(mret("search", "draft notes", "--json", "--path-glob", "*.md", "-k", "50")).stdout)
    assert {h["path"] for h in markdown} == {"docs/notes [draft].md", "docs/guide.md"}
    python = json.loads(ok(mret("search", QUERY, "--json", "-t", "python", "-k", "3")).stdout)
    assert python == api_hits(root / ".mret", QUERY, 3, file_type=["python"])
    assert all(h["path"].endswith(".py") for h in python)
    two_globs = json.loads(ok(mret("search", QUERY, "--json", "-g", "docs/**", "-g", "sub/**", "-k", "50")).stdout)
    assert {h["path"] for h in two_globs} == {"docs/notes [draft].md", "docs/guide.md", "sub/deep/tides.py"}
    # JSON keeps the text as it is: markup-looking brackets and emoji codes are not interpreted
    draft = [h for h in markdown if h["path"] == "docs/notes [draft].md"][0]
    assert "[bold]not markup[/bold] :smile: stays as is" in draft["snippet"]


def test_search_text_output_shows_paths_and_snippets_as_they_are(indexed, monkeypatch):
    monkeypatch.chdir(indexed)
    result = ok(mret("search", "draft notes markup", "-g", "docs/notes*"))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("docs/notes [draft].md:1-") and "[bold]not markup[/bold]" in result.stdout
    assert ok(mret("search", "nothing", "-g", "nowhere/**")).stderr.strip() == "no results"


def test_status(indexed, monkeypatch):
    from retrieval.codebase.retriever import Retriever

    monkeypatch.chdir(indexed / "docs")
    status = json.loads(ok(mret("status", "--json")).stdout)
    with Retriever.open(indexed / ".mret") as retriever:
        expected = retriever.status()
    assert {k: status[k] for k in ("root", "model", "kind", "max_length", "files", "chunks", "tokens")} == {
        k: expected[k] for k in ("root", "model", "kind", "max_length", "files", "chunks", "tokens")}
    assert status["root"] == str(indexed.resolve()) and status["files"] == 8 and status["kind"] == "dense"
    assert status["last_run"]["encoded_files"] == 8
    text = ok(mret("status")).stdout
    assert str(indexed.resolve()) in text and "8 files" in text and "128" in text


def test_remove_then_search_no_longer_returns_it(tmp_path, model_dir, monkeypatch):
    root = make_tree(tmp_path / "tree")
    ok(mret("index", root, "--model", model_dir, "--max-length", "128"))
    monkeypatch.chdir(root)
    before = json.loads(ok(mret("search", "decoder scanstring", "--json", "-k", "1000")).stdout)
    assert "json/decoder.py" in {h["path"] for h in before}
    result = ok(mret("remove", "json/decoder.py"))
    assert "removed 1 files" in result.stderr
    ok(mret("remove", root / "sub"))  # a folder, by its absolute path
    after = json.loads(ok(mret("search", "decoder scanstring", "--json", "-k", "1000")).stdout)
    assert {h["path"] for h in after} == {h["path"] for h in before} - {"json/decoder.py", "sub/deep/tides.py"}
    assert json.loads(ok(mret("status", "--json")).stdout)["files"] == 6
    assert_user_error(mret("remove", "json/decoder.py"), "nothing indexed at json/decoder.py")
    # the next index run takes them back (they are not ignored)
    result = ok(mret("index", root))
    assert "2 files encoded" in " ".join(result.stderr.split())
    assert json.loads(ok(mret("status", "--json")).stdout)["files"] == 8


def test_remove_refuses_an_empty_path_and_the_whole_root(indexed, monkeypatch):
    """`mret remove "$UNSET"` or `mret remove .` at the root emptied the whole index without a word."""
    monkeypatch.chdir(indexed)
    assert_user_error(mret("remove", ""), "empty path")
    for path in (".", indexed, "sub/.."):
        assert_user_error(mret("remove", path), "delete its folder", "mret index --rebuild")
    monkeypatch.chdir(indexed / "sub")
    assert_user_error(mret("remove", ".."), "delete its folder")
    assert json.loads(ok(mret("status", "--json")).stdout)["files"] == 8  # nothing was removed


def test_remove_a_root_relative_path_from_a_subfolder(tmp_path, model_dir, monkeypatch):
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a.py").write_text("def a():\n    return 1\n")
    (root / "sub" / "f2.py").write_text("def f2():\n    return 2\n")
    ok(mret("index", root, "--model", model_dir, "--max-length", "128"))
    monkeypatch.chdir(root / "sub")
    assert "removed 1 files" in ok(mret("remove", "sub/f2.py")).stderr
    assert_user_error(mret("remove", "../../outside.py"), "not under the indexed root")
    assert json.loads(ok(mret("status", "--json")).stdout)["files"] == 1


def test_status_piped_keeps_long_paths_whole_and_emoji_codes_as_they_are(tmp_path, model_dir, monkeypatch):
    """Not a terminal: `name: value` lines, never a path cropped with "…" at 80 columns; ":fire:" in a path is not
    an emoji, on stdout or stderr."""
    root = tmp_path / ("a-rather-long-folder-name-" * 4) / "e:fire:x"
    root.mkdir(parents=True)
    (root / "a.py").write_text("def a():\n    return 1\n")
    indexed = ok(mret("index", root, "--model", model_dir, "--max-length", "128"))
    assert "e:fire:x" in indexed.stderr and "\N{FIRE}" not in indexed.stderr
    monkeypatch.chdir(root)
    text = ok(mret("status")).stdout
    assert f"root: {root.resolve()}\n" in text and f"index: {root.resolve() / '.mret'}\n" in text
    assert "…" not in text and "\N{FIRE}" not in text
    missing = mret("remove", ":fire:.py")
    assert_user_error(missing, "nothing indexed at :fire:.py")
    assert "\N{FIRE}" not in missing.stderr


@pytest.mark.parametrize("env, tty, expected", [
    ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False), ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, False, False),
    ({"FORCE_COLOR": "1"}, False, True), ({"TERM": "dumb", "FORCE_COLOR": "1"}, True, False), ({}, True, True),
    ({}, False, False)])
def test_no_color_wins_over_force_color(monkeypatch, env, tty, expected):
    """As rich decides: FORCE_COLOR makes a terminal of a pipe, but NO_COLOR (and TERM=dumb) still turn colour off."""
    import io

    from retrieval.cli.search_output import use_color

    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stream = io.StringIO()
    stream.isatty = lambda: tty
    assert use_color(stream) is expected


def test_index_dir_elsewhere(tmp_path, model_dir, monkeypatch):
    root = make_tree(tmp_path / "tree")
    other = tmp_path / "indexes" / "tree-index"
    ok(mret("index", root, "--index-dir", other, "--model", model_dir, "--max-length", "64"))
    assert (other / "config.json").exists() and not (root / ".mret").exists()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    hits = json.loads(ok(mret("search", QUERY, "--json", "--index-dir", other, "-k", "4")).stdout)
    assert hits == api_hits(other, QUERY, 4) and all((root / h["path"]).is_file() for h in hits)
    assert json.loads(ok(mret("status", "--json", "--index-dir", other)).stdout)["root"] == str(root.resolve())
    result = ok(mret("index", root, "--index-dir", other))  # a rerun keeps the index's settings
    assert "0 files encoded" in " ".join(result.stderr.split())
    monkeypatch.chdir(root)
    assert_user_error(mret("search", QUERY), "no .mret index")  # there is none in the tree itself
    assert_user_error(mret("index", tmp_path / "elsewhere", "--index-dir", other), "indexes", "--index-dir")


def test_files_from(tmp_path, model_dir, monkeypatch):
    root = make_tree(tmp_path / "tree")
    (tmp_path / "list.txt").write_text("json/decoder.py\nsub/deep/tides.py\n")
    ok(mret("index", root, "--model", model_dir, "--max-length", "128", "--files-from", tmp_path / "list.txt"))
    status = json.loads(ok(mret("status", "--json", "--index-dir", root / ".mret")).stdout)
    assert status["files"] == 2
    ok(mret("index", root, "--files-from", "-", input="json/scanner.py\n"))  # stdin; the others go
    hits = json.loads(ok(mret("search", QUERY, "--json", "-k", "100", "--index-dir", root / ".mret")).stdout)
    assert {h["path"] for h in hits} == {"json/scanner.py"}
    (tmp_path / "list0").write_bytes(b"json/decoder.py\0sub/deep/tides.py\0")  # as `git ls-files -z` prints
    ok(mret("index", root, "--files-from", tmp_path / "list0"))
    assert json.loads(ok(mret("status", "--json", "--index-dir", root / ".mret")).stdout)["files"] == 2
    (tmp_path / "latin1").write_bytes("caf\xe9.py\n".encode("latin-1"))
    assert_user_error(mret("index", root, "--files-from", tmp_path / "latin1"), "not UTF-8")
    assert_user_error(mret("index", root, "--files-from", "-", input="\n"), "the file list is empty")
    assert json.loads(ok(mret("status", "--json", "--index-dir", root / ".mret")).stdout)["files"] == 2


@pytest.mark.parametrize("case", [
    "index a file", "index a missing folder", "a path that looks like markup", "search without an index",
    "search a missing --index-dir",
    "empty query", "blank query", "k zero", "another model", "another max length", "max length out of range",
    "max length leaves no room", "files-from missing", "remove outside the root", "status without an index",
    "damaged config", "index into the tree itself"])
def test_user_mistakes_are_one_line_and_exit_code_2(case, indexed, model_dir, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(indexed)
    other_model = tmp_path / "model-copy"
    if case == "index a file":
        result, needles = mret("index", indexed / "json" / "decoder.py", "--model", model_dir), ["is not a folder"]
    elif case == "index a missing folder":
        result, needles = mret("index", tmp_path / "missing", "--model", model_dir), ["is not a folder"]
    elif case == "a path that looks like markup":  # shown as it is, not read as rich markup
        result, needles = mret("index", tmp_path / "v2 [draft]" / "[/old]", "--model", model_dir), [
            "v2 [draft]/[/old] is not a folder"]
    elif case == "search without an index":
        monkeypatch.chdir(empty)
        result, needles = mret("search", QUERY), ["no .mret index", "mret index"]
    elif case == "search a missing --index-dir":
        result, needles = mret("search", QUERY, "--index-dir", tmp_path / "nothing"), ["no index at"]
    elif case == "empty query":
        result, needles = mret("search", ""), ["query is empty"]
    elif case == "blank query":
        result, needles = mret("search", "  \t"), ["query is empty"]
    elif case == "k zero":
        result, needles = mret("search", QUERY, "-k", "0"), ["-k must be at least 1"]
    elif case == "another model":
        import shutil

        shutil.copytree(model_dir, other_model)
        result, needles = mret("index", indexed, "--model", other_model), ["was built with model", "--index-dir"]
    elif case == "another max length":
        result, needles = mret("index", indexed, "--max-length", "256"), ["was built with", "max length 128"]
    elif case == "max length out of range":
        result, needles = mret("index", empty, "--model", model_dir, "--max-length", "5"), ["--max-length"]
    elif case == "max length leaves no room":
        (empty / "a.py").write_text("x = 1\n")
        result, needles = mret("index", empty, "--model", model_dir, "--max-length", "20"), ["--max-length"]
    elif case == "files-from missing":
        result, needles = mret("index", indexed, "--files-from", tmp_path / "nope.txt"), ["--files-from"]
    elif case == "remove outside the root":
        result, needles = mret("remove", tmp_path), ["is not under the indexed root"]
    elif case == "status without an index":
        monkeypatch.chdir(empty)
        result, needles = mret("status"), ["no .mret index"]
    elif case == "index into the tree itself":
        (empty / "a.py").write_text("x = 1\n")
        result, needles = mret("index", empty, "--index-dir", empty, "--model", model_dir), ["the tree itself"]
    else:
        (empty / ".mret").mkdir()
        (empty / ".mret" / "config.json").write_text("{not json")
        monkeypatch.chdir(empty)
        result, needles = mret("status"), ["not a modernretrieval index configuration"]
    assert_user_error(result, *needles)
    assert not (empty / ".mret" / "config.json").exists() or case == "damaged config"  # no index half made


def test_default_model_without_the_hub_names_the_model_option(tmp_path):
    """The default model (a hub id) while the hub cannot be reached: one clear error that says to pass --model."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text("def a():\n    return 1\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "retrieval.cli", "index", str(root)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error:") and sum(line.startswith("error:") for line in lines) == 1
    assert "--model" in result.stderr and "Traceback" not in result.stderr and result.stdout == ""
    assert not (root / ".mret" / "config.json").exists()


def truncate_a_vector_file(index_dir: Path) -> Path:
    config = json.loads((index_dir / "config.json").read_text())
    path = max((index_dir / config.get("index", "index") / "files").iterdir(), key=lambda p: p.stat().st_size)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return path


def test_a_damaged_index_names_the_file_and_the_rebuild_command_which_brings_it_back(tmp_path, model_dir,
                                                                                    monkeypatch):
    root = make_tree(tmp_path / "tree")
    ok(mret("index", root, "--model", model_dir, "--max-length", "128"))
    monkeypatch.chdir(root / "docs")
    before = json.loads(ok(mret("search", QUERY, "--json", "-k", "5")).stdout)
    damaged = truncate_a_vector_file(root / ".mret")
    command = f"mret index --rebuild {root.resolve()}"
    for args in (["search", QUERY], ["status"], ["remove", "json/decoder.py"], ["index", root]):
        assert_user_error(mret(*args), str(damaged), "truncated", command)  # the file, and the way back
    result = ok(mret("index", root, "--rebuild"))
    assert "rebuilding" in result.stderr and "8 files encoded" in " ".join(result.stderr.split())
    assert json.loads(ok(mret("search", QUERY, "--json", "-k", "5")).stdout) == before
    assert json.loads(ok(mret("status", "--json")).stdout)["files"] == 8

    other = tmp_path / "indexes" / "tree"  # an index elsewhere: the command names its --index-dir too
    ok(mret("index", root, "--index-dir", other, "--model", model_dir, "--max-length", "128"))
    truncate_a_vector_file(other)
    assert_user_error(mret("search", QUERY, "--index-dir", other), f"{command} --index-dir {other.resolve()}")
    ok(mret("index", root, "--index-dir", other, "--rebuild"))
    assert json.loads(ok(mret("search", QUERY, "--json", "-k", "5", "--index-dir", other)).stdout) == before


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_index_in_a_git_work_tree_takes_gits_file_list(tmp_path, model_dir, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    for name, value in {"HOME": home, "XDG_CONFIG_HOME": home, "GIT_CONFIG_NOSYSTEM": "1",
                        "GIT_CEILING_DIRECTORIES": tmp_path}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    root = make_tree(tmp_path / "repo")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".git" / "info" / "exclude").write_text("docs/\n")  # not in any .gitignore: git's own exclude file
    result = ok(mret("index", root / "json", "--model", model_dir, "--max-length", "128"))
    assert "files as git lists them" in " ".join(result.stderr.split())
    status = json.loads(ok(mret("status", "--json", "--index-dir", root / "json" / ".mret")).stdout)
    assert status["files"] == 5 and status["root"] == str((root / "json").resolve())
    ok(mret("index", root, "--model", model_dir, "--max-length", "128"))
    hits = json.loads(ok(mret("search", "draft notes guide", "--json", "-k", "1000", "--index-dir",
                              root / ".mret")).stdout)  # every chunk: the files indexed
    assert {h["path"] for h in hits} == {"json/__init__.py", "json/decoder.py", "json/encoder.py",
                                         "json/scanner.py", "json/tool.py", "sub/deep/tides.py"}
