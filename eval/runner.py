"""What ``mret eval`` runs: a dataset -> encoded once (cached, resumable) -> an index (cached) -> the top ``depth``
documents of every query -> a TREC run file, metrics.json and a report beside the published numbers.

Every index here is ours: ``flat`` is exact search (FAISS flat for single vectors, exhaustive MaxSim for ColBERT),
``hnsw``/``ivfpq`` are FAISS's approximate ones, ``plaid`` our multi-vector index. Scores are pytrec_eval's."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from modernretrieval.errors import SettingsError
from retrieval.heads.base import Head, Kind
from retrieval.heads.precision import check as check_precision, precision_name
from retrieval.heads.token_pooling import check_pool_factor
from indexes.lexical import TERMS_VERSION
from retrieval.fusion import MODES, fuse
from retrieval.scoring import dense_top_k, maxsim_top_k

from .datasets.beir import BeirDataset
from .encode import EncodedBeir, encode_beir, model_cache_name
from .metrics import evaluate, run_from_top_k, trec_order, without_own_ids
from .published import published_scores

BM25 = "bm25"  # the lexical "model" in published.json and metrics.json
INDEXES = {"dense": ("flat", "hnsw", "ivfpq"), "colbert": ("flat", "plaid")}
QUERY_BATCH = 32
DOC_BATCH = 256  # documents per PLAID build batch
MIN_DEPTH = 100  # a shallower run would report recall@depth as Recall@100
TRAINING_DEPTH = 101  # evaluate_head: Recall@100, plus a query's own id, which is dropped from its results


@dataclass
class EvalSettings:
    model: str
    kind: Kind = "dense"
    index: str = "flat"
    max_length: int | None = None  # None: the model's own; 0: the backbone's maximum (8192 for ModernBERT)
    token_embeddings: bool = False  # kind colbert over any encoder's token states (ColBERT.from_token_embeddings)
    depth: int = 100  # documents retrieved per query (at least 100: Recall@100 and MAP are measured on them)
    nbits: int = 2  # PLAID residual bits
    index_options: dict[str, Any] = field(default_factory=dict)  # e.g. ef_search, n_ivf_probe, nprobe
    mode: str = "semantic"  # semantic (the model), lexical (BM25, no model), hybrid (both fused: retrieval.fusion)
    pool_factor: int = 1  # colbert: documents' token vectors pooled to about 1/pool_factor (ColBERT.pool_factor)
    device: str = "auto"  # auto, cpu, cuda, cuda:N (retrieval.heads.precision)
    dtype: str = "float32"  # auto, float32, bfloat16, int8: part of the embeddings cache key
    keep_own_ids: bool = False  # score a query's own id (BEIR drops it: eval.metrics, on own ids)
    split: str = "test"  # the qrels split scored: recorded, and matched against the published numbers' split

    def check(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.kind not in INDEXES:
            raise SettingsError(f"--kind must be dense or colbert, got {self.kind!r}")
        if self.index not in INDEXES[self.kind]:
            raise SettingsError(f"--index {self.index} does not apply to --kind {self.kind}; "
                                f"use one of: {', '.join(INDEXES[self.kind])}")
        if self.token_embeddings and self.kind != "colbert":
            raise SettingsError("--token-embeddings needs --kind colbert")
        if check_pool_factor(self.pool_factor) > 1 and self.kind != "colbert":
            raise SettingsError("--pool-factor pools token vectors: it needs --kind colbert")
        if self.depth < MIN_DEPTH:
            raise SettingsError(f"--depth must be at least {MIN_DEPTH} (Recall@100 and MAP are measured on the top "
                                f"{MIN_DEPTH}), got {self.depth}")
        if self.mode != "lexical":
            check_precision(self.device, self.dtype)


def run_eval(dataset: BeirDataset, settings: EvalSettings, output: Path, cache_dir: Path,
             show_progress: bool | None = None) -> dict[str, Any]:
    """Evaluate, write ``output``/run.trec and ``output``/metrics.json, and return the metrics record."""
    settings.check()
    if settings.mode == "lexical":
        return run_lexical_eval(dataset, settings, output, cache_dir)
    started = time.perf_counter()
    model, key = load_model(settings)
    encoded = encode_beir(dataset, model, settings.kind, cache_dir / "embeddings", model_key=key,
                          show_progress=show_progress)
    encode_seconds = time.perf_counter() - started
    index_started = time.perf_counter()
    searcher, index_info = open_index(encoded, settings, cache_dir / "indexes", show_progress)
    index_seconds = time.perf_counter() - index_started
    search_started = time.perf_counter()
    run = searcher(settings.depth + 1)  # one extra: a query's own id is dropped from its results, as BEIR does
    if settings.mode == "hybrid":
        lexical = lexical_run(dataset, encoded.query_ids, settings.depth + 1, cache_dir / "indexes")
        run = {q: dict(fuse(sorted(run[q].items(), key=lambda item: -item[1]), lexical[q], settings.depth + 1))
               for q in run}
    run = without_own_ids(run, settings.depth, settings.keep_own_ids)
    search_seconds = time.perf_counter() - search_started

    metrics = evaluate(run, dataset.qrels, settings.keep_own_ids)
    record = {
        **metrics,
        "dataset": {"name": dataset.name, "split": settings.split,
                    "folder": str(dataset.folder) if dataset.folder else None,
                    "documents": len(dataset.corpus), "queries": len(dataset.queries)},
        "settings": asdict(settings),
        "model": {"name": settings.model, "dim": model.dim, **model.settings(),
                  "precision": f"{next(model.parameters()).device} {precision_name(model)}"},
        "index": index_info,
        "timings": {"encode_s": round(encode_seconds, 2), "encoding_total_s": _round(encoded.seconds),
                    "index_s": round(index_seconds, 2), "search_s": round(search_seconds, 2),
                    "search_ms_per_query": round(1000 * search_seconds / max(1, len(encoded.query_ids)), 2),
                    "total_s": round(time.perf_counter() - started, 2)},
        "tokens": encoded.tokens,
        "tokens_per_s": round(encoded.tokens / encoded.seconds, 1) if encoded.tokens and encoded.seconds else None,
        "embeddings_cache": str(encoded.path) if encoded.path else None,
        "device": device_description(),
        "versions": versions(),
        "published": published_scores(settings.model, dataset.name, settings.kind, settings.split, settings.mode,
                                      settings.index)
        + (published_scores(BM25, dataset.name, "lexical", settings.split, settings.mode)
           if settings.mode == "hybrid" else []),
    }
    _write_outputs(record, run, output, settings)
    return record


def _write_outputs(record: dict[str, Any], run: dict[str, dict[str, float]], output: Path,
                   settings: EvalSettings) -> None:
    output.mkdir(parents=True, exist_ok=True)
    tag = "mret-bm25" if settings.mode == "lexical" else f"mret-{settings.kind}-{settings.index}"
    write_trec_run(run, output / "run.trec", tag=tag + ("-hybrid" if settings.mode == "hybrid" else ""))
    (output / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")


def run_lexical_eval(dataset: BeirDataset, settings: EvalSettings, output: Path, cache_dir: Path) -> dict[str, Any]:
    """``--mode lexical``: BM25 over the store's lexical table (indexes/lexical.py), no model loaded."""
    started = time.perf_counter()
    query_ids = list(dataset.queries)
    lexical = lexical_run(dataset, query_ids, settings.depth + 1, cache_dir / "indexes")
    run = without_own_ids({q: dict(hits) for q, hits in lexical.items()}, settings.depth, settings.keep_own_ids)
    seconds = time.perf_counter() - started
    record = {
        **evaluate(run, dataset.qrels, settings.keep_own_ids),
        "dataset": {"name": dataset.name, "split": settings.split,
                    "folder": str(dataset.folder) if dataset.folder else None,
                    "documents": len(dataset.corpus), "queries": len(dataset.queries)},
        "settings": asdict(settings) | {"model": BM25, "kind": "lexical", "index": "bm25"},
        "model": {"name": BM25, "terms_version": TERMS_VERSION},
        "timings": {"total_s": round(seconds, 2), "search_ms_per_query": round(1000 * seconds / max(1, len(query_ids)), 2)},
        "device": device_description(),
        "versions": versions(),
        "published": published_scores(BM25, dataset.name, "lexical", settings.split, "lexical"),
    }
    _write_outputs(record, run, output, settings)
    return record


