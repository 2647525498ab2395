"""``Retriever.index(rebuild=True)`` (retrieval/codebase/rebuild.py): a damaged index built again beside the old
one and swapped in when complete; a rebuild killed by SIGKILL (a real child process) or failing midway leaves the old
index exactly as it was, and the next run deletes what it left; other runs follow a rebuild or fail clearly.

The model is a tiny random ModernBERT with the real tokenizer: scores mean nothing but are deterministic, so a
rebuilt index must return exactly what the index returned before it was damaged."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import TOKENIZER_DIR, copy_package, dense_model_folder, single_torch_thread

pytestmark = pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").exists(),
                                reason=f"the ModernBERT tokenizer is not at {TOKENIZER_DIR} (../shared is missing)")

MAX_LENGTH = 128
BATCH_TOKENS = 1500  # several commits for the json package
QUERIES = ["decode a JSON document into Python objects", "scan a string for escapes", "command line tool"]
ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("indexing_child.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from single_torch_thread()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return dense_model_folder(tmp_path_factory.mktemp("dense") / "model")


def indexed_tree(tmp_path: Path, model_dir: Path) -> Path:
    from retrieval.codebase.retriever import Retriever

    root = copy_package(json, tmp_path / "tree" / "json").parent
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, batch_tokens=BATCH_TOKENS,
                   show_progress=False) as retriever:
        assert retriever.index().files == 5
    return root


def active_folder(index_dir: Path) -> Path:
    return index_dir / json.loads((index_dir / "config.json").read_text()).get("index", "index")


def vector_folders(index_dir: Path) -> list[str]:
    from retrieval.codebase.config import is_vector_folder

    return sorted(p.name for p in index_dir.iterdir() if p.is_dir() and is_vector_folder(p.name))


def truncate_a_vector_file(index_dir: Path) -> Path:
    """The largest file of the index's files/ cut to half its size, as a full disk or a bad copy leaves it."""
    path = max((active_folder(index_dir) / "files").iterdir(), key=lambda p: p.stat().st_size)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return path


