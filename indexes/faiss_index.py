"""Single-vector search with FAISS: exact inner product (flat), HNSW, or IVF-PQ, on L2-normalized vectors.

Each segment is one faiss index file whose ids are our global rows, memory-mapped on open where faiss allows it.
Removed rows are excluded at search time with an id selector until ``compact`` rebuilds the segments. IVF-PQ trains
its coarse quantizer and product quantizer once, on the first add (kept as a shared file), so later adds only encode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from . import files
from .base import VectorIndex, check_finite, sqrt_count
from .state import Pending, Segment, Snapshot
from .errors import IndexCorruptError, IndexInputError
from .files import FileEntry

KINDS = ("flat", "hnsw", "ivfpq", "auto")
AUTO_FLAT_BELOW, AUTO_HNSW_BELOW = 100_000, 2_000_000
READ_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


class FaissIndex(VectorIndex):
    kind = "faiss"

    @classmethod
    def create(cls, path: str | Path, dim: int, kind: str = "auto", normalize: bool = True, hnsw_m: int = 32,
               ef_construction: int = 200, ef_search: int = 128, nlist: int | None = None,
               pq_m: int | None = None, nprobe: int = 32, lock_timeout: float = 60.0) -> "FaissIndex":
        """``kind="auto"`` picks flat under 100k vectors, HNSW under 2M, IVF-PQ above, by the size of the first add.
        ``normalize``: vectors and queries are L2-normalized, so scores are cosines."""
        if kind not in KINDS:
            raise IndexInputError(f"kind must be one of {KINDS}, got {kind!r}")
        if not isinstance(dim, int) or dim < 1:
            raise IndexInputError(f"dim must be a positive integer, got {dim!r}")
        settings = {"dim": dim, "index": kind, "normalize": normalize, "hnsw_m": hnsw_m,
                    "ef_construction": ef_construction, "ef_search": ef_search, "nlist": nlist,
                    "pq_m": pq_m, "nprobe": nprobe}
        return cls._create(path, settings, lock_timeout)

    # ----- input
    def _check_embeddings(self, embeddings: Any, ids: list[str]) -> np.ndarray:
        vectors = self._as_matrix(embeddings, "embeddings")
        if len(vectors) != len(ids):
            raise IndexInputError(f"{len(ids)} ids but {len(vectors)} embeddings")
        return vectors

    def _check_queries(self, queries: Any) -> np.ndarray:
        try:
            queries = np.asarray(queries, dtype=np.float32)
        except (TypeError, ValueError) as error:  # ragged rows, strings
            raise IndexInputError(f"queries must be a numeric (n, {self.settings['dim']}) array: {error}") from None
        return self._as_matrix(queries[None] if queries.ndim == 1 else queries, "queries")

    def _as_matrix(self, array: Any, what: str) -> np.ndarray:
        try:
            array = np.asarray(array, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise IndexInputError(f"{what} must be a numeric (n, {self.settings['dim']}) array: {error}") from None
        if array.ndim != 2 or array.shape[1] != self.settings["dim"]:
            raise IndexInputError(f"{what} must have shape (n, {self.settings['dim']}), got {array.shape}")
        check_finite(array, what)
        if self.settings["normalize"]:
            array = array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(array)

    # ----- segments
    def _open_shared(self, shared: dict[str, FileEntry], settings: dict[str, Any]) -> faiss.Index | None:
        """The trained IVF-PQ (empty), or None for flat and HNSW, or before the first add."""
        return _read_faiss(files.check_size(self.files_dir, shared["trained"])) if "trained" in shared else None

    @property
    def trained(self) -> faiss.Index | None:
        return self._snapshot().shared

    def _write_segment(self, pending: Pending, prefix: str, vectors: np.ndarray,
                       rows: np.ndarray | None = None) -> dict[str, FileEntry]:
        rows = np.arange(pending.next_row, pending.next_row + len(vectors), dtype=np.int64) if rows is None else rows
        settings = pending.current_settings
        if settings["index"] == "auto":
            kind = "flat" if len(vectors) < AUTO_FLAT_BELOW else "hnsw" if len(vectors) < AUTO_HNSW_BELOW else "ivfpq"
            settings = pending.settings = {**settings, "index": kind}
        index = self._empty_index(pending, settings, vectors, prefix)
        index.add_with_ids(vectors, rows)
        return {"index": files.write_bytes(self.files_dir, f"{prefix}-index.faiss", faiss.serialize_index(index))}

    def _empty_index(self, pending: Pending, settings: dict[str, Any], vectors: np.ndarray,
                     prefix: str) -> faiss.Index:
        dim, kind = settings["dim"], settings["index"]
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, settings["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = settings["ef_construction"]
            return faiss.IndexIDMap2(hnsw)
        trained = pending.current_shared
        if trained is None:
            trained = self._train_ivfpq(pending, settings, vectors, prefix)
        return faiss.clone_index(trained)

    def _train_ivfpq(self, pending: Pending, settings: dict[str, Any], vectors: np.ndarray,
                     prefix: str) -> faiss.Index:
        """Train the coarse quantizer and product quantizer on ``vectors`` and stage them in ``pending``."""
        dim = settings["dim"]
        # sqrt-sized, but small enough that the coarse k-means gets ~39 vectors per list (faiss's rule of thumb)
        nlist = settings["nlist"] or min(sqrt_count(len(vectors), 4), 2 ** max(0, int(np.log2(max(len(vectors) // 39, 1)))))
        pq_m = settings["pq_m"] or max(m for m in (8, 16, 24, 32, 48, 64, 96) if dim % m == 0 and m <= dim // 4)  # sub-quantizers
        pq_bits = 8 if len(vectors) >= 39 * 256 else 4  # 16-code sub-quantizers train on fewer vectors
        needed = max(39 * nlist, 39 * 2**pq_bits)  # faiss's rule of thumb for the coarse and the PQ k-means
        if len(vectors) < needed:
            raise IndexInputError(f"IVF-PQ trains on its first add and needs at least {needed} vectors there "
                                  f"(got {len(vectors)}); add more at once, or use kind='flat' or 'hnsw'")
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}x{pq_bits}", faiss.METRIC_INNER_PRODUCT)
        # the factory turns on polysemous training for 8-bit codes (a code reordering for Hamming filtering, which
        # our search never enables): it took 6x the rest of training and changed no result
        index.do_polysemous_training = False
        index.train(vectors)
        pending.shared_data = index
        pending.shared = {"trained": files.write_bytes(
            self.files_dir, f"{prefix}-trained.faiss", faiss.serialize_index(index))}
        pending.settings = {**settings, "nlist": nlist, "pq_m": pq_m, "pq_bits": pq_bits}
        return index

    def _write_merged(self, pending: Pending, prefix: str,
                      live: list[tuple[Segment, np.ndarray]]) -> dict[str, FileEntry]:
        base = pending.base
        if base.settings["index"] == "ivfpq":  # PQ codes cannot be re-encoded losslessly: move them instead
            merged = faiss.clone_index(base.shared)
            for segment, keep in live:
                merged.merge_from(_read_faiss(self.files_dir / segment.files["index"].name), 0)
                if not keep.all():
                    merged.remove_ids(faiss.IDSelectorBatch(segment.rows[~keep]))
            return {"index": files.write_bytes(self.files_dir, f"{prefix}-index.faiss", faiss.serialize_index(merged))}
        vectors, rows = [], []
        for segment, keep in live:
            index = segment.data
            ids = faiss.vector_to_array(index.id_map)
            stored = index.index.reconstruct_n(0, index.ntotal)
            wanted = base.alive[ids]
            vectors.append(stored[wanted])
            rows.append(ids[wanted])
        return self._write_segment(pending, prefix, np.concatenate(vectors), np.concatenate(rows))

    def _open_segment(self, segment: Segment, shared: Any, settings: dict[str, Any]) -> faiss.Index:
        path = files.check_size(self.files_dir, segment.files["index"])
        index = _read_faiss(path, READ_FLAGS)
        if index.ntotal != len(segment.rows) or index.d != settings["dim"]:
            raise IndexCorruptError(f"{path} holds {index.ntotal} vectors of {index.d} dimensions, the index "
                                    f"recorded {len(segment.rows)} of {settings['dim']}")
        return index

    # ----- search
    def _search(self, snapshot: Snapshot, queries: np.ndarray, k: int, allowed: np.ndarray | None,
                ef_search: int | None = None, nprobe: int | None = None):
        bits = None if allowed is None else np.packbits(allowed, bitorder="little")
        selector = None if bits is None else faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        settings = snapshot.settings
        kind = settings["index"]
        ef = ef_search or settings["ef_search"]
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=ef)
        elif kind == "ivfpq":
            params = faiss.SearchParametersIVF(nprobe=nprobe or settings["nprobe"])
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        all_scores, all_rows = [], []
        for segment in snapshot.segments.values():  # IDMap2 and IVF translate the selector to their own ids
            # faiss allocates queries x k results (and HNSW an efSearch-sized heap) whatever the segment holds: a
            # segment cannot return more than its vectors, so asking for more only costs memory (k = 10**9: GBs)
            segment_k = min(k, segment.data.ntotal)
            if segment_k < 1:
                continue
            if kind == "hnsw":  # efSearch >= the segment's vectors either way when k exceeds them: same results
                params.efSearch = max(ef, segment_k)
            scores, rows = segment.data.search(queries, segment_k, params=params)
            all_scores.append(scores)
            all_rows.append(rows)
        if not all_scores:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        scores, rows = np.concatenate(all_scores, axis=1), np.concatenate(all_rows, axis=1)
        out = []
        for s, r in zip(scores, rows):
            valid = r >= 0
            s, r = s[valid], r[valid]
            order = np.argsort(-s, kind="stable")[:k]
            out.append((r[order], s[order]))
        return out

    def _stats(self, snapshot: Snapshot) -> dict[str, Any]:
        return {**super()._stats(snapshot), "vectors": len(snapshot.row_of)}


def _read_faiss(path: Path, flags: int = 0) -> faiss.Index:
    """A faiss file of the index; IndexCorruptError (not faiss's RuntimeError) when it cannot be read: a damaged
    file is reported as the damage it is, and a reader racing a writer's collection retries (base.py ``_view``)."""
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as error:
        raise IndexCorruptError(f"{path} is not a readable faiss index ({str(error).splitlines()[0]})") from None