def lexical_run(dataset: BeirDataset, query_ids: list[str], depth: int, cache: Path) -> dict[str, list[tuple[str, float]]]:
    """BM25's top ``depth`` for each query, from a lexical store of the corpus (title and text as one field, as
    Pyserini's "flat" index) kept in ``cache`` under a digest of the texts and the terms' version."""
    from indexes import DocumentStore
    from indexes.store import Document

    doc_ids = list(dataset.corpus)
    texts = dataset.document_texts(doc_ids)
    hasher = hashlib.sha256(str(TERMS_VERSION).encode())
    for doc_id, text in zip(doc_ids, texts):  # one document at a time: no second copy of the corpus
        hasher.update(json.dumps([doc_id, text]).encode())
    digest = hasher.hexdigest()[:20]
    folder = cache / f"lexical-{dataset.name or 'dataset'}-{digest}"
    complete = folder / "complete"
    if not complete.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        store = DocumentStore(folder / "store.sqlite")
        for start in range(0, len(doc_ids), 10_000):
            store.put([Document(i, text=t) for i, t in zip(doc_ids[start:start + 10_000], texts[start:start + 10_000])])
        store.close()
        complete.touch()
    store = DocumentStore(folder / "store.sqlite")
    try:
        return {q: store.lexical_search(dataset.queries[q], depth) for q in query_ids}
    finally:
        store.close()


