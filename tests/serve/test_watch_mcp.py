"""`mret watch` (the watcher behind it and `mret serve --watch`): edits, deletes, renames and ignored files; and
`mret mcp` through a real MCP client of the SDK over stdio."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import MAX_LENGTH, make_tree
from serving import ROOT, child_env

WAIT_S = 60.0  # a bound on waiting for the watcher, not a speed check


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@pytest.fixture()
def tree_service(tmp_path, model_dir):
    from retrieval.codebase.retriever import Retriever
    from retrieval.serve.service import open_service

    root = make_tree(tmp_path / "tree")
    (root / ".mretignore").write_text("scratch.txt\n")
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
    service = open_service(root=root)
    yield service
    service.close()


def chunk_texts(service, path: str) -> str:
    store = service.retriever.vectors.store
    ids = store.ids_of_sources([path])
    return "".join(doc.text for doc in store.get(ids) if doc is not None)


def test_watch_follows_edits_deletes_renames_and_ignores_ignored_files(tree_service):
    from retrieval.serve.watch import TreeWatcher

    root = Path(tree_service.retriever.root)
    watcher = TreeWatcher(tree_service)
    watcher.start()
    try:
        wait_until(watcher.ready.is_set, "the watcher to start")
        runs = watcher.runs
        with (root / "src/cache.py").open("a") as file:  # an edit
            file.write("\ndef zebra_quux():\n    return 'striped'\n")
        wait_until(lambda: "zebra_quux" in chunk_texts(tree_service, "src/cache.py"), "the edit")
        hits = tree_service.search("zebra quux striped", k=50)  # searchable through the service at once
        assert any("zebra_quux" in chunk_texts(tree_service, h["path"]) for h in hits)
        (root / "notes/retries.md").unlink()  # a delete
        wait_until(lambda: "notes/retries.md" not in tree_service.retriever.vectors.store.sources(), "the delete")
        (root / "json/tool.py").rename(root / "json/renamed_tool.py")  # a rename
        wait_until(lambda: "json/renamed_tool.py" in tree_service.retriever.vectors.store.sources(), "the rename")
        assert "json/tool.py" not in tree_service.retriever.vectors.store.sources()
        with tree_service.index_lock:  # the run that committed the rename has finished (and counted itself)
            done = watcher.runs
        assert done >= runs + 3
        (root / "scratch.txt").write_text("ignored by .mretignore\n")  # ignored: no run at all
        (root / "node_modules").mkdir()
        (root / "node_modules/x.js").write_text("module.exports = 1;\n")
        time.sleep(1.5)  # several quiet periods: a run would have started
        assert watcher.runs == done
        assert "scratch.txt" not in tree_service.retriever.vectors.store.sources()
    finally:
        watcher.stop()


def test_burst_of_changes_is_one_run(tree_service):
    from retrieval.serve.watch import TreeWatcher

    root = Path(tree_service.retriever.root)
    watcher = TreeWatcher(tree_service, quiet_ms=400)
    watcher.start()
    try:
        wait_until(watcher.ready.is_set, "the watcher to start")
        runs = watcher.runs
        for i in range(10):  # ten files in a burst
            (root / f"src/new_{i}.py").write_text(f"def new_{i}():\n    return {i}\n")
        wait_until(lambda: all(f"src/new_{i}.py" in tree_service.retriever.vectors.store.sources()
                               for i in range(10)), "the burst")
        time.sleep(1.0)  # a second run would have started by now
        with tree_service.index_lock:
            assert watcher.runs == runs + 1
    finally:
        watcher.stop()


SLOW_FILES = 12  # new files, one batch (one commit) each, for a run that a shutdown interrupts


def slow_batches(service) -> tuple[threading.Event, list[int]]:
    """Make ``service``'s runs commit one file a batch, each batch's encoding taking a while: (set once a batch is
    being encoded, the number of texts of each encoding call)."""
    from retrieval.encoding import encode_texts

    retriever = service.retriever
    encoding, calls = threading.Event(), []

    def slow(texts):
        calls.append(len(texts))
        encoding.set()
        time.sleep(0.25)
        return encode_texts(retriever.model, texts, is_query=False)

    retriever.settings.batch_tokens, retriever.settings.encode = 1, slow
    return encoding, calls


def write_slow_files(root: Path) -> None:
    for i in range(SLOW_FILES):
        (root / f"src/slow_{i}.py").write_text(f"def slow_{i}():\n    return {i}\n")


def left_pending_then_finished(root: Path) -> int:
    """The chunks a stopped run left pending (the index opens whole); a next run encodes them all."""
    from retrieval.codebase.indexing import pending_chunks
    from retrieval.codebase.retriever import Retriever

    with Retriever(root, show_progress=False) as retriever:
        pending = pending_chunks(retriever.vectors)
        summary = retriever.index()
        assert pending_chunks(retriever.vectors) == 0
        assert all(f"src/slow_{i}.py" in retriever.vectors.store.sources() for i in range(SLOW_FILES))
    assert summary.encoded_chunks == pending
    return pending


def test_stopping_the_watcher_stops_its_run_between_batches_and_quietly(tree_service, caplog):
    """`mret serve --watch` or `mret watch` shutting down while a run encodes: the run stops before its next batch
    (not after the whole run, nor cut off by the index closing under it), without a warning, and the index is whole:
    the next run encodes what is left."""
    from retrieval.serve.watch import TreeWatcher

    caplog.set_level(logging.INFO)
    root = Path(tree_service.retriever.root)
    encoding, calls = slow_batches(tree_service)
    watcher = TreeWatcher(tree_service)
    watcher.start()
    try:
        wait_until(watcher.ready.is_set, "the watcher to start")
        write_slow_files(root)
        wait_until(encoding.is_set, "the run to encode")
    finally:
        watcher.stop()
    assert not watcher._thread.is_alive()  # stop() waited for the run: the caller may close the index now
    assert len(calls) < SLOW_FILES  # stopped midway
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("indexing stopped" in r.getMessage() for r in caplog.records)
    tree_service.close()
    assert left_pending_then_finished(root) > 0


def test_closing_the_service_stops_an_mcp_refresh_before_closing_the_index(tree_service, caplog):
    """`mret mcp` exiting (its client went away) while a refresh run encodes: close() stops the run at its next batch
    and waits for it, then closes the index; the run ends without an error."""
    from retrieval.serve.mcp_server import Freshness

    root = Path(tree_service.retriever.root)
    encoding, calls = slow_batches(tree_service)
    write_slow_files(root)
    freshness = Freshness(tree_service, wait=0)  # the search answers at once; the run goes on in the background
    freshness.refresh()
    wait_until(encoding.is_set, "the run to encode")
    tree_service.close()
    assert freshness._done.is_set()  # the run had ended when the index was closed
    assert len(calls) < SLOW_FILES
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert left_pending_then_finished(root) > 0


def test_mcp_tools_over_stdio(tmp_path, model_dir):
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from retrieval.codebase.retriever import Retriever

    root = make_tree(tmp_path / "tree")
    with Retriever(root, model=model_dir, max_length=MAX_LENGTH, show_progress=False) as retriever:
        retriever.index()
        query = "decode a JSON document from a string"
        expected = retriever.search(query, k=3)
        files = len(retriever.vectors.store.sources()) + 1
    (root / "src/fresh.py").write_text("def fresh():\n    return 'written after mret index'\n")
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "retrieval.cli", "mcp", str(root)],
                                       cwd=str(ROOT), env=child_env())

    async def session_run() -> tuple:
        async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            found = await session.call_tool("search", {"query": query, "k": 3})
            status = await session.call_tool("status", {})
            related = await session.call_tool("related", {"path": "json/decoder.py", "start_line": 1,
                                                          "end_line": 40, "k": 3})
            return tools, found, status, related

    tools, found, status, related = anyio.run(session_run)
    assert set(tools) == {"search", "status", "related"}
    assert "natural language" in tools["search"].description
    text = found.content[0].text
    assert not getattr(found, "is_error", getattr(found, "isError", False)) and text.splitlines()[0].startswith(
        f"{expected[0].path}:{expected[0].start_line}-{expected[0].end_line}")
    assert [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")] == [h.path for h in expected]
    assert f"{files} files" in status.content[0].text  # the search brought the new file in first
    lines = [line for line in related.content[0].text.splitlines() if not line.startswith(" ")]
    assert lines and not any(line.startswith("json/decoder.py:1-") for line in lines)


def test_related_reads_paths_under_the_root_only(indexed_tree, monkeypatch):
    """The `related` tool's path is relative to the indexed root whatever the server's working folder, and nothing
    outside the root (../, an absolute path elsewhere, a symlink out) is read."""
    from retrieval.codebase.config import RetrieverError
    from retrieval.serve.mcp_server import related
    from retrieval.serve.service import open_service

    service = open_service(root=indexed_tree)
    try:
        monkeypatch.chdir(indexed_tree / "json")  # `mret mcp` started in a subfolder
        found = related(service, "json/decoder.py", 1, 20, 3)
        assert found and all(r["path"] for r in found)
        assert related(service, str(indexed_tree / "json" / "decoder.py"), 1, 20, 3) == found
        outside = indexed_tree.parent / "secret.txt"
        outside.write_text("top secret\n" * 3)
        (indexed_tree / "link.txt").symlink_to(outside)
        for path in ("../secret.txt", str(outside), "link.txt", "json/../../secret.txt"):
            with pytest.raises(RetrieverError, match="not under the indexed root"):
                related(service, path, None, None, 3)
    finally:
        (indexed_tree / "link.txt").unlink(missing_ok=True)
        service.close()


def test_searches_during_a_long_refresh_wait_once_not_each():
    """MCP brings the index up to date before a search, waiting at most the refresh wait for the run: a search that
    arrives while that run still goes on waits only what is left of it, then answers from the last commit."""
    from retrieval.serve.mcp_server import Freshness

    release, runs = threading.Event(), []

    class Service:
        def index(self) -> None:
            runs.append(1)
            release.wait(30)

    freshness = Freshness(Service(), wait=0.5)
    try:
        begin = time.monotonic()
        freshness.refresh()  # the run starts; this search waits the whole 0.5 s
        first = time.monotonic() - begin
        begin = time.monotonic()
        freshness.refresh()  # the same run goes on: no second wait, no second run
        second = time.monotonic() - begin
        assert first >= 0.45 and second < 0.2 and len(runs) == 1
    finally:
        release.set()
