"""Encode a BEIR dataset once, keep it on disk: dense vectors (BiEncoder) or per-token vectors (ColBERT) for all
or some of its documents and queries, so that tests, benchmarks and the eval runner share one encoding.

The cache key hashes everything that decides the result: the model (the caller's ``model_key``, or the resolved
folder / hub id and its loader), its dtype, its length settings and ColBERT token pooling (``pool_factor``, left out
of the key when 1), the kind, the dataset folder and a digest of the texts, the ordered id lists and FORMAT_VERSION.
Each entry is a .npz (written whole or not at all by ``modernretrieval.files.atomic_write``) beside a .json that
describes it (with the encoding seconds and input tokens); an entry that cannot be read or does not match its ids
is ignored with a warning and encoded again. Documents, then queries,
go through the one encoding pipeline (``retrieval.encoding``: length-sorted chunks) under one progress bar; each
finished chunk is saved beside the entry (a .parts folder, removed once the entry is written), so an interrupted run
resumes from its last finished chunk. Not done: old entries are never evicted, and two processes encoding the same
key both do the work (the last rename wins).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modernretrieval.files import atomic_write
from encoder.checkpoint import is_hub_id
from retrieval.encoding import encode_texts
from retrieval.heads.base import Head, Kind
from retrieval.heads.colbert import pack_arrays
from retrieval.heads.loading import loader_for
from retrieval.heads.precision import precision_name

from .datasets.beir import BeirDataset

FORMAT_VERSION = 1
CHUNK_TEXTS = 128  # texts per model call (retrieval.encoding): the bar's step, what an interruption loses at most


@dataclass
class EncodedBeir:
    """Rows in the order of doc_ids / query_ids. Dense: docs (n, dim), no offsets. ColBERT: packed tokens
    (total_tokens, dim); text i is rows offsets[i]:offsets[i+1] (``doc(i)``, ``query(i)``)."""

    doc_ids: list[str]
    query_ids: list[str]
    docs: np.ndarray
    queries: np.ndarray
    doc_offsets: np.ndarray | None = None
    query_offsets: np.ndarray | None = None
    path: Path | None = None  # the cache entry it was read from or written to
    seconds: float | None = None  # time spent encoding (over all the runs that made it)
    tokens: int | None = None  # input tokens encoded

    def doc(self, i: int) -> np.ndarray:
        return _row(self.docs, self.doc_offsets, i)

    def query(self, i: int) -> np.ndarray:
        return _row(self.queries, self.query_offsets, i)


def _row(values: np.ndarray, offsets: np.ndarray | None, i: int) -> np.ndarray:
    return values[i] if offsets is None else values[offsets[i]: offsets[i + 1]]


def encode_beir(dataset: BeirDataset, model: Head | str | Path, kind: Kind,
                cache_dir: Path | None = Path(".cache/embeddings"), doc_ids: Sequence[str] | None = None,
                query_ids: Sequence[str] | None = None, model_key: str | None = None,
                show_progress: bool | None = None, token_embeddings: bool = False) -> EncodedBeir:
    """The dataset's documents (joined as ``document_texts`` does) and queries, all or the given ids in that order.

    ``model``: a loaded head of this ``kind`` (a BiEncoder for "dense", a ColBERT for "colbert"), named in the cache
    key by ``model_key``; or a folder / hub id, loaded here (``token_embeddings=True``: ColBERT.from_token_embeddings).
    ``cache_dir=None`` encodes without caching. ``show_progress``: None shows the bar on a terminal only."""
    if kind not in ("dense", "colbert"):
        raise ValueError(f'kind must be "dense" or "colbert", got {kind!r}')
    doc_ids = list(dataset.corpus) if doc_ids is None else [str(i) for i in doc_ids]
    query_ids = list(dataset.queries) if query_ids is None else [str(i) for i in query_ids]
    _check_ids(doc_ids, dataset.corpus, "document")
    _check_ids(query_ids, dataset.queries, "query")
    model, model_key = _model(model, kind, model_key, token_embeddings, cache_dir is not None)
    doc_texts, query_texts = dataset.document_texts(doc_ids), [dataset.queries[q] for q in query_ids]

    path, description = None, {}
    if cache_dir is not None:
        key = {"format": FORMAT_VERSION, "model": model_key, "dtype": _dtype(model), "lengths": model.settings(),
               "kind": kind, "dataset": str(dataset.folder.resolve()) if dataset.folder else None,
               "texts": _digest(doc_texts, query_texts), "doc_ids": doc_ids, "query_ids": query_ids}
        if getattr(model, "strip", False):  # texts stripped of edge whitespace: entries made before are another encoding
            key["strip_text_edges"] = True
        if key["lengths"].get("pool_factor") == 1:  # no token pooling: the key of entries made before pooling existed
            key["lengths"] = {k: v for k, v in key["lengths"].items() if k != "pool_factor"}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        name = dataset.folder.name if dataset.folder else "dataset"
        path = Path(cache_dir) / f"{name}-{kind}-{digest[:20]}.npz"
        cached = _read(path, doc_ids, query_ids, kind)
        if cached is not None:
            return cached
        description = {k: v for k, v in key.items() if not k.endswith("_ids")} | {"key": digest}

    parts = path.with_suffix(".parts") if path is not None else None
    docs, queries, seconds, tokens = _encode(model, doc_texts, query_texts, show_progress, parts)
    result = _assemble(doc_ids, query_ids, docs, queries, kind, model.dim)
    result.seconds, result.tokens = seconds, tokens
    if path is not None:
        _write(result, path, description | {"seconds": round(seconds, 1), "tokens": tokens, **_shapes(result)})
        shutil.rmtree(parts, ignore_errors=True)
        result.path = path
    return result


def model_cache_name(name_or_path: str | Path, loader: Callable) -> str:
    """How a model loaded from a folder or hub id is named in the cache key: the resolved folder (or the hub id),
    the loader, and for a folder a fingerprint of its files (names, sizes, modification times), so that a model
    trained again into the same folder is encoded again, e.g. "/models/minilm (ColBERT.from_token_embeddings)
    files 3f2a9c0d1e4b". A hub id found in the local hub cache is named by its snapshot folder too (the path holds
    the commit: a new revision is another key) with the same fingerprint; one not found, by the id alone."""
    local = Path(name_or_path).expanduser()
    if not local.is_dir():
        snapshot = hub_snapshot(str(name_or_path))
        if snapshot is None:
            return f"{name_or_path} ({loader.__qualname__})"
        return f"{name_or_path} ({loader.__qualname__}) snapshot {snapshot} files {_fingerprint(snapshot)}"
    folder = local.resolve()
    return f"{folder} ({loader.__qualname__}) files {_fingerprint(folder)}"


def _fingerprint(folder: Path) -> str:
    """The files under ``folder`` (names, sizes, modification times; links followed) in 12 hex digits."""
    hasher = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        info = path.stat()
        hasher.update(f"{path.relative_to(folder).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return hasher.hexdigest()[:12]


def hub_snapshot(name: str) -> Path | None:
    """The snapshot folder of hub id ``name`` in the local hub cache (``.../snapshots/{commit}``: the revision the
    loader just used), or None when it is not a hub id or not cached. Never goes to the network."""
    if not is_hub_id(name):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: the key names the id alone
        return None


def _check_ids(ids: list[str], known: dict, what: str) -> None:
    missing = [i for i in ids if i not in known]
    if missing:
        raise KeyError(f"{len(missing)} {what} id(s) not in the dataset, e.g. {missing[:3]}")


def _model(model: Head | str | Path, kind: Kind, model_key: str | None, token_embeddings: bool,
           caching: bool) -> tuple[Head, str | None]:
    """The model object and its name in the cache key."""
    if token_embeddings and (kind != "colbert" or not isinstance(model, (str, Path))):
        raise ValueError("token_embeddings=True loads a folder with ColBERT.from_token_embeddings: "
                         'it needs kind "colbert" and a model path')
    if isinstance(model, (str, Path)):
        load = loader_for(kind, token_embeddings)
        return load(model), model_key or model_cache_name(model, load)
    if getattr(model, "kind", None) != kind:
        wanted = "a dense head (BiEncoder)" if kind == "dense" else "a multi-vector head (ColBERT)"
        raise TypeError(f"kind {kind!r} encodes with {wanted}, got {type(model).__name__} "
                        f"(kind {getattr(model, 'kind', None)!r})")
    if caching and not model_key:
        raise ValueError("a loaded model needs model_key=... to name it in the cache key (or pass cache_dir=None)")
    return model, model_key


def _dtype(model: Head) -> str:
    """"torch.float32", "torch.bfloat16", or "int8" for quantized linear layers (whose weights are not parameters:
    the parameters left, the embeddings, are float32 and would give an int8 model a float32 key)."""
    return precision_name(model.backbone.model)  # type: ignore[attr-defined]


def _digest(*parts: list[str]) -> str:
    """The texts themselves, so that a changed corpus file or joining rule never serves stale vectors."""
    h = hashlib.sha256()
    for texts in parts:
        h.update(len(texts).to_bytes(8, "little"))
        for text in texts:
            data = text.encode()
            h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _encode(model: Head, doc_texts: list[str], query_texts: list[str], show_progress: bool | None,
            parts: Path | None) -> tuple[list[np.ndarray], list[np.ndarray], float, int]:
    """(document rows, query rows, encoding seconds, input tokens) through the one pipeline, under one progress bar,
    resuming from the chunks saved in ``parts``."""
    from tqdm.auto import tqdm

    disable = None if show_progress is None else not show_progress
    with tqdm(total=len(doc_texts) + len(query_texts), desc="encoding", unit="text", disable=disable) as bar:
        docs = encode_texts(model, doc_texts, False, chunk_texts=CHUNK_TEXTS, parts=parts,
                            progress=bar.update)
        queries = encode_texts(model, query_texts, True, chunk_texts=CHUNK_TEXTS, parts=parts,
                               progress=bar.update)
    return docs.rows, queries.rows, docs.seconds + queries.seconds, docs.tokens + queries.tokens


def _assemble(doc_ids: list[str], query_ids: list[str], docs: list[np.ndarray], queries: list[np.ndarray],
              kind: Kind, dim: int) -> EncodedBeir:
    if kind == "dense":
        return EncodedBeir(doc_ids, query_ids, _stack(docs, dim), _stack(queries, dim))
    (d, d_offsets), (q, q_offsets) = pack_arrays(docs), pack_arrays(queries)
    return EncodedBeir(doc_ids, query_ids, d.reshape(-1, dim), q.reshape(-1, dim), d_offsets, q_offsets)


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, dim), np.float32)


def _shapes(result: EncodedBeir) -> dict[str, object]:
    return {"n_docs": len(result.doc_ids), "n_queries": len(result.query_ids), "docs_shape": list(result.docs.shape),
            "queries_shape": list(result.queries.shape)}


def _write(result: EncodedBeir, path: Path, description: dict) -> None:
    arrays = {"doc_ids": np.array(result.doc_ids, dtype=str), "query_ids": np.array(result.query_ids, dtype=str),
              "docs": result.docs, "queries": result.queries}
    if result.doc_offsets is not None:
        arrays |= {"doc_offsets": result.doc_offsets, "query_offsets": result.query_offsets}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    description |= {"npz": path.name, "bytes": path.stat().st_size}
    atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(description, indent=2).encode() + b"\n"))


def _read(path: Path, doc_ids: list[str], query_ids: list[str], kind: Kind) -> EncodedBeir | None:
    """The cached entry, or None (missing, unreadable, or not matching the ids: then it is encoded again)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        result = EncodedBeir(arrays["doc_ids"].tolist(), arrays["query_ids"].tolist(), arrays["docs"],
                             arrays["queries"], arrays.get("doc_offsets"), arrays.get("query_offsets"), path)
        problem = _inconsistency(result, doc_ids, query_ids, kind)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        problem = f"{type(error).__name__}: {error}"
    if problem is None:
        try:
            description = json.loads(path.with_suffix(".json").read_text())
            result.seconds, result.tokens = description.get("seconds"), description.get("tokens")
        except (OSError, ValueError):
            pass  # the description is informative only
        return result
    warnings.warn(f"ignoring the cached embeddings {path} ({problem}); encoding again", stacklevel=3)
    return None


def _inconsistency(result: EncodedBeir, doc_ids: list[str], query_ids: list[str], kind: Kind) -> str | None:
    if result.doc_ids != doc_ids or result.query_ids != query_ids:
        return "other ids"
    for values, offsets, n in ((result.docs, result.doc_offsets, len(doc_ids)),
                               (result.queries, result.query_offsets, len(query_ids))):
        if values.dtype != np.float32 or values.ndim != 2:
            return f"{values.dtype} array of {values.ndim} dimensions"
        if kind == "dense" and (offsets is not None or len(values) != n):
            return "not a dense entry of this size"
        if kind == "colbert" and (offsets is None or len(offsets) != n + 1 or offsets[0] != 0
                                  or offsets[-1] != len(values) or (np.diff(offsets) < 0).any()):
            return "offsets do not match the token rows"
    return None
