"""Document collections over HTTP: POST /documents (added or replaced, one commit per batch), DELETE, search with a
metadata filter (parameters, never SQL from the client), 8 concurrent clients during writes, and a SIGKILL in the
middle of a stream of batches."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from serving import ROOT, child_env, live_server, spawn_server, wait_for_server_file


@pytest.fixture()
def collection(tmp_path, model_dir):
    from retrieval.serve.service import open_service

    service = open_service(collection=tmp_path / "docs", model=str(model_dir), kind="dense")
    yield service
    service.close()


def docs(prefix: str, n: int, generation: int = 0, **metadata) -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": f"document {i} of {prefix}, version {generation}",
             "metadata": {"gen": generation, "n": i, **metadata}} for i in range(n)]


def test_documents_filter_and_delete(collection):
    with live_server(collection) as live, live.client() as client:
        english = docs("en-", 4, lang="en", year=2023)
        french = docs("fr-", 3, lang="fr", year=2024)
        answer = client.post("/documents", json={"documents": english + french})
        assert answer.status_code == 200 and answer.json()["added_or_replaced"] == 7
        assert client.get("/status").json()["documents"] == 7

        def ids(**body) -> list[str]:
            response = client.post("/search", json={"query": "document", "k": 20, **body})
            assert response.status_code == 200, response.text
            return sorted(r["id"] for r in response.json()["results"])

        assert ids() == sorted(d["id"] for d in english + french)
        assert ids(filter={"lang": "fr"}) == ["fr-0", "fr-1", "fr-2"]
        assert ids(filter={"year": {"in": [2023]}, "n": 1}) == ["en-1"]
        assert ids(filter={"lang": "en') OR 1=1 --"}) == []  # a value, never SQL
        assert ids(filter={"x') OR 1=1 --": "en"}) == []  # a key too
        bad = client.post("/search", json={"query": "d", "filter": {"lang": {"like": "%"}}})
        assert bad.status_code == 422
        replaced = client.post("/documents", json={"documents": [{"id": "fr-0", "text": "nouveau", "metadata": {}}]})
        assert replaced.status_code == 200 and client.get("/status").json()["documents"] == 7
        assert ids(filter={"lang": "fr"}) == ["fr-1", "fr-2"]  # replaced, metadata and all
        assert client.delete("/documents/en-0").status_code == 200
        assert client.delete("/documents/en-0").status_code == 404
        assert "en-0" not in ids()
        for body in ({"documents": []}, {"documents": [{"id": "a"}]}, {"documents": [{"id": "a", "text": "t",
                                                                                       "extra": 1}]},
                     {"documents": [{"id": "a", "text": "t"}, {"id": "a", "text": "u"}]}):
            response = client.post("/documents", json=body)
            assert 400 <= response.status_code < 500 and response.json()["error"]
        assert client.get("/status").json()["documents"] == 6


def test_what_a_client_may_put_in_a_document_is_answered_not_crashed_on(collection):
    """Ids with '/' can be deleted; NaN or infinite metadata (Python's json parses them; JSON cannot carry them and
    SQLite's JSON functions refuse the stored row) is a 422; "symbols" of any type is taken or ignored, not a 500."""
    with live_server(collection) as live, live.client() as client:
        for raw in (b'{"documents": [{"id": "n", "text": "t", "metadata": {"x": NaN}}]}',
                    b'{"documents": [{"id": "n", "text": "t", "metadata": {"x": [1, {"y": Infinity}]}}]}',
                    b'{"documents": [{"id": "n", "text": "t", "metadata": {"x": 1e400}}]}'):
            response = client.post("/documents", content=raw)
            assert response.status_code == 422 and "NaN or an infinite" in response.json()["error"], raw
        odd = [{"id": "src/a.py", "text": "alpha beta", "metadata": {"symbols": 5}},
               {"id": "src/b.py", "text": "gamma delta", "metadata": {"symbols": True, "lang": "en"}},
               {"id": "c", "text": "epsilon", "metadata": {"symbols": "parse_config"}}]
        assert client.post("/documents", json={"documents": odd}).status_code == 200
        found = client.post("/search", json={"query": "parse_config", "mode": "lexical", "filter": {"lang": "en"}})
        assert found.status_code == 200 and [r["id"] for r in found.json()["results"]] == []
        assert client.delete("/documents/src/a.py").status_code == 200
        assert client.delete("/documents/src%2Fb.py").status_code == 200
        assert client.get("/status").json()["documents"] == 1


def test_collections_search_in_every_mode(collection):
    """A collection's texts are searchable by BM25 too (the store's lexical rows): lexical mode ranks the one
    document holding a rare word first, hybrid (the default) keeps it in the fused top results, filters apply to
    the lexical side, and ids are not words of a document."""
    with live_server(collection) as live, live.client() as client:
        texts = {"a": "the quarterly report on zeppelin maintenance", "b": "a note on bicycle repair",
                 "c": "minutes of the board meeting", "zeppelin-id": "nothing of interest here"}
        batch = [{"id": i, "text": t, "metadata": {"lang": "en" if i != "b" else "fr"}} for i, t in texts.items()]
        assert client.post("/documents", json={"documents": batch}).status_code == 200

        def search(query: str, **body) -> list[str]:
            response = client.post("/search", json={"query": query, "k": 3, **body})
            assert response.status_code == 200, response.text
            return [r["id"] for r in response.json()["results"]]

        assert search("zeppelin", mode="lexical") == ["a"]  # the id "zeppelin-id" is not text
        assert search("bicycle repair", mode="lexical") == ["b"]
        assert search("bicycle repair", mode="lexical", filter={"lang": "en"}) == []
        assert "a" in search("zeppelin") and "a" in search("zeppelin", mode="hybrid")
        assert len(search("zeppelin", mode="semantic")) == 3  # the vectors rank everything
        assert client.post("/search", json={"query": "x", "mode": "fuzzy"}).status_code == 422


def test_concurrent_searches_see_one_whole_commit(collection):
    """8 clients search while batches replace every document: each answer is 200 and comes from one commit (the
    documents of one answer all carry the same version)."""
    n = 12
    with live_server(collection) as live:
        with live.client() as client:
            assert client.post("/documents", json={"documents": docs("d", n, 0)}).status_code == 200
        stop, seen, failures = threading.Event(), [], []

        def reader() -> None:
            with live.client() as client:
                while not stop.is_set():
                    response = client.post("/search", json={"query": "document version", "k": n})
                    if response.status_code != 200:
                        failures.append(response.text)
                        continue
                    generations = {r["metadata"]["gen"] for r in response.json()["results"]}
                    seen.append(generations)
                    if len(generations) != 1 or len(response.json()["results"]) != n:
                        failures.append(response.text)

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for t in threads:
            t.start()
        with live.client() as client:
            for generation in range(1, 6):
                assert client.post("/documents", json={"documents": docs("d", n, generation)}).status_code == 200
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:2]
    assert len({g for s in seen for g in s}) >= 2  # the readers did run across commits


