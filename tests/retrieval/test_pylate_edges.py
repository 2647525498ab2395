"""The ColBERT head against PyLate 1.6 and colbert-ai 0.2.22 on texts with edges: leading/trailing whitespace, tabs,
CRLF, Unicode spaces, code punctuation, non-Latin scripts, emoji, too long, empty, whitespace only. PyLate 1.6 (on
sentence-transformers 5.3) strips each text before tokenizing; the references are in tests/fixtures/pylate_edges,
with the script that made them."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval import ColBERT, maxsim
from support import PYLATE_MODEL

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pylate_edges"
sys.path.insert(0, str(FIXTURE.parent / "stanford_colbert"))
from build import build  # noqa: E402


def reference(name: str, section: str) -> tuple[dict, dict[str, np.ndarray]]:
    """A section's texts, ids, shapes and scores, and its arrays by ``query_{i}``, ``doc_{i}`` and ``scores``."""
    info = json.loads((FIXTURE / f"{name}.json").read_text())[section]
    arrays = np.load(FIXTURE / f"{name}.npz")
    keys = [f"query_{i}" for i in range(len(info["queries"]))] + [f"doc_{i}" for i in range(len(info["documents"]))]
    return info, {key: arrays[f"{section}_{key}"] for key in [*keys, "scores"]}


def check_weights(folder: Path, info: dict) -> None:
    """The outputs were made from these exact weights: anything else would fail for the wrong reason."""
    for name, digest in info["weights_sha256"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, (
            f"{folder / name} is not the model tests/fixtures/pylate_edges was made from: rerun its make_fixture.py")


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def assert_matches(model: ColBERT, info: dict, arrays: dict[str, np.ndarray]) -> None:
    """Token ids, token counts, per-token cosine >= 0.9999 and MaxSim within 1e-4, queries and documents."""
    queries, documents = info["queries"], info["documents"]
    assert model.tokenize(queries, is_query=True) == info["query_token_ids"]
    assert model.tokenize(documents, is_query=False) == info["document_token_ids"]
    ours_q, ours_d = model.encode_queries(queries), model.encode_documents(documents)
    assert [list(q.shape) for q in ours_q] == info["query_shapes"]
    assert [list(d.shape) for d in ours_d] == info["document_shapes"]
    for i, q in enumerate(ours_q):
        assert min_cosine(q, arrays[f"query_{i}"]) >= 0.9999, queries[i]
    for i, d in enumerate(ours_d):
        assert min_cosine(d, arrays[f"doc_{i}"]) >= 0.9999, documents[i]
    assert np.abs(maxsim(ours_q, ours_d) - arrays["scores"]).max() <= 1e-4


@pytest.fixture(scope="module")
def pylate_model() -> Path:
    if not (PYLATE_MODEL / "modules.json").exists():
        pytest.skip(f"the PyLate model is not at {PYLATE_MODEL} (../shared is missing)")
    return PYLATE_MODEL


def test_pylate_format_matches_pylate(pylate_model):
    info, arrays = reference("pylate", "pylate")
    check_weights(pylate_model, info)
    assert_matches(ColBERT.from_pretrained(pylate_model), info, arrays)


def test_pylate_format_lowercases_after_stripping(pylate_model, tmp_path):
    info, arrays = reference("pylate", "pylate_lowercase")
    check_weights(pylate_model, info)
    folder = shutil.copytree(pylate_model, tmp_path / "model")
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**config, "do_lower_case": True}))
    assert_matches(ColBERT.from_pretrained(folder), info, arrays)


def test_stanford_format_matches_colbert_ai(minilm_folder, tmp_path):
    """colbert-ai does not strip, but its BERT tokenizer drops whitespace itself: the same ids either way."""
    info, arrays = reference("stanford", "stanford")
    folder = build(tmp_path / "model", minilm_folder)
    check_weights(folder, info)
    assert_matches(ColBERT.from_pretrained(folder), info, arrays)


def test_edges_do_not_change_tokens(pylate_model):
    """Whitespace around a text is not part of it: the same ids with or without it, empty and blank texts alike."""
    model = ColBERT.from_pretrained(pylate_model)
    for is_query in (True, False):
        assert model.tokenize([" \t a text\r\n", "\u3000", ""], is_query) == model.tokenize(["a text", "", ""], is_query)
    with pytest.raises(TypeError, match="not str"):
        model.tokenize(["fine", None], is_query=False)  # type: ignore[list-item]
