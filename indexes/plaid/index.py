"""PlaidIndex: multi-vector (ColBERT) search with residual compression, our own PLAID.

Build: the first add (or the first ``sample_tokens`` of a stream) trains the codec: spherical k-means centroids,
their count growing like the square root of the token count, and residual codebooks (codec.py). Every document is
stored as centroid codes + packed residuals, with an inverted file from centroid to documents (one per segment).
Later adds reuse the codec; when the index has grown far past what the codec was trained on it is re-clustered
(``rebuild``). Search runs the four PLAID stages of search.py over each segment and merges the results.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import files
from ..base import Segment, VectorIndex, check_finite
from ..errors import IndexCorruptError, IndexInputError
from ..files import FileEntry
from ..store import Document
from .codec import ResidualCodec, scalar_codebooks
from .search import SearchSettings, SegmentArrays, inverted_file, search_segment

CODEC_ARRAYS = ("centroids", "rotation", "codebooks", "scales")
SEGMENT_ARRAYS = ("codes", "residuals", "inverse_norms", "doc_offsets", "ivf_offsets", "ivf_docs")
REBUILD_GROWTH = 8  # re-cluster when the index holds this many times the tokens it held when the codec was trained


class PlaidIndex(VectorIndex):
    kind = "plaid"

    @classmethod
    def create(cls, path: str | Path, dim: int, nbits: int = 2, n_centroids: int | None = None,
               centroid_factor: float = 8.0, kmeans_niters: int = 4, sample_tokens: int = 1 << 19, seed: int = 0,
               lock_timeout: float = 60.0) -> "PlaidIndex":
        """``n_centroids`` defaults to the power of two at or below centroid_factor * sqrt(tokens at training);
        the codec is trained on up to ``sample_tokens`` token embeddings. On full SciFact (1.24M MiniLM tokens) the
        defaults give 8192 centroids from 524k tokens: the recall of the exact top-10 over the decompressed vectors
        went from 0.946 (4096 centroids, 262k tokens) to 0.952; ColBERT's 16384 gave no more (0.951) for twice the
        build time."""
        if nbits not in (1, 2, 4):
            raise IndexInputError(f"nbits must be 1, 2 or 4, got {nbits!r}")
        if not isinstance(dim, int) or dim < 1 or dim * nbits % 8:
            raise IndexInputError(f"dim must be a positive integer with dim * nbits a multiple of 8, got {dim!r}")
        settings = {"dim": dim, "nbits": nbits, "n_centroids": n_centroids, "centroid_factor": centroid_factor,
                    "kmeans_niters": kmeans_niters, "sample_tokens": sample_tokens, "seed": seed, "trained_tokens": 0}
        return cls._create(path, settings, lock_timeout)

    @classmethod
    def build(cls, path: str | Path, batches: Iterable[tuple[Sequence[str], Sequence[np.ndarray]]], dim: int,
              expected_tokens: int | None = None, **settings: Any) -> "PlaidIndex":
        """Create an index from a stream of (ids, arrays) batches, in one commit, holding only a batch (and the
        training sample) in RAM at fp32: a corpus larger than memory can be indexed."""
        index = cls.create(path, dim, **settings)
        index.add_stream(batches, expected_tokens)
        return index

    def add_stream(self, batches: Iterable[tuple[Sequence[str], Sequence[np.ndarray]]],
                   expected_tokens: int | None = None) -> None:
        """Add batches of (ids, arrays) in one commit. Until the codec exists, batches are held back until
        ``sample_tokens`` tokens are buffered, so that the codec trains on a real sample, not the first batch;
        ``expected_tokens`` (the corpus size, if known) sizes the centroids. A stream that ends far larger than the
        codec was sized for is re-clustered at the end."""
        self._expected_tokens = expected_tokens
        with self.transaction():
            held: list[tuple[Sequence[str], Sequence[np.ndarray]]] = []
            for ids, arrays in batches:
                if self.codec is None and self._pending_codec is None:
                    held.append((ids, arrays))
                    if sum(len(a) for _, batch_arrays in held for a in batch_arrays) < self.settings["sample_tokens"]:
                        continue
                    sample = [a for held_ids, arrays in held for a in self._check_embeddings(arrays, list(held_ids))]
                    self._train(np.concatenate(sample), total_tokens=self._expected_tokens)
                    for held_ids, held_arrays in held:
                        self.add(held_ids, held_arrays)
                    held = []
                else:
                    self.add(ids, arrays)
            for held_ids, held_arrays in held:
                self.add(held_ids, held_arrays)
        self._expected_tokens = None
        self._rebuild_if_outgrown()

    # ----- input
    def _check_embeddings(self, embeddings: Any, ids: list[str]) -> list[np.ndarray]:
        arrays = self._as_arrays(embeddings, "embeddings")
        if len(arrays) != len(ids):
            raise IndexInputError(f"{len(ids)} ids but {len(arrays)} embedding arrays")
        return arrays

    def _check_queries(self, queries: Any) -> list[np.ndarray]:
        if isinstance(queries, np.ndarray) and queries.ndim == 2:
            queries = [queries]
        return self._as_arrays(queries, "queries")

    def _as_arrays(self, arrays: Any, what: str) -> list[np.ndarray]:
        """One (n_tokens, dim) float32 array per document, each token L2-normalized."""
        dim, out = self.settings["dim"], []
        for i, array in enumerate(arrays):
            try:
                array = np.asarray(array, dtype=np.float32)
            except (TypeError, ValueError) as error:
                raise IndexInputError(f"{what}[{i}] is not a numeric array: {error}") from None
            if array.ndim != 2 or array.shape[1] != dim or len(array) == 0:
                raise IndexInputError(f"{what}[{i}] must have shape (n_tokens >= 1, {dim}), got {array.shape}")
            check_finite(array, f"{what}[{i}]")
            out.append(array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12))
        return out

    # ----- the codec, shared by all segments
    def _open_shared(self, shared: dict[str, FileEntry]) -> None:
        self._pending_codec: ResidualCodec | None = None
        self._expected_tokens: int | None = None
        self.legacy_codec = False  # True: written by an earlier version, with scalar buckets (rebuild() renews it)
        if not shared:
            self.codec: ResidualCodec | None = None
            return
        arrays = {k: np.asarray(files.open_array(self.files_dir, entry, mmap=False)) for k, entry in shared.items()}
        dim, nbits = self.settings["dim"], self.settings["nbits"]
        self.legacy_codec = "codebooks" not in arrays
        if self.legacy_codec:  # written before codebooks: per-dimension buckets, no rotation
            arrays["codebooks"] = scalar_codebooks(arrays["weights"], nbits, dim)
            arrays["rotation"] = np.eye(dim, dtype=np.float32)
        self.codec = ResidualCodec(arrays["centroids"], arrays["rotation"], arrays["codebooks"], nbits,
                                   arrays.get("scales"))  # no scales: an index written before they existed

    def _train(self, vectors: np.ndarray, total_tokens: int | None = None) -> ResidualCodec:
        """Train a codec on (a sample of) ``vectors`` and stage it in the pending commit. The centroid count follows
        the tokens the index holds (``total_tokens``, default: all of ``vectors``), not the sample size."""
        pending = self._pending
        assert pending is not None
        settings = dict(pending.settings or self.settings)
        rng = np.random.default_rng(settings["seed"])
        total_tokens = total_tokens or len(vectors)
        n_centroids = settings["n_centroids"] or 2 ** int(math.log2(max(2.0, settings["centroid_factor"] * math.sqrt(
            total_tokens))))
        if len(vectors) > settings["sample_tokens"]:
            vectors = vectors[np.sort(rng.choice(len(vectors), settings["sample_tokens"], replace=False))]
        n_centroids = max(1, min(n_centroids, len(vectors)))
        codec = ResidualCodec.train(vectors, n_centroids, settings["nbits"], settings["kmeans_niters"], settings["seed"])
        prefix = f"g{self.generation + 1:06d}-codec"
        pending.shared = {name: files.write_array(self.files_dir, f"{prefix}-{name}.npy", getattr(codec, name))
                          for name in CODEC_ARRAYS}
        pending.settings = {**settings, "n_centroids_trained": n_centroids, "sample_size": len(vectors),
                            "trained_tokens": total_tokens}
        self._pending_codec = codec
        return codec

    def _current_codec(self) -> ResidualCodec | None:
        return self._pending_codec or self.codec

    # ----- segments
    def _write_segment(self, prefix: str, vectors: list[np.ndarray]) -> dict[str, FileEntry]:
        tokens = np.concatenate(vectors)
        codec = self._current_codec() or self._train(tokens, self._expected_tokens)
        codes, residuals = codec.compress(tokens)
        offsets = np.zeros(len(vectors) + 1, dtype=np.int64)
        np.cumsum([len(v) for v in vectors], out=offsets[1:])
        return self._write_arrays(prefix, codec, codes, residuals, offsets)

    def _write_arrays(self, prefix: str, codec: ResidualCodec, codes: np.ndarray, residuals: np.ndarray,
                      offsets: np.ndarray) -> dict[str, FileEntry]:
        ivf_offsets, ivf_docs = inverted_file(codes, offsets, len(codec.centroids))
        arrays = {"codes": codes, "residuals": residuals, "inverse_norms": codec.inverse_norms(codes, residuals),
                  "doc_offsets": offsets, "ivf_offsets": ivf_offsets, "ivf_docs": ivf_docs}
        return {name: files.write_array(self.files_dir, f"{prefix}-{name}.npy", array) for name, array in arrays.items()}

    def _write_merged(self, prefix: str, live: list[tuple[Segment, np.ndarray]]) -> dict[str, FileEntry]:
        """Concatenate the live documents' codes and residuals: no decompression, no re-encoding."""
        codes, residuals, lengths = [], [], []
        for segment, keep in live:
            data: SegmentArrays = segment.data
            docs = np.flatnonzero(keep)
            starts, stops = data.doc_offsets[docs], data.doc_offsets[docs + 1]
            tokens = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]) if len(docs) else np.zeros(0, np.int64)
            codes.append(data.codes[tokens])
            residuals.append(data.residuals[tokens])
            lengths.append(stops - starts)
        offsets = np.zeros(sum(len(x) for x in lengths) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
        assert self.codec is not None
        return self._write_arrays(prefix, self.codec, np.concatenate(codes), np.concatenate(residuals), offsets)

    def _open_segment(self, segment: Segment) -> SegmentArrays:
        """The arrays, memory-mapped, after the checks that keep a damaged file from failing deep inside a search:
        shapes, offsets that are monotonic and end where the data ends, ids in range. Codes and the inverted file
        are read for this (a few bytes per token); residuals, the bulk, are not."""
        data = SegmentArrays(**{name: files.open_array(self.files_dir, segment.files[name]) for name in SEGMENT_ARRAYS})
        n_docs, n_tokens = len(segment.rows), len(data.codes)
        codec = self._current_codec()
        n_centroids = len(codec.centroids) if codec is not None else 0
        problems = [
            data.codes.ndim != 1 or (n_tokens and int(data.codes.max()) >= n_centroids),
            data.residuals.shape != (n_tokens, self.settings["dim"] * self.settings["nbits"] // 8),
            data.inverse_norms.shape != (n_tokens,),
            len(data.doc_offsets) != n_docs + 1 or data.doc_offsets[0] != 0 or data.doc_offsets[-1] != n_tokens
            or bool((np.diff(data.doc_offsets) < 0).any()),
            len(data.ivf_offsets) != n_centroids + 1 or data.ivf_offsets[0] != 0
            or data.ivf_offsets[-1] != len(data.ivf_docs) or bool((np.diff(data.ivf_offsets) < 0).any()),
            len(data.ivf_docs) and not 0 <= int(data.ivf_docs.min()) <= int(data.ivf_docs.max()) < n_docs,
        ]
        if any(problems):
            names = ", ".join(segment.files[n].name for n in SEGMENT_ARRAYS)
            raise IndexCorruptError(f"segment {segment.id} of {self.path} is inconsistent ({names}): a file is damaged")
        return data

    @property
    def n_tokens(self) -> int:
        return int(sum(len(s.data.codes) for s in self._segments.values()))

    # ----- growth
    def rebuild(self) -> None:
        """Re-cluster: train a new codec on a sample of the (decompressed) live tokens, re-encode every document
        into one segment. Done by itself when the index outgrows its codec; lossy only by one more quantization."""
        with self.transaction():
            assert self.codec is not None
            old_codec, live = self.codec, [(s, self._alive[s.rows]) for s in self._segments.values()]
            sample = self._sample_tokens(old_codec, live)
            codec = self._train(sample, total_tokens=self.n_tokens)
            rows, codes, residuals, lengths = [], [], [], []
            for segment, keep in live:
                data: SegmentArrays = segment.data
                for doc in np.flatnonzero(keep):
                    a, b = data.doc_offsets[doc], data.doc_offsets[doc + 1]
                    c, r = codec.compress(old_codec.decompress(data.codes[a:b], data.residuals[a:b]))
                    codes.append(c), residuals.append(r), lengths.append(b - a)
                rows.append(segment.rows[keep])
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            self._replace([s for s, _ in live], np.concatenate(rows), lambda prefix: self._write_arrays(
                prefix, codec, np.concatenate(codes), np.concatenate(residuals), offsets))

    def _sample_tokens(self, codec: ResidualCodec, live: list[tuple[Segment, np.ndarray]]) -> np.ndarray:
        rng = np.random.default_rng(self.settings["seed"])
        total = sum(len(s.data.codes) for s, _ in live)
        take = min(1.0, self.settings["sample_tokens"] / max(total, 1))
        parts = []
        for segment, _ in live:
            n = len(segment.data.codes)
            chosen = np.sort(rng.choice(n, max(1, int(n * take)), replace=False))
            parts.append(codec.decompress(segment.data.codes[chosen], segment.data.residuals[chosen]))
        return np.concatenate(parts)

    def add(self, doc_ids: Sequence[str], embeddings: Any, documents: Sequence[Document] | None = None,
            expected_tokens: int | None = None) -> None:
        """As VectorIndex.add. When this add trains the codec (the index has none yet), ``expected_tokens`` (what the
        index will hold, if known) sizes the centroids instead of the tokens of this add."""
        if expected_tokens is not None:
            self._expected_tokens = expected_tokens
        try:
            super().add(doc_ids, embeddings, documents)
        finally:
            if expected_tokens is not None:
                self._expected_tokens = None
        if self._pending is None:
            self._rebuild_if_outgrown()

    def _rebuild_if_outgrown(self) -> None:
        trained = self.settings["trained_tokens"]
        if trained and self.n_tokens > REBUILD_GROWTH * trained:
            self.rebuild()

    # ----- search
    def _search(self, queries: list[np.ndarray], k: int, allowed: np.ndarray | None, **options: Any):
        settings = replace(SearchSettings.for_k(k), **options)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if self.codec is None:
            return [empty for _ in queries]
        out = []
        for query in queries:
            centroid_scores = self.codec.centroid_scores(query)
            rows, scores = [], []
            for segment in self._segments.values():
                local = None if allowed is None else allowed[segment.rows]
                docs, exact = search_segment(self.codec, segment.data, query, centroid_scores, k, settings, local)
                rows.append(segment.rows[docs])
                scores.append(exact)
            if not rows:
                out.append(empty)
                continue
            rows_all, scores_all = np.concatenate(rows), np.concatenate(scores)
            best = np.argsort(-scores_all, kind="stable")[:k]
            out.append((rows_all[best], scores_all[best]))
        return out

    def stats(self) -> dict[str, Any]:
        tokens = self.n_tokens
        vector_bytes = sum(e.size for s in self._segments.values() for e in s.files.values())
        return {**super().stats(), "tokens": tokens, "bytes_per_token": vector_bytes / max(tokens, 1),
                "codec": "scalar buckets (earlier version)" if self.legacy_codec else "rotated codebooks"}
