"""One Retriever searched from 8 threads while another writer commits to the same index: every search gives the
result of a serial search (the read path holds no shared mutable state: tokenizer, lazily loaded model and index,
store connections)."""

from __future__ import annotations

import json
import threading

import pytest

from retrieval.codebase.ranking import Rules
from support import TOKENIZER_DIR, copy_package, dense_model_folder, single_torch_thread

pytestmark = pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").exists(),
                                reason=f"the ModernBERT tokenizer is not at {TOKENIZER_DIR} (../shared is missing)")

QUERIES = ["decode a JSON document", "scanner for string literals", "encode floats and integers",
           "indentation of nested objects", "raise an error on bad input", "make a dict from pairs"]
READERS, ROUNDS = 8, 6


SEMANTIC = {"mode": "semantic", "rules": Rules.off()}  # the vector side: the same results from every commit


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from single_torch_thread()


def test_eight_threads_search_one_retriever_while_a_writer_commits(tmp_path):
    from retrieval import Retriever

    model = dense_model_folder(tmp_path / "model")
    root = tmp_path / "tree"
    copy_package(json, root / "src" / "json")
    with Retriever(root, model=model, max_length=128, show_progress=False) as writer:
        writer.index()
    with Retriever.open(root / ".mret") as serial:
        expected = {q: [(h.path, h.start_line, h.score) for h in serial.search(q, k=5, path_glob="src/**", **SEMANTIC)]
                    for q in QUERIES}
        commits_before = serial.vectors.generation
        assert serial.status()["languages"] == {"python": 5}

    shared = Retriever.open(root / ".mret")  # opened lazily: the threads race to load its model and index
    start, written, mismatches, errors = threading.Barrier(READERS + 1), threading.Event(), [], []

    def read(offset: int) -> None:
        try:
            start.wait()
            round_ = 0
            while round_ < ROUNDS or not written.is_set():  # searching all the time the writer commits
                query = QUERIES[(offset + round_) % len(QUERIES)]
                round_ += 1
                got = [(h.path, h.start_line, h.score) for h in shared.search(query, k=5, path_glob="src/**", **SEMANTIC)]
                if got != expected[query]:
                    mismatches.append((query, got, expected[query]))
                # hybrid: BM25's statistics follow the whole corpus (the new files too), so only the filter is fixed
                hybrid = shared.search(query, k=5, path_glob="src/**")
                if len(hybrid) != 5 or not all(h.path.startswith("src/json/") for h in hybrid):
                    mismatches.append(("hybrid", query, [h.path for h in hybrid]))
                status = shared.status()  # the store's file queries, from every thread at once
                if status["languages"].get("python") != 5 or status["chunks"] < status["files"]:
                    mismatches.append(("status", status["languages"], status["chunks"]))
        except BaseException as error:  # reported below, with the thread's own exception
            errors.append(error)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    for thread in threads:
        thread.start()
    start.wait()
    for n in range(3):  # new files outside src/: commits that the filtered searches must not see
        (root / "notes").mkdir(exist_ok=True)
        (root / "notes" / f"n{n}.md").write_text(f"# Notes {n}\n\nDecode JSON documents, scanners and floats.\n" * 4)
        with Retriever(root, show_progress=False) as writer:
            writer.index()
    written.set()
    for thread in threads:
        thread.join()
    try:
        assert not errors, errors
        assert not mismatches, mismatches[:2]
        assert shared.status()["languages"] == {"python": 5, "markdown": 3}  # the shared one sees the new commits
    finally:
        shared.close()
    with Retriever.open(root / ".mret") as after:
        assert after.vectors.generation >= commits_before + 3