def evaluate_head(head: Head, dataset: BeirDataset, depth: int = TRAINING_DEPTH) -> dict[str, float]:
    """nDCG@10 and Recall@100 (pytrec_eval, rounded to 4 places) of ``head`` on ``dataset`` by exact search: inner
    product for a dense head, exhaustive MaxSim for a multi-vector one. What training reports at each evaluation
    (the CLI hands it to the trainer, which sits beside the harness and does not import it); nothing is cached."""
    encoded = encode_beir(dataset, head, head.kind, cache_dir=None, show_progress=False)
    metrics = evaluate(exact_run(encoded, head.kind, depth), dataset.qrels)
    return {name: round(metrics[name], 4) for name in ("ndcg@10", "recall@100")}


def exact_run(encoded: EncodedBeir, kind: Kind, depth: int,
              progress: Callable[[int], object] | None = None) -> dict[str, dict[str, float]]:
    """The top ``depth`` documents of every query by exact search over the encoded vectors (``retrieval.scoring``:
    memory bounded by blocks of documents). ``progress``: multi-vector only, documents scored so far."""
    if kind == "dense":
        scores, top = dense_top_k(encoded.queries, encoded.docs, depth)
    else:
        queries = [encoded.query(i) for i in range(len(encoded.query_ids))]
        scores, top = maxsim_top_k(queries, encoded.docs, encoded.doc_offsets, depth, progress=progress)
    return run_from_top_k(scores, top, encoded.doc_ids, encoded.query_ids)


def load_model(settings: EvalSettings):
    """The model and its name in the embeddings cache key."""
    from retrieval.heads.loading import load_head, loader_for

    # the pool factor is in model.settings(): the embeddings cache key
    model = load_head(settings.model, settings.kind, settings.max_length, settings.token_embeddings,
                      device=settings.device, dtype=settings.dtype, pool_factor=settings.pool_factor)
    return model, model_cache_name(settings.model, loader_for(settings.kind, settings.token_embeddings))


# ----- indexes
def open_index(encoded: EncodedBeir, settings: EvalSettings, cache: Path, show_progress: bool | None):
    """(search function: depth -> run, index description). Built indexes are kept in ``cache`` under a key of the
    embeddings entry and the index settings, and reused when complete."""
    if settings.kind == "colbert" and settings.index == "flat":
        return (lambda depth: exhaustive_maxsim(encoded, depth, show_progress)), {"kind": "exhaustive MaxSim"}
    folder = _index_folder(encoded, settings, cache)
    index = _reuse(folder, len(encoded.doc_ids), settings)
    if index is None:
        index = _build(folder, encoded, settings, show_progress)
    info = {"kind": settings.index, "folder": str(folder), "stats": _jsonable(index.stats())}

    def search(depth: int) -> dict[str, dict[str, float]]:
        from tqdm.auto import tqdm

        run = {}
        n = len(encoded.query_ids)
        disable = None if show_progress is None else not show_progress
        for start in tqdm(range(0, n, QUERY_BATCH), desc="searching", unit="batch", disable=disable):
            stop = min(n, start + QUERY_BATCH)
            queries = (encoded.queries[start:stop] if settings.kind == "dense"
                       else [encoded.query(i) for i in range(start, stop)])
            for query_id, hits in zip(encoded.query_ids[start:stop],
                                      index.search(queries, k=depth, **settings.index_options)):
                run[query_id] = dict(hits)
        return run
    return search, info


