"""PlaidIndex: multi-vector (ColBERT) search with residual compression, our own PLAID.

Build: the first add (or the first ``sample_tokens`` of a stream) trains the codec: spherical k-means centroids,
their count growing like the square root of the token count, and residual codebooks (codec.py). Every document is
stored as centroid codes + packed residuals, with an inverted file from centroid to documents (one per segment).
Later adds reuse the codec; when the index has grown far past what the codec was trained on it is re-clustered
(``rebuild``). Search runs the four PLAID stages of search.py over each segment and merges the results.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import files
from ..base import VectorIndex, check_finite
from ..state import Batch, ExpectedTokens, Pending, Segment, Snapshot
from ..errors import IndexCorruptError, IndexInputError
from ..files import FileEntry
from ..store import Document
from .codec import ResidualCodec, scalar_codebooks
from .search import SearchSettings, SegmentArrays, inverted_file, search_segment

CODEC_ARRAYS = ("centroids", "rotation", "codebooks", "scales", "regions")
SEGMENT_ARRAYS = ("codes", "residuals", "inverse_norms", "doc_offsets", "ivf_offsets", "ivf_docs")
REBUILD_GROWTH = 8  # re-cluster when the index holds this many times the tokens it held when the codec was trained


class PlaidIndex(VectorIndex):
    kind = "plaid"

    @classmethod
    def create(cls, path: str | Path, dim: int, nbits: int = 2, n_centroids: int | None = None,
               centroid_factor: float = 8.0, kmeans_niters: int = 4, sample_tokens: int = 1 << 19, seed: int = 0,
               lock_timeout: float = 60.0, codec: ResidualCodec | None = None,
               codec_tokens: int = 0) -> "PlaidIndex":
        """``n_centroids`` defaults to the power of two at or below centroid_factor * sqrt(tokens at training);
        the codec is trained on up to ``sample_tokens`` token embeddings. On full SciFact (1.24M MiniLM tokens) the
        defaults give 8192 centroids from 524k tokens: the recall of the exact top-10 over the decompressed vectors
        went from 0.946 (4096 centroids, 262k tokens) to 0.952; ColBERT's 16384 gave no more (0.951) for twice the
        build time.

        ``codec``: a codec trained elsewhere (``train_codec``), committed with the empty index instead of one
        trained on its first add: the shards of a sharded index share one, so that their scores compare.
        ``codec_tokens``: the tokens it was sized for (the whole collection's; the index re-clusters past
        REBUILD_GROWTH times that)."""
        if nbits not in (1, 2, 4):
            raise IndexInputError(f"nbits must be 1, 2 or 4, got {nbits!r}")
        if not isinstance(dim, int) or dim < 1 or dim * nbits % 8:
            raise IndexInputError(f"dim must be a positive integer with dim * nbits a multiple of 8, got {dim!r}")
        if codec is not None and (codec.nbits != nbits or codec.dim != dim):
            raise IndexInputError(f"the codec is for dim {codec.dim} at {codec.nbits} bits, not dim {dim} at {nbits}")
        settings = {"dim": dim, "nbits": nbits, "n_centroids": n_centroids, "centroid_factor": centroid_factor,
                    "kmeans_niters": kmeans_niters, "sample_tokens": sample_tokens, "seed": seed, "trained_tokens": 0}
        index = cls._create(path, settings, lock_timeout)
        if codec is not None:
            with index._transaction() as pending:
                index._stage_codec(pending, codec, {**settings, "n_centroids_trained": len(codec.centroids),
                                                    "trained_tokens": codec_tokens})
        return index

    @staticmethod
    def train_codec(vectors: np.ndarray, total_tokens: int | None = None, nbits: int = 2,
                    n_centroids: int | None = None, centroid_factor: float = 8.0, kmeans_niters: int = 4,
                    sample_tokens: int = 1 << 19, seed: int = 0) -> ResidualCodec:
        """The codec an index with these settings trains on its first add of ``vectors`` (unit-norm token
        embeddings, or a sample of them), sized for ``total_tokens`` (default: all of ``vectors``)."""
        rng = np.random.default_rng(seed)
        total_tokens = total_tokens or len(vectors)
        n_centroids = n_centroids or 2 ** int(math.log2(max(2.0, centroid_factor * math.sqrt(total_tokens))))
        if len(vectors) > sample_tokens:
            vectors = vectors[np.sort(rng.choice(len(vectors), sample_tokens, replace=False))]
        n_centroids = max(1, min(n_centroids, len(vectors)))
        return ResidualCodec.train(vectors, n_centroids, nbits, kmeans_niters, seed)

    @classmethod
    def build(cls, path: str | Path, batches: Iterable[Batch | tuple[Sequence[str], Sequence[np.ndarray]]], dim: int,
              expected_tokens: ExpectedTokens = None, **settings: Any) -> "PlaidIndex":
        """Create an index from a stream of batches (``add_stream``), in one commit, holding only a batch (and the
        training sample) in RAM at fp32: a corpus larger than memory can be indexed."""
        index = cls.create(path, dim, **settings)
        index.add_stream(batches, expected_tokens)
        return index

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
    def _open_shared(self, shared: dict[str, FileEntry], settings: dict[str, Any]) -> CodecState:
        if not shared:
            return CodecState(None)
        arrays = {k: np.asarray(files.open_array(self.files_dir, entry, mmap=False)) for k, entry in shared.items()}
        dim, nbits = settings["dim"], settings["nbits"]
        legacy = "codebooks" not in arrays
        if legacy:  # written before codebooks: per-dimension buckets, no rotation
            arrays["codebooks"] = scalar_codebooks(arrays["weights"], nbits, dim)
            arrays["rotation"] = np.eye(dim, dtype=np.float32)
        return CodecState(ResidualCodec(arrays["centroids"], arrays["rotation"], arrays["codebooks"], nbits,
                                        arrays.get("scales"), arrays.get("regions")), legacy)  # older: none of these

    @property
    def codec(self) -> ResidualCodec | None:
        """The committed codec (None before the first add)."""
        return self._snapshot().shared.codec

    @property
    def legacy_codec(self) -> bool:
        """True: written by an earlier version, with scalar buckets (``rebuild()`` renews it)."""
        return self._snapshot().shared.legacy

    def _train(self, pending: Pending, vectors: np.ndarray, total_tokens: int | None = None) -> ResidualCodec:
        """Train a codec on (a sample of) ``vectors`` and stage it in ``pending``. The centroid count follows the
        tokens the index will hold (``total_tokens``, default: all of ``vectors``), not the sample size."""
        settings = dict(pending.current_settings)
        total_tokens = total_tokens or len(vectors)
        codec = self.train_codec(vectors, total_tokens, settings["nbits"], settings["n_centroids"],
                                 settings["centroid_factor"], settings["kmeans_niters"], settings["sample_tokens"],
                                 settings["seed"])
        self._stage_codec(pending, codec, {**settings, "n_centroids_trained": len(codec.centroids),
                                           "sample_size": min(len(vectors), settings["sample_tokens"]),
                                           "trained_tokens": total_tokens})
        return codec

    def _stage_codec(self, pending: Pending, codec: ResidualCodec, settings: dict[str, Any]) -> None:
        """Write ``codec``'s arrays and stage them, with ``settings``, as the codec of the next commit."""
        prefix = f"g{pending.base.generation + 1:06d}-codec"
        pending.shared = {name: files.write_array(self.files_dir, f"{prefix}-{name}.npy", getattr(codec, name))
                          for name in CODEC_ARRAYS}
        pending.shared_data = CodecState(codec)
        pending.settings = settings

    @staticmethod
    def _codec(pending: Pending) -> ResidualCodec | None:
        """The codec the changes of ``pending`` are encoded with: one it trained, or the committed one."""
        return pending.current_shared.codec

    # ----- streams: hold batches until the codec can train on a real sample
    def _tokens(self, vectors: list[np.ndarray]) -> int:
        return sum(len(a) for a in vectors)

    def _sample_tokens_needed(self, pending: Pending | None) -> int:
        if pending is not None:
            return 0 if self._codec(pending) is not None else pending.current_settings["sample_tokens"]
        snapshot = self._snapshot()
        return 0 if snapshot.shared.codec is not None else snapshot.settings["sample_tokens"]

    def _prepare_stream(self, pending: Pending, batches: list[Batch], expected_tokens: ExpectedTokens) -> None:
        """Without a codec: train one on every token of ``batches`` (the held sample), sized for
        ``expected_tokens`` (evaluated now when it is a function)."""
        if self._codec(pending) is not None:
            return
        arrays = [array for batch in batches if batch.ids for array in batch.embeddings]
        if arrays:
            self._train(pending, np.concatenate(arrays),
                        total_tokens=expected_tokens() if callable(expected_tokens) else expected_tokens)

    def _after_stream(self) -> None:
        self._rebuild_if_outgrown()

    # ----- segments
    def _write_segment(self, pending: Pending, prefix: str, vectors: list[np.ndarray],
                       expected_tokens: int | None = None) -> dict[str, FileEntry]:
        """Encode ``vectors`` with the codec (trained here on them if there is none, sized for ``expected_tokens``)."""
        tokens = np.concatenate(vectors)
        codec = self._codec(pending) or self._train(pending, tokens, expected_tokens)
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

    def _write_merged(self, pending: Pending, prefix: str,
                      live: list[tuple[Segment, np.ndarray]]) -> dict[str, FileEntry]:
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
        codec = pending.base.shared.codec
        assert codec is not None
        return self._write_arrays(prefix, codec, np.concatenate(codes), np.concatenate(residuals), offsets)

    def _open_segment(self, segment: Segment, shared: CodecState, settings: dict[str, Any]) -> SegmentArrays:
        """The arrays, memory-mapped, after the checks that keep a damaged file from failing deep inside a search:
        shapes, offsets that are monotonic and end where the data ends, ids in range. Codes and the inverted file
        are read for this (a few bytes per token); residuals, the bulk, are not."""
        # the residuals' map and stage 4's descriptor come from one open (a collection in between cannot split them)
        residuals, fd = files.open_array_with_fd(self.files_dir, segment.files["residuals"])
        try:
            data = SegmentArrays(**{name: residuals if name == "residuals" else files.open_array(
                self.files_dir, segment.files[name]) for name in SEGMENT_ARRAYS}, fd=fd)
        except BaseException:
            os.close(fd)  # not yet owned by a SegmentArrays
            raise
        n_docs, n_tokens = len(segment.rows), len(data.codes)
        codec = shared.codec
        n_centroids = len(codec.centroids) if codec is not None else 0
        problems = [
            data.codes.ndim != 1 or (n_tokens and int(data.codes.max()) >= n_centroids),
            data.residuals.shape != (n_tokens, settings["dim"] * settings["nbits"] // 8),
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
        """Tokens stored (those of removed documents included, until compact)."""
        return _n_tokens(self._snapshot())

    def token_scores(self, query: np.ndarray, doc_ids: Sequence[str]) -> list[np.ndarray | None]:
        """For each document id, the cosines of ``query``'s tokens with the document's stored token vectors
        (queries x tokens), decoded from its codes and residuals as the search's last stage scores them; None for a
        document not in the last commit. What a hit's token alignment is read from (a span, not a ranking)."""
        snapshot = self._view(None)[0]
        codec = snapshot.shared.codec
        out: list[np.ndarray | None] = [None] * len(doc_ids)
        if codec is None:
            return out
        query = np.ascontiguousarray(query, dtype=np.float32)
        centroid_scores = codec.centroid_scores(query)
        for i, doc_id in enumerate(doc_ids):
            row = snapshot.row_of.get(doc_id)
            for segment in snapshot.segments.values() if row is not None else ():
                local = np.flatnonzero(segment.rows == row)
                if len(local):
                    data, d = segment.data, int(local[0])
                    a, b = int(data.doc_offsets[d]), int(data.doc_offsets[d + 1])
                    out[i] = codec.scores(query, centroid_scores, np.array(data.codes[a:b]),
                                          data.residuals_of(local[:1]), np.array(data.inverse_norms[a:b]))
                    break
        return out

    # ----- growth
    def rebuild(self) -> None:
        """Re-cluster: train a new codec on a sample of the (decompressed) live tokens, re-encode every document
        into one segment. Done by itself when the index outgrows its codec; lossy only by one more quantization."""
        with self._transaction() as pending:
            if pending.segments or pending.shared is not None:
                raise IndexInputError("rebuild() re-encodes the committed documents: call it outside a transaction "
                                      "that adds documents or trains a codec")
            base = pending.base
            old_codec, live = base.shared.codec, [(s, base.alive[s.rows]) for s in base.segments.values()]
            if old_codec is None or not any(keep.any() for _, keep in live):
                return  # no committed document to re-encode: nothing to commit
            sample = self._sample_tokens(base, old_codec, live)
            codec = self._train(pending, sample, total_tokens=_n_tokens(base))
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
            self._replace(pending, [s for s, _ in live], np.concatenate(rows), lambda prefix: self._write_arrays(
                prefix, codec, np.concatenate(codes), np.concatenate(residuals), offsets))

    def _sample_tokens(self, snapshot: Snapshot, codec: ResidualCodec,
                       live: list[tuple[Segment, np.ndarray]]) -> np.ndarray:
        rng = np.random.default_rng(snapshot.settings["seed"])
        total = sum(len(s.data.codes) for s, _ in live)
        take = min(1.0, snapshot.settings["sample_tokens"] / max(total, 1))
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
        ids, vectors, docs = self._checked(doc_ids, embeddings, documents)
        if not ids:
            return  # nothing to commit
        outermost = self._current() is None
        with self._transaction() as pending:
            self._add_new(pending, ids, vectors, docs, expected_tokens=expected_tokens)
        if outermost:
            self._rebuild_if_outgrown()

    def _rebuild_if_outgrown(self) -> None:
        snapshot = self._view(None)[0]
        trained = snapshot.settings["trained_tokens"]
        if trained and _n_tokens(snapshot) > REBUILD_GROWTH * trained:
            with self._follow_up("the automatic re-clustering (the index outgrew its codec)"):  # logged, not raised
                self.rebuild()

    # ----- search
    def _search(self, snapshot: Snapshot, queries: list[np.ndarray], k: int, allowed: np.ndarray | None,
                **options: Any):
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        codec = snapshot.shared.codec
        if codec is None:
            return [empty for _ in queries]
        out = []
        for query in queries:
            centroid_scores = codec.centroid_scores(query)
            rows, scores = [], []
            for segment in snapshot.segments.values():
                local = None if allowed is None else allowed[segment.rows]
                settings = replace(SearchSettings.for_k(k, len(segment.rows)), **options)
                docs, exact = search_segment(codec, segment.data, query, centroid_scores, k, settings, local)
                rows.append(segment.rows[docs])
                scores.append(exact)
            if not rows:
                out.append(empty)
                continue
            rows_all, scores_all = np.concatenate(rows), np.concatenate(scores)
            best = np.argsort(-scores_all, kind="stable")[:k]
            out.append((rows_all[best], scores_all[best]))
        return out

    def _stats(self, snapshot: Snapshot) -> dict[str, Any]:
        tokens = _n_tokens(snapshot)
        vector_bytes = sum(e.size for s in snapshot.segments.values() for e in s.files.values())
        codec = snapshot.shared.codec
        described = ("none yet" if codec is None else "scalar buckets (earlier version)" if snapshot.shared.legacy
                     else f"rotated codebooks in {codec.n_regions} region(s)")
        return {**super()._stats(snapshot), "tokens": tokens, "bytes_per_token": vector_bytes / max(tokens, 1),
                "codec": described}


@dataclass(frozen=True)
class CodecState:
    """What a PLAID snapshot shares across its segments: the codec (None before the first add) and whether it was
    written by an earlier version (scalar buckets)."""

    codec: ResidualCodec | None
    legacy: bool = False


def _n_tokens(snapshot: Snapshot) -> int:
    return int(sum(len(s.data.codes) for s in snapshot.segments.values()))
