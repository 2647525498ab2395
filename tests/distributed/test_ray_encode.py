"""Encoding on Ray (retrieval.distributed.encode) against the single process: the same vectors in the same order for
both heads, parts the single-node pipeline reads without encoding, an actor that dies mid-job, and a run killed and
rerun. Heads: a tiny random ModernBERT, as a dense model and as a multi-vector one (its token states: ColBERT); the
real all-MiniLM-L6-v2 runs the same path on SciFact (bench/distributed_encode.py, README)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from support import dense_model_folder

from retrieval.encoding import encode_texts

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[distributed]"')

from retrieval.distributed import HeadSpec, RayEncoder, encode_parts, read_parts
from retrieval.distributed.encode import MissingPartError, plan

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the helpers below travel to the actors

WORDS = "retrieval of long documents with late interaction and dense vectors on a cluster of machines".split()
DOCS = [" ".join(WORDS[(i * 7) % len(WORDS):] + WORDS[: (i * 5) % 13]) * (1 + i % 4) for i in range(37)]
QUERIES = [" ".join(WORDS[i: i + 3 + i % 4]) for i in range(11)]
CHUNK = 8  # 37 documents: 5 chunks; 11 queries: 2


class CountingHead:
    """A head that appends one line per model call to ``log`` (actors are other processes: a file counts them) and,
    once, makes its actor exit on its ``crash_on``-th call."""

    def __init__(self, head, log: Path, crash_on: int | None = None, crashed: Path | None = None):
        self.head, self.log, self.crash_on, self.crashed, self.calls = head, log, crash_on, crashed, 0

    def __getattr__(self, name):
        return getattr(self.head, name)

    def encode_documents(self, texts, show_progress=None):
        return self._call(self.head.encode_documents, texts)

    def encode_queries(self, texts, show_progress=None):
        return self._call(self.head.encode_queries, texts)

    def _call(self, encode, texts):
        self.calls += 1
        if self.calls == self.crash_on and not self.crashed.exists():
            self.crashed.touch()
            os._exit(1)  # the actor dies in the middle of a chunk
        with open(self.log, "a") as f:
            f.write(f"{len(texts)}\n")
        return encode(texts, show_progress=False)


class Counting:
    """Loads ``spec`` in the actor, wrapped in a CountingHead."""

    def __init__(self, spec: HeadSpec, log: Path, crash_on: int | None = None, crashed: Path | None = None):
        self.spec, self.log, self.crash_on, self.crashed = spec, log, crash_on, crashed

    def __call__(self):
        return CountingHead(self.spec(), self.log, self.crash_on, self.crashed)


def encoded_texts(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


@pytest.fixture(scope="module")
def dense_spec(tmp_path_factory, tokenizer_dir) -> HeadSpec:
    return HeadSpec(str(dense_model_folder(tmp_path_factory.mktemp("dense"))), "dense")


@pytest.fixture(scope="module")
def dense_run(ray_cluster, dense_spec, tmp_path_factory):
    """Documents and queries encoded on Ray by 2 actors: (parts folder, report)."""
    parts = tmp_path_factory.mktemp("dense-parts")
    return parts, encode_parts(dense_spec, parts, DOCS, QUERIES, chunk_texts=CHUNK, workers=2, progress=False)


def assert_rows_close(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5


def test_dense_on_ray_equals_one_process_in_order(dense_run, dense_spec):
    parts, report = dense_run
    assert (report.chunks, report.encoded, report.skipped, report.workers) == (7, 7, 0, 2)
    head = dense_spec()
    assert_rows_close(read_parts(parts, DOCS, False, CHUNK).rows, list(head.encode_documents(DOCS)))
    assert_rows_close(read_parts(parts, QUERIES, True, CHUNK).rows, list(head.encode_queries(QUERIES)))


def test_the_single_node_pipeline_reads_the_parts_without_encoding(dense_run, dense_spec, tmp_path):
    parts, _ = dense_run
    head = CountingHead(dense_spec(), tmp_path / "calls")
    docs = encode_texts(head, DOCS, False, chunk_texts=CHUNK, parts=parts)
    queries = encode_texts(head, QUERIES, True, chunk_texts=CHUNK, parts=parts)
    assert head.calls == 0
    assert_rows_close(docs.rows, list(dense_spec().encode_documents(DOCS)))
    assert len(queries.rows) == len(QUERIES) and docs.tokens > 0


def test_colbert_on_ray_equals_one_process_in_order(ray_cluster, dense_spec, tmp_path):
    spec = HeadSpec(dense_spec.model, "colbert", token_embeddings=True)  # per-token states of the tiny model
    encode_parts(spec, tmp_path, DOCS, QUERIES, chunk_texts=CHUNK, workers=2, progress=False)
    head = spec()
    assert_rows_close(read_parts(tmp_path, DOCS, False, CHUNK).rows, head.encode_documents(DOCS))
    assert_rows_close(read_parts(tmp_path, QUERIES, True, CHUNK).rows, head.encode_queries(QUERIES))


class Killed(Exception):
    pass


def test_a_killed_run_resumes_and_an_actor_that_dies_is_retried(dense_run, dense_spec, tmp_path):
    """One job killed after two parts, then its rerun, whose actor exits in the middle of its second chunk: the
    rerun encodes only the three chunks left (the dead actor's chunk retried by Ray), and the output is complete
    and identical to the run without accidents."""
    parts, written = tmp_path / "parts", []

    def kill_after_two(n: int) -> None:
        written.append(n)
        if len(written) == 2:
            raise Killed  # the driver dies with two parts written

    with pytest.raises(Killed):
        encode_parts(dense_spec, parts, DOCS, chunk_texts=CHUNK, workers=1, progress=kill_after_two)
    assert len(list(parts.glob("docs-*.npz"))) == 2

    log, crashed = tmp_path / "calls", tmp_path / "crashed"
    report = encode_parts(Counting(dense_spec, log, crash_on=2, crashed=crashed), parts, DOCS, chunk_texts=CHUNK,
                          workers=1, progress=False)
    assert crashed.exists()  # the actor did exit on its second chunk
    assert (report.skipped, report.encoded) == (2, 3)
    assert sum(encoded_texts(log)) == len(DOCS) - sum(written)  # finished chunks were not encoded again
    for a, b in zip(read_parts(parts, DOCS, False, CHUNK).rows, read_parts(dense_run[0], DOCS, False, CHUNK).rows):
        assert np.array_equal(a, b)


class Bar:
    """Stands in for a tqdm bar: what it was told."""

    def __init__(self, total: int):
        self.total, self.n = total, 0

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        pass


def test_a_corpus_kept_in_the_cluster_gives_the_same_parts_resumes_and_survives_a_dead_actor(dense_run, dense_spec,
                                                                                              tmp_path, monkeypatch):
    """The path for corpora larger than the driver (``encode_blocks``: the texts in the object store, the chunks
    gathered by a sort): killed after two parts, rerun with an actor that exits in the middle of its second chunk,
    it encodes only the chunks left and writes parts identical to ``encode_parts``'s, which the single-node pipeline
    reads; the rows come back in input order."""
    from retrieval.distributed.blocks import encode_blocks, read_plan
    from retrieval.distributed.files import corpus_from_texts

    corpus = corpus_from_texts(DOCS, [], block_texts=10)  # four blocks: chunks gather rows from several
    parts, written = tmp_path / "parts", []

    def kill_after_two(n: int) -> None:
        written.append(n)
        if len(written) == 2:
            raise Killed

    with pytest.raises(Killed):
        encode_blocks(dense_spec, parts, corpus.blocks, corpus.lengths, chunk_texts=CHUNK, workers=1,
                      progress=kill_after_two)
    log, crashed, bars = tmp_path / "calls", tmp_path / "crashed", []
    monkeypatch.setattr("tqdm.auto.tqdm", lambda total, **kw: bars.append(Bar(total)) or bars[-1])
    report, digests = encode_blocks(Counting(dense_spec, log, crash_on=2, crashed=crashed), parts, corpus.blocks,
                                    corpus.lengths, chunk_texts=CHUNK, workers=1, progress=True)
    assert crashed.exists() and (report.chunks, report.skipped, report.encoded) == (5, 2, 3)
    assert bars[0].n == bars[0].total == len(DOCS)  # the bar reaches its end: the saved chunks move it too
    assert sum(encoded_texts(log)) == len(DOCS) - sum(written)
    lengths = np.concatenate(corpus.lengths)
    for a, b in zip(read_plan(parts, lengths, digests, False, CHUNK).rows,
                    read_parts(dense_run[0], DOCS, False, CHUNK).rows):
        assert np.array_equal(a, b)
    assert len(read_parts(parts, DOCS, False, CHUNK).rows) == len(DOCS)  # the single-node reader takes them
    (parts / "docs-000001.npz").unlink()
    with pytest.raises(MissingPartError):
        read_plan(parts, lengths, digests, False, CHUNK)


def test_a_pool_kept_between_calls_encodes_as_the_pipeline(dense_run, dense_spec):
    with RayEncoder(dense_spec, workers=2, chunk_texts=CHUNK) as encoder:
        docs, queries = encoder(DOCS), encoder(QUERIES, is_query=True)
    for got, want in ((docs, read_parts(dense_run[0], DOCS, False, CHUNK)),
                      (queries, read_parts(dense_run[0], QUERIES, True, CHUNK))):
        assert all(np.array_equal(a, b) for a, b in zip(got.rows, want.rows)) and len(got.rows) == len(want.rows)
        assert got.tokens == want.tokens


def test_the_plan_is_the_pipelines_chunks():
    chunks = plan(DOCS, False, CHUNK)
    assert [len(c) for c in chunks] == [8, 8, 8, 8, 5]
    assert sorted(t for c in chunks for t in c) == sorted(DOCS)
    assert [len(t) for c in chunks for t in c] == sorted(map(len, DOCS), reverse=True)  # longest first
