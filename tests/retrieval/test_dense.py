"""The bi-encoder against sentence-transformers 6.x (the reference) on the same folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

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

    folder = st_folder(tmp_path, tokenizer_dir, "mean", dense=32)
    full = BiEncoder.from_pretrained(folder).encode_documents(TEXTS)
    half = BiEncoder.from_pretrained(folder, dtype=torch.bfloat16).encode_documents(TEXTS)
    assert half.dtype == np.float32 and half.shape == full.shape
    assert cosines(full, half).min() >= 0.99


# ----- lengths: the head's own, capped at the backbone's positions
LONG = "lengthy words " * 3000  # thousands of tokens for either tokenizer


def test_max_seq_length_is_used_above_the_tokenizers_model_max_length(tmp_path, tokenizer_dir):
    """sentence-transformers tokenizes at max_seq_length even where tokenizer_config.json says model_max_length
    512: the head's length is the length used, not silently the tokenizer's."""
    from sentence_transformers import SentenceTransformer

    folder = st_folder(tmp_path, tokenizer_dir, "mean")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 2048, "do_lower_case": False}))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 512}))
    ours = BiEncoder.from_pretrained(folder)
    assert ours.max_length == 2048 and len(ours.tokenize([LONG])[0]) == 2048
    reference = SentenceTransformer(str(folder), device="cpu")
    assert reference.max_seq_length == 2048
    assert cosines(ours.encode_documents([LONG, "short"]), reference.encode_document([LONG, "short"])).min() >= 0.99999


def test_the_length_is_capped_at_the_backbones_positions(tmp_path, minilm_folder, tokenizer_dir):
    """No max_seq_length and no usable model_max_length (all-MiniLM's tokenizer_config says 1e30): the length is
    the backbone's 512 positions, as sentence-transformers caps it (not our tokenizer's default 8192, which made a
    long text an index error inside BERT). A max_seq_length above the positions is capped too."""
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "mini"
    shutil.copytree(minilm_folder, folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"do_lower_case": False}))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": int(1e30)}))
    ours = BiEncoder.from_pretrained(folder)
    assert ours.max_length == 512 == ours.max_document_length
    reference = SentenceTransformer(str(folder), device="cpu")
    assert reference.max_seq_length == 512
    assert cosines(ours.encode_documents([LONG]), reference.encode_document([LONG])).min() >= 0.99999

    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 1000, "do_lower_case": False}))
    assert BiEncoder.from_pretrained(folder).max_length == 512
    modern = st_folder(tmp_path / "modern", tokenizer_dir, "mean")
    (modern / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 20000, "do_lower_case": False}))
    assert BiEncoder.from_pretrained(modern).max_length == 8192  # ModernBERT's positions


# ----- similarity_fn_name
def test_a_dot_model_is_scored_by_dot_product_and_not_normalized(tmp_path, tokenizer_dir):
    """A sentence-transformers model saved with similarity_fn_name "dot" and no Normalize module: its vectors keep
    their lengths and ``similarity`` is the dot product, as sentence-transformers' own; load_head (indexes, eval:
    cosine) warns; a cosine model is left as it was."""
    from sentence_transformers import SentenceTransformer, models

    from retrieval.heads import load_head

    backbone = tmp_path / "backbone"
    random_encoder("tiny", seed=11, tokenizer_dir=tokenizer_dir, mlm_head=False).save_pretrained(backbone)
    transformer = models.Transformer(str(backbone))
    modules = [transformer, models.Pooling(transformer.get_embedding_dimension(), "mean"), models.Dense(64, 16)]
    SentenceTransformer(modules=modules, similarity_fn_name="dot", device="cpu").save(str(tmp_path / "dot"))
    ours = BiEncoder.from_pretrained(tmp_path / "dot")
    reference = SentenceTransformer(str(tmp_path / "dot"), device="cpu")
    assert ours.similarity_fn_name == "dot" == reference.similarity_fn_name
    q, d = ours.encode_queries(TEXTS[:2]), ours.encode_documents(TEXTS)
    assert np.abs(np.linalg.norm(d, axis=1) - 1).max() > 0.01  # not normalized
    expected = reference.similarity(reference.encode_query(TEXTS[:2]), reference.encode_document(TEXTS)).numpy()
    assert np.allclose(ours.similarity(q, d), expected, rtol=1e-4, atol=1e-4)
    cosine = (q / np.linalg.norm(q, axis=1)[:, None]) @ (d / np.linalg.norm(d, axis=1)[:, None]).T
    assert not np.allclose(ours.similarity(q, d), cosine, atol=1e-3)
    with pytest.warns(UserWarning, match="scores by dot"):
        load_head(tmp_path / "dot", "dense")
    ours.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config_sentence_transformers.json").read_text())[
        "similarity_fn_name"] == "dot"
    assert BiEncoder.from_pretrained(tmp_path / "saved").similarity_fn_name == "dot"

    import warnings

    folder = st_folder(tmp_path / "cos", tokenizer_dir, "mean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_head(folder, "dense").similarity_fn_name == "cosine"


# ----- the modules.json a head can run
def test_a_module_order_the_head_cannot_run_is_refused(tmp_path, tokenizer_dir):
    """Dense after Normalize (sentence-transformers runs them in modules.json's order: the output is not unit
    length), Pooling after Dense, a Dense reading token_embeddings in a pooled model: refused, not run in our order."""
    folder = st_folder(tmp_path, tokenizer_dir, "mean", dense=16)
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    BiEncoder.from_pretrained(folder)  # the order it runs
    for order in ([0, 1, 3, 2], [0, 2, 1, 3], [1, 0, 2, 3]):
        (folder / "modules.json").write_text(json.dumps([modules[i] for i in order]))
        with pytest.raises(ModelLoadError, match="only Transformer -> Pooling -> Dense"):
            BiEncoder.from_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps(modules))
    dense_config = folder / modules[2]["path"] / "config.json"
    config = json.loads(dense_config.read_text())
    dense_config.write_text(json.dumps({**config, "module_input_name": "token_embeddings",
                                        "module_output_name": "token_embeddings"}))
    with pytest.raises(ModelLoadError, match="token_embeddings, not on sentence_embedding"):
        BiEncoder.from_pretrained(folder)


def test_a_dense_layer_without_activation_is_tanh_and_an_unknown_one_is_refused(tmp_path, tokenizer_dir):
    """sentence-transformers' Dense defaults to Tanh: a config without activation_function means Tanh (not
    Identity); a path that is not a torch.nn Module class is a ModelLoadError, not a silent Identity."""
    from sentence_transformers import SentenceTransformer

    folder = st_folder(tmp_path, tokenizer_dir, "mean", dense=16)
    dense_config = next(folder.glob("*_Dense")) / "config.json"
    config = json.loads(dense_config.read_text())
    assert config["activation_function"] == "torch.nn.modules.activation.Tanh"
    dense_config.write_text(json.dumps({k: v for k, v in config.items() if k != "activation_function"}))
    ours = BiEncoder.from_pretrained(folder)
    assert isinstance(ours.dense[0].activation, torch.nn.Tanh)
    reference = SentenceTransformer(str(folder), device="cpu")
    assert cosines(ours.encode_documents(TEXTS), reference.encode_document(TEXTS)).min() >= 0.99999
    for path in ("mypackage.activations.Swish", "torch.nn.functional.gelu", "torch.nn.modules.activation.Nope"):
        dense_config.write_text(json.dumps({**config, "activation_function": path}))
        with pytest.raises(ModelLoadError, match="not a torch.nn Module class"):
            BiEncoder.from_pretrained(folder)


# ----- prompts
def test_the_default_prompt_is_used_alike_by_encode_tokenize_and_document_overhead(tmp_path, tokenizer_dir):
    """sentence-transformers 6.x: the default prompt (default_prompt_name) applies to encode() without a prompt, not
    to encode_document / encode_query, whose own prompt wins even when empty. encode_documents, tokenize and
    document_overhead agree on that (the token counts and the room for text are those of what is encoded)."""
    from sentence_transformers import SentenceTransformer

    folder = st_folder(tmp_path, tokenizer_dir, "mean")
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    settings.update(prompts={"query": "search_query: ", "clustering": "clustering: "}, default_prompt_name="clustering")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))
    ours = BiEncoder.from_pretrained(folder)
    assert ours.document_prompt == "" and ours.query_prompt == "search_query: "
    assert ours.tokenize(["text"], is_query=False) == ours.tokenize(["text"], prompt="")
    assert ours.document_overhead == len(ours.tokenize([""], is_query=False)[0]) == 2  # [CLS] [SEP]
    documents = ours.encode_documents(TEXTS)
    assert np.allclose(documents, ours.encode(TEXTS, prompt=""), atol=1e-6)
    reference = SentenceTransformer(str(folder), device="cpu")
    assert cosines(documents, reference.encode_document(TEXTS)).min() >= 0.99999
    assert cosines(ours.encode_queries(TEXTS), reference.encode_query(TEXTS)).min() >= 0.99999
    assert cosines(ours.encode(TEXTS), reference.encode(TEXTS)).min() >= 0.99999  # the default prompt, here
    assert np.abs(ours.encode(TEXTS) - documents).max() > 1e-3
