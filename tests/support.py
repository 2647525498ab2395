"""What the test modules share: paths to ../shared, tiny random checkpoints of real shapes, copies of real source
trees, and assertions. Fixtures are in conftest.py; the child processes that tests kill live beside their tests."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from encoder.testing import SHAPES, randomize_

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER_DIR = SHARED / "data" / "modernbert-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SCIFACT = SHARED / "data" / "beir" / "scifact"
PYLATE_MODEL = SHARED / "fixtures" / "pylate" / "model"


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



def dense_model_folder(folder: Path, seed: int = 5) -> Path:
    """A tiny random ModernBERT (2 layers, hidden 64, the real tokenizer) as a sentence-transformers folder with
    mean pooling and Normalize, written in the classic layout every sentence-transformers version reads."""
    from encoder.testing import random_encoder
    from retrieval.heads.formats import write_json, write_modules

    random_encoder("tiny", seed=seed, tokenizer_dir=TOKENIZER_DIR, mlm_head=False,
                   num_hidden_layers=2).save_pretrained(folder)
    write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    (folder / "2_Normalize").mkdir(exist_ok=True)
    write_modules(folder, [("", "sentence_transformers.models.Transformer"),
                           ("1_Pooling", "sentence_transformers.models.Pooling"),
                           ("2_Normalize", "sentence_transformers.models.Normalize")])
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 8192, "do_lower_case": False})
    return folder


def single_torch_thread():
    """A generator for a fixture: torch on one thread while it runs, the previous count restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def copy_package(module, destination: Path) -> Path:
    """An installed package's source folder (without __pycache__) copied to ``destination``."""
    source = Path(module.__file__).parent
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def editor_lines(text: str) -> list[str]:
    """``text`` cut into lines as editors, grep -n and compilers number them: at "\\n" only (a form feed or a
    vertical tab inside a line does not start a new one), each line keeping its end."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


# Scores are float32 sums (a dot product, or MaxSim's sum of per-token maxima). Computed along another path (segments
# merged, an index reopened with another decoder, another batch), the same sum is accumulated in another order: each
# addition rounds by up to half an ulp, so a sum of a few dozen terms of magnitude <= 8 can move by ~1e-6. 1e-5 leaves
# a margin, and is still far below any difference between two documents that are not exact ties.
SCORE_ATOL = 1e-5

Hit = tuple  # (id, score, ...): the id first, the score second


def assert_same_ranking(actual: Sequence[Sequence[Hit]], expected: Sequence[Sequence[Hit]],
                        atol: float = SCORE_ATOL) -> None:
    """Per query, the same documents in the same order, with scores equal to within ``atol``.

    Use it where the two rankings come from different computations of the same scores; keep ``==`` where the
    computation is bit for bit the same. Documents whose scores agree within ``atol`` are ties: rounding may put
    them in either order, so a run of ties must hold the same ids in any order. The last run is compared by its scores
    alone: a tie with the document just past k may bring either one in."""
    assert len(actual) == len(expected), (len(actual), len(expected))
    for query, (got, want) in enumerate(zip(actual, expected)):
        assert len(got) == len(want), (query, got, want)
        got_scores, want_scores = np.array([h[1] for h in got]), np.array([h[1] for h in want])
        assert np.allclose(got_scores, want_scores, rtol=0, atol=atol), (query, got, want)
        start = 0
        while start < len(want):
            end = start + 1
            while end < len(want) and abs(want_scores[end - 1] - want_scores[end]) <= atol:
                end += 1
            if end < len(want):  # the last run may be cut at k, beside ties not shown: only its scores count
                assert {h[0] for h in got[start:end]} == {h[0] for h in want[start:end]}, (query, got, want)
            start = end


def long_chunk():
    """A 300-line chunk (lines 11-310 of big.py) defining parse_header at 110-112 and retry_later at 210-212, filler
    around them: what span rules pick from."""
    from indexes import Document

    lines = [f"# filler line {i}" for i in range(1, 301)]
    lines[99:104] = ["def parse_header(raw):", "    fields = raw.split(':')", "    return fields", "", ""]
    lines[199:204] = ["def retry_later(delay):", "    backoff = delay * 2", "    schedule(backoff)", "", ""]
    return Document("big#0", source="big.py", start_line=11, end_line=310, text="\n".join(lines),
                    metadata={"symbols": [["parse_header", "function", 110, 112, None],
                                          ["retry_later", "function", 210, 212, None]]})
