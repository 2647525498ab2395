"""The walk inside a git work tree (retrieval/codebase/sources.py): the file list is git's, so every exclude git
honours applies (``.git/info/exclude``, the global excludes file) besides ``.gitignore``; ``.mretignore`` and the
walk's own filters apply on top; a tree without git, or a machine without git, is walked as before.

Each test runs git with a private configuration: HOME and XDG_CONFIG_HOME point into tmp_path, the system file is
off, and GIT_CEILING_DIRECTORIES stops git from finding a repository above tmp_path, so the user's own settings
neither leak in nor get touched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from retrieval.codebase.sources import EXCLUDED, IGNORED, NOT_UTF8_NAME, _tree_walk, walk

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(autouse=True)
def private_git(tmp_path, monkeypatch) -> Path:
    """A HOME and XDG_CONFIG_HOME of the test's own (no global excludes unless a test writes them)."""
    home = tmp_path / "home"
    (home / "xdg").mkdir(parents=True)
    for name, value in {"HOME": home, "XDG_CONFIG_HOME": home / "xdg", "GIT_CONFIG_NOSYSTEM": "1",
                        "GIT_CEILING_DIRECTORIES": tmp_path}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("GIT_CONFIG_GLOBAL", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)
    return home


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "protocol.file.allow=always", *args],
                   cwd=root, check=True, capture_output=True)


