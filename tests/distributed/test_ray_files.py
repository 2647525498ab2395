"""`mret embed --ray`: a corpus given as parquet or JSON-lines files, read as a Ray Dataset, encoded by the Ray
actors through the pipeline's chunks, gives the vectors of single-process `mret embed` on a .jsonl of the same
texts, in input order, with the ids beside them; a killed run, rerun, encodes only the chunks it had not finished;
mistakes are one line and exit code 2. Real data (SciFact's first documents, shortened) and real weights
(all-MiniLM-L6-v2; the PyLate fixture for colbert)."""

from __future__ import annotations

import json
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from support import PYLATE_MODEL, SCIFACT
from typer.testing import CliRunner

pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install -e ".[distributed]"')
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from retrieval.cli import build_app  # noqa: E402

N = 260  # three chunks of the pipeline (128, 128, 4)


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    """SciFact's first N documents, texts cut to 160 characters (the test is about the path, not long texts)."""
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip("SciFact is not in ../shared")
    with open(SCIFACT / "corpus.jsonl") as f:
        rows = [json.loads(line) for line in islice(f, N)]
    return [{"id": r["_id"], "title": r["title"], "text": r["text"][: 40 + (7 * i) % 120]} for i, r in enumerate(rows)]


def mret(*args, code: int = 0):
    result = CliRunner().invoke(build_app(), [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result.output


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(folder: Path, rows: list[dict], files: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // files)
    for n in range(files):  # names sort in input order
        pq.write_table(pa.Table.from_pylist(rows[n * size:(n + 1) * size]), folder / f"part-{n}.parquet")
    return folder


def assert_dense_equal(got: Path, want: Path) -> None:
    a, b = np.load(got), np.load(want)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5


@pytest.fixture(scope="module")
def single(corpus, minilm_folder, tmp_path_factory) -> tuple[Path, Path]:
    """The corpus as a .jsonl (id, title, text) and its vectors from single-process `mret embed`."""
    folder = tmp_path_factory.mktemp("single")
    data = write_jsonl(folder / "in.jsonl", corpus)
    mret("embed", "-m", minilm_folder, "-i", data, "-o", folder / "single.npy")
    return data, folder / "single.npy"


def test_parquet_files_on_ray_equal_single_process_in_input_order(ray_cluster, corpus, single, minilm_folder,
                                                                   tmp_path):
    shuffled = corpus[::-1]  # input order is the files' order and their rows', whatever it is
    folder = write_parquet(tmp_path / "pq", shuffled)
    out = mret("embed", "--ray", "local", "-m", minilm_folder, "-i", folder / "part-0.parquet",
               "-i", folder / "part-1.parquet", "-o", tmp_path / "pq.npy", "--workers", "1")
    assert "encoded 3 of 3 chunks" in out and out.count("chunk of ") == 3  # progress: a line per chunk
    vectors, ids = np.load(tmp_path / "pq.npy"), np.load(tmp_path / "pq.ids.npy")
    assert list(ids) == [r["id"] for r in shuffled]
    assert np.abs(vectors - np.load(single[1])[::-1]).max() <= 1e-5
    assert not (tmp_path / "pq.npy.parts").exists()  # removed once the output is written


def test_a_parquet_folder_on_ray_equals_single_process_colbert_queries(ray_cluster, corpus, tmp_path):
    if not PYLATE_MODEL.exists():
        pytest.skip("the PyLate fixture model is not in ../shared")
    rows = [{"text": r["title"] + " " + r["text"]} for r in corpus[:60]]  # no id column: no ids file
    mret("embed", "-m", PYLATE_MODEL, "--kind", "colbert", "--query", "-i", write_jsonl(tmp_path / "in.jsonl", rows),
         "-o", tmp_path / "single.npz")
    mret("embed", "--ray", "local", "-m", PYLATE_MODEL, "--kind", "colbert", "--query",
         "-i", write_parquet(tmp_path / "pq", rows), "-o", tmp_path / "ray.npz", "--workers", "1")
    got, want = np.load(tmp_path / "ray.npz"), np.load(tmp_path / "single.npz")
    assert np.array_equal(got["offsets"], want["offsets"])
    assert np.abs(got["embeddings"] - want["embeddings"]).max() <= 1e-5
    assert not (tmp_path / "ray.ids.npy").exists()


class Killed(Exception):
    pass


def test_a_killed_jsonl_run_rerun_encodes_only_the_missing_chunks(ray_cluster, corpus, single, minilm_folder,
                                                                  tmp_path):
    """The parts a killed run leaves (two of three chunks, written by the pipeline itself, here in this process:
    the Ray kill and the actors' own retries are test_ray_encode.py's) are kept by the rerun."""
    from dataclasses import asdict

    from retrieval.distributed import HeadSpec
    from retrieval.distributed.files import claim_parts
    from retrieval.encoding import CHUNK_TEXTS, encode_texts

    data, output = single[0], tmp_path / "out.npy"
    parts = output.with_name("out.npy.parts")
    spec = HeadSpec(str(Path(minilm_folder).resolve()), "dense")  # what `mret embed --ray` builds
    claim_parts(parts, {**asdict(spec), "query": False, "chunk_texts": CHUNK_TEXTS})
    texts = [(r["title"] + " " + r["text"]).strip() for r in corpus]
    written = []

    def killed_after_two(n: int) -> None:
        written.append(n)
        if len(written) == 2:
            raise Killed

    with pytest.raises(Killed):
        encode_texts(spec(), texts, False, parts=parts, progress=killed_after_two)
    assert len(list(parts.glob("docs-*.npz"))) == 2

    out = mret("embed", "--ray", "local", "-m", minilm_folder, "-i", data, "-o", output, "--workers", "1")
    assert "encoded 1 of 3 chunks (2 already done" in out and out.count("chunk of ") == 1
    assert_dense_equal(output, single[1])
    assert list(np.load(tmp_path / "out.ids.npy")) == [r["id"] for r in corpus]  # strings stay strings


def test_a_parts_folder_of_other_settings_is_refused(tmp_path):
    from retrieval.distributed.files import CorpusFilesError, claim_parts

    claim_parts(tmp_path / "parts", {"model": "a", "query": False})
    claim_parts(tmp_path / "parts", {"model": "a", "query": False})  # the same run again: resumes
    with pytest.raises(CorpusFilesError, match="other settings"):
        claim_parts(tmp_path / "parts", {"model": "a", "query": True})


def test_mistakes_are_one_line_and_exit_2(ray_cluster, minilm_folder, tmp_path, monkeypatch):
    write_jsonl(tmp_path / "notext.jsonl", [{"id": 1, "body": "x"}])
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file")
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "ok.parquet")
    (tmp_path / "in.txt").write_text("a\n")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{broken\n')
    cases = [
        (["-i", tmp_path / "notext.jsonl"], 'no "text" column'),
        (["-i", tmp_path / "bad.parquet"], "cannot read"),
        (["-i", tmp_path / "broken.jsonl"], "cannot read"),
        (["-i", tmp_path / "ok.parquet", "-i", tmp_path / "in.txt"], "one format at a time"),
        (["-i", tmp_path / "nowhere.parquet"], "does not exist"),
        (["-i", write_jsonl(tmp_path / "null.jsonl", [{"text": "a"}, {"text": "b"}, {"text": None}])],
         "row 2 has no text"),
        (["-i", write_jsonl(tmp_path / "numbers.jsonl", [{"text": 1}, {"text": 2}])], '"text" column holds int64'),
        (["-i", write_parquet(tmp_path / "noid", [{"id": "a", "text": "x"}, {"id": None, "text": "y"}], files=1)],
         'an "id" is missing at row 1'),
        (["-i", write_jsonl(tmp_path / "ids.jsonl", [{"id": "a", "text": "x"}]),
          "-i", write_jsonl(tmp_path / "noids.jsonl", [{"text": "y"}])], 'some rows have an "id" and some have none'),
    ]
    for args, message in cases:
        out = mret("embed", "--ray", "local", "-m", minilm_folder, "-o", tmp_path / "o.npy", *args, code=2)
        assert message in out and out.count("error:") == 1 and "Traceback" not in out, out
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    out = mret("embed", "--ray", "local", "-m", minilm_folder, "-i", tmp_path / "ok.parquet", "-o", tmp_path / "o.npy",
               code=2)
    assert 'pip install -e ".[distributed]"' in out and out.count("error:") == 1


def strings_in(value) -> list[str]:
    """Every string inside what the driver received: containers, numpy arrays, pyarrow tables and arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        return [s for column in value.columns for s in strings_in(column)]
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return [v for v in value.to_pylist() if isinstance(v, str)]
    if isinstance(value, np.ndarray):
        return [str(v) for v in value.ravel()] if value.dtype.kind in "OU" else []
    if isinstance(value, dict):
        return [s for item in value.items() for s in strings_in(item)]
    if isinstance(value, (list, tuple, set)):
        return [s for item in value for s in strings_in(item)]
    return []


def test_the_driver_never_receives_the_texts(ray_cluster, corpus, minilm_folder, tmp_path, monkeypatch):
    """A corpus larger than the driver's memory can be encoded: of the texts, the driver receives (ray.get, the
    datasets it iterates) their lengths and ids, then the encoded parts, never a text. (Streaming the texts to the
    driver to cut the chunks, as this module once did, fails here.)"""
    import ray

    from retrieval.distributed import HeadSpec
    from retrieval.distributed.files import embed_corpus, read_corpus

    received: list = []
    real_get = ray.get

    def get(*args, **kwargs):
        received.append(real_get(*args, **kwargs))
        return received[-1]

    def recorded(iterate):
        def wrapper(self, *args, **kwargs):
            for item in iterate(self, *args, **kwargs):
                received.append(item)
                yield item
        return wrapper

    monkeypatch.setattr(ray, "get", get)
    for name in ("iter_rows", "iter_batches"):
        monkeypatch.setattr(ray.data.Dataset, name, recorded(getattr(ray.data.Dataset, name)))
    folder = write_parquet(tmp_path / "pq", corpus)
    spec = HeadSpec(str(Path(minilm_folder).resolve()), "dense")
    run = embed_corpus(spec, read_corpus([folder]), tmp_path / "parts", workers=2, progress=False)
    monkeypatch.undo()
    assert run.report.encoded == 3 and len(run.rows().rows) == len(corpus)
    assert len(received) > 3  # the lengths, the parts
    texts = {(r["title"] + " " + r["text"]).strip() for r in corpus} | {r["text"] for r in corpus}
    assert not texts & set(strings_in(received))
    assert set(strings_in(received)) >= {r["id"] for r in corpus}  # the check sees what it should