def test_a_commit_between_the_ranking_and_the_documents_does_not_show(collection):
    """A search reads its rankings and its documents from one commit: a batch committed by another thread right
    after the lexical ranking (the moment made certain here) is not what the answer's metadata shows."""
    from retrieval.serve.collection import DocumentIn

    inner = collection.collection
    inner.put([DocumentIn(f"d{i}", f"document {i} version", {"gen": 0}) for i in range(4)])
    store = inner.vectors.store
    lexical_search = store.lexical_search

    def then_a_commit(*args, **kwargs):
        ranked = lexical_search(*args, **kwargs)
        writer = threading.Thread(target=inner.put, args=(
            [DocumentIn(f"d{i}", f"document {i} version", {"gen": 1}) for i in range(4)],))
        writer.start()
        writer.join()
        return ranked

    store.lexical_search = then_a_commit
    try:
        results = collection.search("document version", 4)
    finally:
        del store.lexical_search
    assert len(results) == 4 and {r["metadata"]["gen"] for r in results} == {0}
    assert {r["metadata"]["gen"] for r in collection.search("document version", 4)} == {1}


def test_sigkill_during_batches_keeps_exactly_the_acknowledged_ones(tmp_path, model_dir):
    from retrieval.serve.collection import Collection

    folder = tmp_path / "docs"
    process = spawn_server("--collection", str(folder), "--model", str(model_dir), "--kind", "dense")
    try:
        info = wait_for_server_file(folder, process)
        acknowledged: list[int] = []
        with httpx.Client(base_url=f"http://127.0.0.1:{info['port']}", timeout=60) as client:
            for batch in range(1000):
                if len(acknowledged) == 4:  # killed while the fifth batch is in flight (or just after it)
                    threading.Timer(0.05, process.send_signal, (signal.SIGKILL,)).start()
                try:
                    response = client.post("/documents", json={"documents": docs(f"b{batch}-", 20, batch)})
                except httpx.TransportError:
                    break
                assert response.status_code == 200
                acknowledged.append(batch)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    reopened = Collection(folder)  # the restart: the index at its last commit
    try:
        present = set(reopened.vectors.store.ids())
    finally:
        reopened.close()
    batches = {int(doc_id[1:].split("-")[0]) for doc_id in present}
    for batch in acknowledged:  # every acknowledged batch, whole
        assert {f"b{batch}-{i}" for i in range(20)} <= present
    extra = batches - set(acknowledged)
    assert extra <= {len(acknowledged)}  # at most the batch in flight, whose answer the kill cut off...
    for batch in extra:
        assert {f"b{batch}-{i}" for i in range(20)} <= present  # ...and then whole, never a part of it


def test_the_server_runs_its_threads_single_threaded_unless_asked(tmp_path, model_dir):
    """torch's and faiss's thread counts are per OS thread: `mret serve` sets them for every thread it starts
    (OMP_NUM_THREADS before torch loads), so its batcher and request threads do not spin against each other;
    `--threads` sets another count; a server that must first index its tree keeps every core. /health reports the
    count seen outside the main thread."""
    env = {k: v for k, v in child_env().items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cores = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                               capture_output=True, text=True, check=True).stdout)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.py").write_text("def retry(): pass\n")
    runs = {"collection": ("--collection", str(tmp_path / "docs"), "--model", str(model_dir), "--kind", "dense"),
            "--threads 2": ("--collection", str(tmp_path / "docs"), "--threads", "2"),
            # a tree the server must index first: that run gets every core
            "first index": (str(tmp_path / "tree"), "--watch", "--model", str(model_dir), "--kind", "dense")}
    seen = {}
    for name, args in runs.items():
        process = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--port", "0", *args], cwd=ROOT,
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            folder = tmp_path / ("tree/.mret" if name == "first index" else "docs")
            info = wait_for_server_file(folder, process)
            seen[name] = httpx.get(f"http://127.0.0.1:{info['port']}/health", timeout=30).json()["threads"]
        finally:
            process.kill()
            process.wait()
    assert seen == {"collection": 1, "--threads 2": 2, "first index": cores}
