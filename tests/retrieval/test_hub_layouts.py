"""The hub models named by the heads issue cannot be downloaded here: their folder layouts are rebuilt with their
config files as the model cards and documentation give them (tiny random weights instead of the real ones), and
each must load and encode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from encoder.testing import random_encoder
from retrieval import BiEncoder, ColBERT

PYLATE_TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "pylate" / "model"
PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def write(folder: Path, files: dict) -> None:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2))


def test_nomic_modernbert_embed_base_layout(tmp_path, tokenizer_dir):
    """nomic-ai/modernbert-embed-base: mean pooling, Normalize, "search_query: "/"search_document: ", Matryoshka."""
    random_encoder("tiny", seed=21, tokenizer_dir=tokenizer_dir, mlm_head=False).save_pretrained(tmp_path)
    write(tmp_path, {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                         {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
        "sentence_bert_config.json": {"max_seq_length": 8192, "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": 64, "pooling_mode_cls_token": False,
                                  "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                                  "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
                                  "pooling_mode_lasttoken": False, "include_prompt": True},
        "config_sentence_transformers.json": {"__version__": {"sentence_transformers": "3.3.1"},
                                              "prompts": {"query": "search_query: ", "document": "search_document: "},
                                              "default_prompt_name": None, "similarity_fn_name": "cosine"},
    })
    (tmp_path / "2_Normalize").mkdir()
    full = BiEncoder.from_pretrained(tmp_path)
    queries = full.encode_queries(["What is TSNE?", "Who is Laurens van der Maaten?"])
    assert queries.shape == (2, 64) and np.allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)
    prefixed = full.encode(["search_query: What is TSNE?"], prompt="")
    assert np.allclose(queries[0], prefixed[0], atol=1e-6)  # the prompt is the model card's prefix
    small = BiEncoder.from_pretrained(tmp_path, truncate_dim=32).encode_documents(["TSNE is a method"])
    assert small.shape == (1, 32) and np.isclose(np.linalg.norm(small), 1, atol=1e-5)


def test_gte_modern_colbert_v1_layout(tmp_path):
    """lightonai/GTE-ModernColBERT-v1: PyLate layout, 1_Dense 768 -> 128 (here 64 -> 128), document_length 300."""
    if not (PYLATE_TOKENIZER / "tokenizer.json").exists():
        pytest.skip("the PyLate fixture (its tokenizer has [Q] and [D]) is not in ../shared")
    random_encoder("tiny", seed=22, tokenizer_dir=PYLATE_TOKENIZER, mlm_head=False, vocab_size=50370).save_pretrained(
        tmp_path)
    write(tmp_path, {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                         {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}],
        "sentence_bert_config.json": {"max_seq_length": 299, "do_lower_case": False},
        "1_Dense/config.json": {"in_features": 64, "out_features": 128, "bias": False,
                                "activation_function": "torch.nn.modules.linear.Identity"},
        "config_sentence_transformers.json": {
            "__version__": {"sentence_transformers": "4.0.2", "pylate": "1.2.0"}, "prompts": {"query": "", "document": ""},
            "default_prompt_name": None, "similarity_fn_name": "MaxSim", "query_prefix": "[Q] ",
            "document_prefix": "[D] ", "query_length": 32, "document_length": 300, "attend_to_expansion_tokens": False,
            "skiplist_words": PUNCTUATION},
    })
    save_file({"linear.weight": torch.randn(128, 64) * 0.05}, str(tmp_path / "1_Dense" / "model.safetensors"))
    model = ColBERT.from_pretrained(tmp_path)
    q = model.encode_queries(["what is late interaction?"])[0]
    d = model.encode_documents(["word " * 500 + "end."])[0]
    assert q.shape == (32, 128) and d.shape == (300, 128)  # truncated at document_length; "." not in the first 300
    assert np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