def write(root: Path, relative: str, content: str | bytes = "x = 1\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def repo(root: Path, tracked: list[str], untracked: list[str] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    for name in tracked:
        write(root, name)
    if tracked:
        git(root, "add", "-f", "--", *tracked)
        git(root, "commit", "-qm", "files")
    for name in untracked:
        write(root, name)
    return root


def paths(found) -> list[str]:
    return [f.path for f in found.files]


def test_info_exclude_applies_in_the_work_tree_and_in_a_subfolder(tmp_path):
    root = repo(tmp_path / "repo", [".gitignore", "src/a.py", "README.md"],
                ["src/b.py", "src/notes.scratch", "secret/key.txt", "debug.log", "docs/guide.md"])
    (root / ".gitignore").write_text("*.log\n")
    (root / ".git" / "info" / "exclude").write_text("# mine only\nsecret/\n*.scratch\n")
    found = walk(root)
    assert found.lister == "git"
    assert paths(found) == ["README.md", "docs/guide.md", "src/a.py", "src/b.py"]
    assert not found.skipped  # what git leaves out is not ours to count
    # a subfolder of the work tree: the same rules, paths relative to it
    assert paths(walk(root / "src")) == ["a.py", "b.py"]
    # the same tree without git (what the walk did before): info/exclude is unknown to it
    assert paths(_tree_walk(root.resolve(), set())) == [
        "README.md", "docs/guide.md", "secret/key.txt", "src/a.py", "src/b.py", "src/notes.scratch"]


@pytest.mark.parametrize("where", ["GIT_CONFIG_GLOBAL core.excludesFile", "XDG_CONFIG_HOME/git/ignore"])
def test_the_global_excludes_file_applies(tmp_path, private_git, monkeypatch, where):
    if where.startswith("GIT_CONFIG_GLOBAL"):
        excludes = write(tmp_path, "elsewhere/global-ignore", "*.orig\n.idea-notes/\n")
        config = write(tmp_path, "elsewhere/gitconfig", f"[core]\n\texcludesFile = {excludes}\n")
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    else:  # git's default place for it when core.excludesFile is not set
        write(private_git / "xdg", "git/ignore", "*.orig\n.idea-notes/\n")
    root = repo(tmp_path / "repo", ["main.py"], ["main.py.orig", ".idea-notes/todo.md", "util.py"])
    found = walk(root)
    assert (found.lister, paths(found)) == ("git", ["main.py", "util.py"])


def test_a_tree_without_git_is_walked_with_its_gitignore_files(tmp_path):
    root = tmp_path / "plain"
    for name in ["a.py", "debug.log", "src/b.py", "src/skip.tmp", "build/out.py"]:
        write(root, name)
    write(root, ".gitignore", "*.log\n")
    write(root, "src/.gitignore", "*.tmp\n")
    found = walk(root)
    assert found.lister == "walk"
    assert paths(found) == ["a.py", "src/b.py"]
    assert found.skipped == {IGNORED: 2, EXCLUDED: 1}


def test_without_git_on_the_path_the_tree_is_walked(tmp_path, monkeypatch):
    root = repo(tmp_path / "repo", [".gitignore", "a.py"], ["b.py", "local.txt", "debug.log"])
    (root / ".gitignore").write_text("*.log\n")
    (root / ".git" / "info" / "exclude").write_text("local.txt\n")
    assert paths(walk(root)) == ["a.py", "b.py"]  # with git
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    assert shutil.which("git") is None
    found = walk(root)  # no error: the walk of old, which reads .gitignore files only
    assert found.lister == "walk"
    assert paths(found) == ["a.py", "b.py", "local.txt"]
    assert found.skipped == {IGNORED: 1, EXCLUDED: 1}  # debug.log; the .git folder


def test_mretignore_and_the_walks_own_filters_apply_on_top_of_git(tmp_path):
    root = repo(tmp_path / "repo", [
        ".gitignore", ".mretignore", "keep.py", "generated/api.py", "node_modules/pkg/index.js",
        "third_party/lib/x.c", "src/.mretignore", "src/ok.py", "src/fixture.json", "tracked.log", "pkg.egg-info/PKG"],
        ["scratch/.mretignore", "scratch/a.md", "scratch/b.md", ".mret/config.json", "elsewhere-index/config.json",
         "untracked.log"])
    (root / ".gitignore").write_text("*.log\n")  # tracked.log was added before: git lists it, so it is indexed
    (root / ".mretignore").write_text("generated/\n")
    (root / "src" / ".mretignore").write_text("*.json\n")
    (root / "scratch" / ".mretignore").write_text("b.md\n")
    (root / ".git" / "info" / "exclude").write_text(".mretignore\n")  # a .mretignore git ignores still counts
    found = walk(root, exclude=[root / "elsewhere-index"])
    assert paths(found) == ["keep.py", "tracked.log", "scratch/a.md", "src/ok.py"]
    # each pruned folder counted once, as the tree walk counts it: generated/ (and scratch/b.md, src/fixture.json);
    # node_modules, third_party, pkg.egg-info; .mret and the exclude argument pass silently
    assert found.skipped == {IGNORED: 3, EXCLUDED: 3}


def test_deleted_symlinked_odd_named_nested_and_ignored_trees(tmp_path):
    root = repo(tmp_path / "repo", ["a.py", "gone.py", "assets/.keep"], ["real.py"])
    (root / "gone.py").unlink()  # deleted from the work tree, still in git's index: not a file to index
    os.symlink(root / "real.py", root / "link.py")
    os.symlink(root / "assets", root / "linkdir")
    odd = os.path.join(os.fsencode(root), b"caf\xe9.py")  # a Latin-1 name, as some old trees have
    with open(odd, "wb") as f:
        f.write(b"x = 1\n")
    # a submodule and an untracked clone inside the tree: their files, as their own git lists them
    library = repo(tmp_path / "library", [".gitignore", "lib.py"])
    (library / ".gitignore").write_text("*.bin.py\n")
    git(library, "commit", "-qam", "ignore")
    git(root, "submodule", "add", "-q", str(library), "vendored-lib")
    write(root, "vendored-lib/data.bin.py")  # ignored by the submodule's .gitignore
    write(root, "vendored-lib/new.py")  # untracked in the submodule
    repo(root / "clone", ["c.py"], ["c_local.py"])
    found = walk(root)
    assert found.lister == "git"
    # in the tree walk's order: a folder's files by name, then its subfolders
    assert paths(found) == [".gitmodules", "a.py", "real.py", "assets/.keep", "clone/c.py", "clone/c_local.py",
                            "vendored-lib/lib.py", "vendored-lib/new.py"]
    assert found.skipped == {"symlink": 2, NOT_UTF8_NAME: 1}  # the deleted file is not in the tree: not counted


def test_a_tree_that_git_ignores_is_walked_as_a_tree_of_its_own(tmp_path):
    root = repo(tmp_path / "repo", [".gitignore", "a.py"])
    (root / ".gitignore").write_text("site/\n")
    write(root, "site/docs/index.md", "# generated docs\n")
    write(root, "site/docs/page.md", "# page\n")
    write(root, "site/docs/.gitignore", "page.md\n")
    found = walk(root / "site" / "docs")  # asked for by name: its files, not git's empty list
    assert found.lister == "walk" and paths(found) == ["index.md"]
    assert paths(walk(root)) == ["a.py"]


def test_git_is_asked_about_the_roots_own_repository(tmp_path, monkeypatch):
    """In a git hook GIT_DIR names the hook's repository; the walk of another tree must not list that one."""
    hooked = repo(tmp_path / "hooked", ["hook.py"])
    root = repo(tmp_path / "repo", ["a.py"], ["local.txt"])
    (root / ".git" / "info" / "exclude").write_text("local.txt\n")
    monkeypatch.setenv("GIT_DIR", str(hooked / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(hooked))
    assert paths(walk(root)) == ["a.py"]
