"""The bi-encoder against sentence-transformers 6.x (the reference) on the same folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from encoder import ModelLoadError
from encoder.testing import random_encoder
from retrieval import BiEncoder

TEXTS = ["A man is eating food.", "", "def add(a, b):\n    return a + b\n", "naïve café 北京 🚀",
         "long text " * 400]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def st_folder(root: Path, tokenizer_dir: Path, pooling: str, prompts: dict | None = None, dense: int = 0) -> Path:
    """A tiny random ModernBERT saved by sentence-transformers 6.x itself (its own, newest folder format)."""
    from sentence_transformers import SentenceTransformer, models

    backbone = root / "backbone"
    random_encoder("tiny", seed=11, tokenizer_dir=tokenizer_dir, mlm_head=False).save_pretrained(backbone)
    transformer = models.Transformer(str(backbone))
    modules = [transformer, models.Pooling(transformer.get_embedding_dimension(), pooling)]
    if dense:
        modules.append(models.Dense(64, dense))
    model = SentenceTransformer(modules=modules + [models.Normalize()], prompts=prompts or {}, device="cpu")
    model.save(str(root / "model"))
    return root / "model"


def test_minilm_matches_sentence_transformers(minilm_folder):
    from sentence_transformers import SentenceTransformer

    ours = BiEncoder.from_pretrained(minilm_folder).encode_documents(TEXTS)
    reference = SentenceTransformer(str(minilm_folder), device="cpu").encode(TEXTS)
    assert ours.shape == reference.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert cosines(ours, reference).min() >= 0.99999


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_modernbert_matches_sentence_transformers_with_prompts(tmp_path, tokenizer_dir, pooling):
    from sentence_transformers import SentenceTransformer

    prompts = {"query": "search_query: ", "document": "search_document: "}
    folder = st_folder(tmp_path, tokenizer_dir, pooling, prompts, dense=32)
    ours = BiEncoder.from_pretrained(folder)
    reference = SentenceTransformer(str(folder), device="cpu")
    q, d = ours.encode_queries(TEXTS), ours.encode_documents(TEXTS)
    assert cosines(q, reference.encode_query(TEXTS)).min() >= 0.99999
    assert cosines(d, reference.encode_document(TEXTS)).min() >= 0.99999
    assert np.abs(q - d).max() > 1e-3  # the prompts really were applied (random models give similar vectors)


def test_matryoshka_truncation_matches_sentence_transformers(tmp_path, tokenizer_dir):
    from sentence_transformers import SentenceTransformer

    folder = st_folder(tmp_path, tokenizer_dir, "mean", {"query": "search_query: ", "document": "search_document: "})
    ours = BiEncoder.from_pretrained(folder, truncate_dim=16)
    reference = SentenceTransformer(str(folder), device="cpu", truncate_dim=16)
    got = ours.encode_queries(TEXTS)
    assert got.shape == (len(TEXTS), 16) and ours.dim == 16
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)  # renormalized after truncation
    assert cosines(got, reference.encode_query(TEXTS, normalize_embeddings=True)).min() >= 0.99999


# gte-modernbert-base's sentence-transformers files as the hub has them (classic format, CLS pooling)
GTE_LAYOUT = {
    "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                     {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
    "sentence_bert_config.json": {"max_seq_length": 8192, "do_lower_case": False},
    "1_Pooling/config.json": {"word_embedding_dimension": 64, "pooling_mode_cls_token": True,
                              "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
                              "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
                              "pooling_mode_lasttoken": False, "include_prompt": True},
    "config_sentence_transformers.json": {"__version__": {"sentence_transformers": "3.3.1"}, "prompts": {},
                                          "default_prompt_name": None, "similarity_fn_name": "cosine"},
}


def test_classic_layout_loads_and_round_trips(tmp_path, tokenizer_dir):
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "gte-like"
    random_encoder("tiny", seed=12, tokenizer_dir=tokenizer_dir, mlm_head=False).save_pretrained(folder)
    for name, content in GTE_LAYOUT.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    ours = BiEncoder.from_pretrained(folder)
    assert ours.normalizer is None and ours.pooling.modes == ["cls"]
    vectors = ours.encode_documents(TEXTS)
    # saved by sentence-transformers 3.3.1, which stripped each text: 6.x gives that on the stripped texts
    stripped = [t.strip() for t in TEXTS]
    assert cosines(vectors, SentenceTransformer(str(folder), device="cpu").encode(stripped)).min() >= 0.99999

    ours.save(tmp_path / "saved")  # records strip_text_edges: the saved model reads texts as it was trained
    assert cosines(BiEncoder.from_pretrained(tmp_path / "saved").encode_documents(TEXTS), vectors).min() >= 0.99999
    assert cosines(SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(stripped), vectors).min() >= 0.99999


@pytest.mark.parametrize("version,strips", [("3.3.1", True), ("5.3.0", True), ("6.2.0", False), (None, False)])
def test_text_edges_are_read_as_the_saving_version_did(tmp_path, tokenizer_dir, version, strips):
    """Up to 5.x sentence-transformers stripped every text before tokenizing, 6.x does not: a checkpoint is
    tokenized as the version that saved it (trained it, and made its published figures) did."""
    folder = tmp_path / "model"
    random_encoder("tiny", seed=12, tokenizer_dir=tokenizer_dir, mlm_head=False).save_pretrained(folder)
    for name, content in GTE_LAYOUT.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    config = {**GTE_LAYOUT["config_sentence_transformers.json"], "__version__": {"sentence_transformers": version}}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    model = BiEncoder.from_pretrained(folder)
    edged = "  def add(a, b):\n    return a + b\n"
    assert (model.tokenize([edged]) == model.tokenize([edged.strip()])) is strips  # BPE: edges are tokens


def test_save_round_trip_with_dense_and_normalize(tmp_path, tokenizer_dir):
    from sentence_transformers import SentenceTransformer

    folder = st_folder(tmp_path, tokenizer_dir, "mean", {"query": "q: "}, dense=24)
    ours = BiEncoder.from_pretrained(folder)
    ours.save(tmp_path / "saved")
    reference = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert cosines(reference.encode_query(TEXTS), ours.encode_queries(TEXTS)).min() >= 0.99999
    assert cosines(BiEncoder.from_pretrained(tmp_path / "saved").encode_queries(TEXTS),
                   ours.encode_queries(TEXTS)).min() >= 0.99999


def test_output_options_and_errors(minilm_folder):
    model = BiEncoder.from_pretrained(minilm_folder)
    as_torch = model.encode(["x", "y"], output="torch")
    assert tuple(as_torch.shape) == (2, 384)
    with pytest.raises(TypeError, match="single string"):
        model.encode_queries("one string")
    with pytest.raises(TypeError, match="not str"):
        model.encode_documents(["ok", None])
    with pytest.raises(ValueError, match="unknown prompt"):
        model.encode(["x"], prompt_name="nope")


def test_not_a_sentence_transformers_folder(tmp_path, tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="modules.json"):
        BiEncoder.from_pretrained(tiny_checkpoint)
    shutil.copytree(tiny_checkpoint, tmp_path / "m")
    (tmp_path / "m" / "modules.json").write_text(json.dumps(GTE_LAYOUT["modules.json"][:1]))
    with pytest.raises(ModelLoadError, match="no Pooling"):
        BiEncoder.from_pretrained(tmp_path / "m")


def test_bfloat16_is_close_to_float32(tmp_path, tokenizer_dir):
    """bf16 on CPU (the fast path for long inputs): float32 numpy out, vectors within bf16 rounding of fp32."""
    import torch

    folder = st_folder(tmp_path, tokenizer_dir, "mean", dense=32)
    full = BiEncoder.from_pretrained(folder).encode_documents(TEXTS)
    half = BiEncoder.from_pretrained(folder, dtype=torch.bfloat16).encode_documents(TEXTS)
    assert half.dtype == np.float32 and half.shape == full.shape
    assert cosines(full, half).min() >= 0.99