def _index_folder(encoded: EncodedBeir, settings: EvalSettings, cache: Path) -> Path:
    spec = {"index": settings.index, "nbits": settings.nbits if settings.index == "plaid" else None}
    if encoded.path is None:  # not cached: a private folder, rebuilt every time
        return cache / f"uncached-{os.getpid()}-{settings.index}"
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"{encoded.path.stem}-{settings.index}-{digest}"


def _reuse(folder: Path, n_docs: int, settings: EvalSettings):
    from indexes import FaissIndex, IndexCorruptError, PlaidIndex

    if not (folder / "store.sqlite").exists():
        return None
    try:
        index = (PlaidIndex if settings.index == "plaid" else FaissIndex).open(folder)
    except (IndexCorruptError, OSError, ValueError):
        return None
    if isinstance(index, PlaidIndex) and index.legacy_codec:
        return None  # built by an earlier version: measure today's codec
    return index if len(index) == n_docs else None


def _build(folder: Path, encoded: EncodedBeir, settings: EvalSettings, show_progress: bool | None):
    from tqdm.auto import tqdm

    from indexes import FaissIndex, PlaidIndex

    shutil.rmtree(folder, ignore_errors=True)  # an incomplete build (the index's own commits make it consistent)
    folder.parent.mkdir(parents=True, exist_ok=True)
    dim = encoded.docs.shape[1]
    if settings.kind == "dense":
        index = FaissIndex.create(folder, dim, kind=settings.index)
        index.add(encoded.doc_ids, encoded.docs)
        return index
    n = len(encoded.doc_ids)
    disable = None if show_progress is None else not show_progress

    def batches() -> Iterator[tuple[list[str], list[np.ndarray]]]:
        with tqdm(total=n, desc="indexing", unit="doc", disable=disable) as bar:
            for start in range(0, n, DOC_BATCH):
                stop = min(n, start + DOC_BATCH)
                yield encoded.doc_ids[start:stop], [encoded.doc(i) for i in range(start, stop)]
                bar.update(stop - start)
    return PlaidIndex.build(folder, batches(), dim=dim, expected_tokens=len(encoded.docs), nbits=settings.nbits)


def exhaustive_maxsim(encoded: EncodedBeir, depth: int, show_progress: bool | None) -> dict[str, dict[str, float]]:
    """Exact late interaction (``--index flat`` for ColBERT): every query token against every document token, in
    blocks of documents (memory stays bounded on large corpora); the best ``depth`` kept per query."""
    from tqdm.auto import tqdm

    disable = None if show_progress is None else not show_progress
    with tqdm(total=len(encoded.doc_ids), desc="exhaustive MaxSim", unit="doc", disable=disable) as bar:
        return exact_run(encoded, "colbert", depth, progress=bar.update)


# ----- outputs
def write_trec_run(run: dict[str, dict[str, float]], path: Path, tag: str) -> None:
    """TREC format: query-id Q0 doc-id rank score tag, in trec_eval's order (ties: descending doc id). ``run`` is
    the run as scored (``without_own_ids``: own ids already dropped unless kept)."""
    with open(path, "w") as f:
        for query_id, docs in run.items():
            ranked = trec_order(docs)
            for rank, (doc_id, score) in enumerate(ranked, start=1):
                f.write(f"{query_id} Q0 {doc_id} {rank} {score:.6f} {tag}\n")


def device_description() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"device": "cpu", "cpu": cpu, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("modernretrieval", "torch", "numpy", "faiss-cpu", "tokenizers", "transformers",
                    "pytrec-eval-terrier"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _jsonable(stats: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(stats, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
