"""ColBERT.from_token_embeddings: a plain encoder's token states as a multi-vector model, against transformers'
AutoModel last_hidden_state (the same texts, AutoTokenizer with truncation), L2-normalized per token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval import ColBERT, maxsim

TEXTS = ["A man is eating food.", "", "def add(a, b):\n    return a + b\n", "naïve café 北京 🚀",
         "Punctuation, kept: every token (even [CLS]/[SEP]) stays!"]
LONG = "retrieval " * 600  # about 600 word pieces: past every limit below except ModernBERT's 8192


@pytest.fixture(scope="module")
def minilm(minilm_folder) -> ColBERT:
    return ColBERT.from_token_embeddings(minilm_folder)


def reference(folder: Path, texts: list[str], max_length: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """transformers' token ids and normalized last_hidden_state, one text at a time (no padding at all)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    ids, states = [], []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            ids.append(encoded["input_ids"][0].tolist())
            states.append(torch.nn.functional.normalize(model(**encoded).last_hidden_state[0], dim=-1).numpy())
    return ids, states


def assert_equal_to_reference(model: ColBERT, folder: Path, texts: list[str], max_length: int) -> None:
    ref_ids, ref_states = reference(folder, texts, max_length)
    for is_query, encode in ((False, model.encode_documents), (True, model.encode_queries)):
        assert model.tokenize(texts, is_query=is_query) == ref_ids  # no marker token, no [MASK] expansion
        for ours, theirs in zip(encode(texts), ref_states):
            assert ours.dtype == np.float32 and ours.shape == theirs.shape  # every token kept, [CLS]/[SEP] included
            assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
            assert (ours * theirs).sum(1).min() >= 0.99999


def test_minilm_tokens_equal_transformers_last_hidden_state(minilm, minilm_folder):
    assert minilm.dim == 384 and not minilm.dense and minilm.skiplist == set()
    assert minilm.query_length == minilm.document_length == 256  # sentence_bert_config.json's max_seq_length
    assert_equal_to_reference(minilm, minilm_folder, TEXTS + [LONG], max_length=256)


def test_long_text_is_truncated_at_max_seq_length(minilm, minilm_folder):
    assert [len(a) for a in minilm.encode_documents([LONG]) + minilm.encode_queries([LONG])] == [256, 256]
    longer = ColBERT.from_token_embeddings(minilm_folder, query_length=16, document_length=512)
    assert [len(longer.encode_queries([LONG])[0]), len(longer.encode_documents([LONG])[0])] == [16, 512]


def test_maxsim_ranks_the_matching_document_first(minilm):
    documents = ["Cats are small domesticated felines.", "The stock market fell sharply on Monday."]
    scores = maxsim(minilm.encode_queries(["which animals are felines?"]), minilm.encode_documents(documents))
    assert scores.shape == (1, 2) and scores[0, 0] > scores[0, 1]


def test_plain_modernbert_checkpoint(tiny_checkpoint):
    """No modules.json: the backbone's own maximum (config max_position_embeddings), our unpadded encoder."""
    model = ColBERT.from_token_embeddings(tiny_checkpoint)
    assert model.document_length == model.query_length == 8192 and model.dim == 64
    assert_equal_to_reference(model, tiny_checkpoint, TEXTS + [LONG], max_length=8192)
    short = ColBERT.from_token_embeddings(tiny_checkpoint, document_length=40)
    assert len(short.encode_documents([LONG])[0]) == 40 and len(short.encode_queries([LONG])[0]) > 500


def test_save_is_refused_with_a_clear_error(minilm, tmp_path):
    with pytest.raises(ValueError, match="from_token_embeddings"):
        minilm.save(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()