def contents(folder: Path) -> dict[str, str]:
    """Every file's hash (the lock file aside: taking a lock is not a change)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "write.lock"}


def results(index_dir: Path) -> list[list[tuple]]:
    from retrieval.codebase.retriever import Retriever

    with Retriever.open(index_dir) as retriever:
        retriever.vectors.verify()
        return [[(h.path, h.start_line, h.end_line, round(h.score, 5)) for h in retriever.search(q, k=6)]
                for q in QUERIES]


def damage_message(index_dir: Path) -> str:
    from indexes import IndexCorruptError
    from retrieval.codebase.retriever import Retriever

    with Retriever.open(index_dir) as retriever, pytest.raises(IndexCorruptError) as caught:
        retriever.search(QUERIES[0])
    return str(caught.value)


def test_a_rebuild_brings_back_a_damaged_index_with_its_settings(tmp_path, model_dir):
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = indexed_tree(tmp_path, model_dir)
    index_dir = root / ".mret"
    before, config = results(index_dir), json.loads((index_dir / "config.json").read_text())
    damaged = truncate_a_vector_file(index_dir)
    assert damaged.name in damage_message(index_dir) and "truncated" in damage_message(index_dir)
    with pytest.raises(Exception, match=damaged.name):  # a plain run cannot repair it: it opens the damaged index
        Retriever(root, show_progress=False).index()
    with pytest.raises(RetrieverError, match="was built with"):  # a rebuild keeps the settings; others are refused
        Retriever(root, max_length=256)

    with Retriever(root, show_progress=False) as retriever:  # no model or length given: the index's own
        summary = retriever.index(rebuild=True)
        assert (summary.files, summary.encoded_files) == (5, 5)
        assert [h.path for h in retriever.search(QUERIES[0], k=3)]  # this object uses the new index at once
    rebuilt = json.loads((index_dir / "config.json").read_text())
    assert rebuilt.pop("index") != config.pop("index", "index") and rebuilt == config
    assert vector_folders(index_dir) == [active_folder(index_dir).name]  # the damaged folder is gone
    assert results(index_dir) == before  # exactly what the index returned before the damage
    with Retriever(root, show_progress=False) as retriever:
        summary = retriever.index()
        assert (summary.encoded_files, summary.unchanged_files) == (0, 5) and retriever._model is None


def test_a_killed_rebuild_leaves_the_damaged_index_as_it_was_and_the_next_one_cleans_up(tmp_path, model_dir):
    from indexes import FaissIndex
    from retrieval.codebase.retriever import Retriever

    root = indexed_tree(tmp_path, model_dir)
    index_dir = root / ".mret"
    before = results(index_dir)
    truncate_a_vector_file(index_dir)
    old, message = active_folder(index_dir), damage_message(index_dir)
    old_contents, config = contents(old), (index_dir / "config.json").read_bytes()

    args = {"root": str(root), "index_dir": str(index_dir), "model": str(model_dir), "max_length": MAX_LENGTH,
            "batch_tokens": BATCH_TOKENS, "max_file_bytes": 1 << 20, "sleep": 0.05, "rebuild": True}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(CHILD), json.dumps(args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        for _ in range(3):  # two batches committed into the new folder, the third being encoded
            line = child.stdout.readline()
            assert line.startswith("encode"), (line, child.stderr.read() if not line else "")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    # the old state, untouched: config.json names the old folder, whose every byte is as it was
    assert (index_dir / "config.json").read_bytes() == config and contents(old) == old_contents
    assert damage_message(index_dir) == message  # the same damage, reported the same way
    partial = [name for name in vector_folders(index_dir) if name != old.name]
    assert len(partial) == 1  # the killed rebuild's folder: a whole index at its last commit, not all of it
    with FaissIndex.open(index_dir / partial[0]) as vectors:
        assert vectors.store.count_sources() == 5  # texts first: every file's chunks, committed before any vector
        assert 0 < len(vectors) < len(vectors.store)  # and the vectors of some of them

    with Retriever(root, show_progress=False) as retriever:
        assert retriever.index(rebuild=True).files == 5
    assert vector_folders(index_dir) == [active_folder(index_dir).name]  # the partial and the old folder deleted
    assert active_folder(index_dir).name not in (old.name, partial[0])
    assert results(index_dir) == before


def test_a_rebuild_that_fails_midway_leaves_the_index_searchable_and_nothing_behind(tmp_path, model_dir):
    from retrieval.codebase.retriever import Retriever

    root = indexed_tree(tmp_path, model_dir)
    index_dir = root / ".mret"
    before, old = results(index_dir), active_folder(index_dir)
    old_contents = contents(old)
    with Retriever(root, batch_tokens=BATCH_TOKENS, show_progress=False) as retriever:
        encode, calls = retriever.model.encode_documents, []

        def interrupted(texts, **kwargs):
            calls.append(len(texts))
            if len(calls) == 3:
                raise KeyboardInterrupt  # Ctrl-C during the third batch
            return encode(texts, **kwargs)

        retriever.model.encode_documents = interrupted
        with pytest.raises(KeyboardInterrupt):
            retriever.index(rebuild=True)
    assert vector_folders(index_dir) == [old.name] and contents(old) == old_contents
    assert results(index_dir) == before


def test_other_runs_follow_a_rebuild_or_fail_clearly(tmp_path, model_dir):
    """A Retriever opened before another one's rebuild indexes into the new folder; a run whose folder a rebuild
    deleted under it ends with a RetrieverError saying so, and the next run is whole again."""
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = indexed_tree(tmp_path, model_dir)
    index_dir = root / ".mret"
    with Retriever(root, show_progress=False) as first:
        before = [h.path for h in first.search(QUERIES[0], k=5)]  # its index is open
        with Retriever(root, show_progress=False) as other:
            other.index(rebuild=True)
        assert [h.path for h in first.search(QUERIES[0], k=5)] == before  # the same files, the new folder
        assert first.config.index == active_folder(index_dir).name  # a search follows the swap (a server would)
        (root / "json" / "tool.py").write_text("def tide_tables():\n    return 'weekly'\n")
        with Retriever(root, show_progress=False) as other:
            other.index(rebuild=True)
        found = first.search("tide_tables weekly", k=1, mode="lexical")  # what only the newest folder holds
        assert found and found[0].path == "json/tool.py" and "tide_tables" in found[0].text
        assert first.status()["files"] == 5 and first.config.index == active_folder(index_dir).name
        (root / "json" / "tool.py").write_text("def tide_tables():\n    return 'monthly'\n")
        summary = first.index()  # follows config.json to the new folder: one file to encode, no damage
        assert (summary.encoded_files, summary.files) == (1, 5)
        assert first.config.index == active_folder(index_dir).name
    assert vector_folders(index_dir) == [active_folder(index_dir).name]

    for path in (root / "json").glob("*.py"):  # every file changed: a long run
        path.write_text(path.read_text() + "\n# touched\n")
    with Retriever(root, batch_tokens=BATCH_TOKENS, show_progress=False) as running:
        encode, calls = running.model.encode_documents, []

        def rebuild_meanwhile(texts, **kwargs):
            calls.append(len(texts))
            if len(calls) == 2:  # between two commits of this run, another process rebuilds the index
                with Retriever(root, show_progress=False) as other:
                    other.index(rebuild=True)
            return encode(texts, **kwargs)

        running.model.encode_documents = rebuild_meanwhile
        with pytest.raises(RetrieverError, match="rebuilt by another process.*run `mret index` again"):
            running.index()
    with Retriever(root, show_progress=False) as again:
        summary = again.index()
        assert summary.files == 5 and summary.encoded_files == 0  # the rebuild indexed the touched files
    assert vector_folders(index_dir) == [active_folder(index_dir).name]  # what the failed run left is deleted
    assert len(results(index_dir)[0]) == 6


def test_config_without_a_vector_folder_name_and_a_bad_name(tmp_path, model_dir):
    """config.json from before rebuilds has no "index" key (the folder is index/); a name that is a path is refused,
    since rebuilds delete the folder they replace."""
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = indexed_tree(tmp_path, model_dir)
    path = root / ".mret" / "config.json"
    config = json.loads(path.read_text())
    assert config.pop("index") == "index"
    path.write_text(json.dumps(config))
    assert len(results(root / ".mret")[0]) == 6
    for bad in ("../elsewhere", "/tmp", "index/../..", "files"):
        path.write_text(json.dumps({**config, "index": bad}))
        with pytest.raises(RetrieverError, match="vector folder"):
            Retriever.open(root / ".mret")



def test_one_rebuild_at_a_time_and_plain_runs_keep_a_running_rebuilds_folder(tmp_path, model_dir, monkeypatch):
    from filelock import FileLock

    from retrieval.codebase import retriever as module
    from retrieval.codebase.retriever import Retriever, RetrieverError

    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text("def a():\n    return 1\n")
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
    index_dir = root / ".mret"
    building = index_dir / "index.0123456789ab"  # what another process's rebuild is writing
    (building / "files").mkdir(parents=True)
    monkeypatch.setattr(module, "REBUILD_WAIT", 0.2)
    lock = FileLock(str(index_dir / "rebuild.lock"))
    with lock:  # that rebuild holds the lock
        with pytest.raises(RetrieverError, match="another rebuild .* is running"):
            Retriever(root, show_progress=False).index(rebuild=True)
        with Retriever(root, show_progress=False) as retriever:
            assert retriever.index().files == 1  # a plain run goes on, and leaves the folder being built alone
        assert building.is_dir()
    with Retriever(root, show_progress=False) as retriever:  # no rebuild running: a leftover, deleted
        assert retriever.index().files == 1
    assert vector_folders(index_dir) == ["index"]
