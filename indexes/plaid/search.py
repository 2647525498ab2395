"""PLAID search, in its four stages, over one segment of documents (Santhanam et al., 2022, "PLAID"):

1. candidates: the documents holding any of the ``n_ivf_probe`` nearest centroids of each query token;
2. centroid pruning: candidates scored from centroids alone, each query token taking its best centroid among the
   document's centroids that score at least ``centroid_score_threshold`` against some query token; the best
   ``n_candidates`` go on;
3. full centroid interaction: the same, now over every token of those documents; the best ``n_full_scores`` go on;
4. decompression and exact MaxSim on those; the best ``k`` are returned.

Stages 1-3 never touch residuals; stage 2 never touches per-token codes either: it reads the inverted file
(centroid -> documents), whose lists already say which documents contain which centroids.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field, replace

import numpy as np

from .codec import ResidualCodec

REFERENCE_DOCS = 4096  # documents in a segment at which the stage counts below were measured (pycode: 4,146)


@dataclass(frozen=True)
class SearchSettings:
    n_ivf_probe: int
    centroid_score_threshold: float
    n_candidates: int
    n_full_scores: int

    @classmethod
    def for_k(cls, k: int, n_docs: int = 0) -> "SearchSettings":
        """ColBERT's defaults by k (ncells, centroid_score_threshold, ndocs), with stage 3 keeping ndocs / 4, except
        for k <= 10: stage 2 keeps 512 and stage 3 192, measured by bench/plaid_fidelity.py (README: PLAID's
        fidelity), where ColBERT's 256 / 64 (and our earlier 256 / 128) dropped documents of the exact top 10 that
        the codec would have ranked there.

        Stages 2 and 3 of the first two tiers keep more documents in a larger segment (``n_docs``), in proportion
        to the square root of its size over ``REFERENCE_DOCS`` (the size they were measured at), up to the widest
        tier's counts: the candidates grow with the corpus, and counts fixed at the reference size dropped more of
        the exact top 10 in a larger one (README: PLAID's fidelity). The square root keeps the search's cost
        sub-linear in the corpus."""
        widest = cls(8, 0.35, max(4 * k, 4096), max(k, 1024))
        if k > 100:
            return widest
        base = cls(2, 0.45, 512, 192) if k <= 10 else cls(4, 0.4, 1024, 256)
        scale = max(1.0, (n_docs / REFERENCE_DOCS) ** 0.5)
        return replace(base, n_candidates=min(round(base.n_candidates * scale), widest.n_candidates),
                       n_full_scores=min(round(base.n_full_scores * scale), widest.n_full_scores))


@dataclass
class SegmentArrays:
    """One segment, as read (memory-mapped) from disk."""

    codes: np.ndarray  # (n_tokens,) centroid id of each token
    residuals: np.ndarray  # (n_tokens, dim * nbits / 8) uint8
    inverse_norms: np.ndarray  # (n_tokens,) float32: 1 / ||decompressed token|| before normalization
    doc_offsets: np.ndarray  # (n_docs + 1,) int64: document i is tokens doc_offsets[i]:doc_offsets[i+1]
    ivf_offsets: np.ndarray  # (n_centroids + 1,) int64
    ivf_docs: np.ndarray  # (n_postings,) int32: documents holding centroid c are ivf_docs[ivf_offsets[c]:...[c+1]]
    # the residuals' file, opened with their map (files.open_array_with_fd), owned by this object from now on:
    # None for in-memory residuals
    fd: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Keep the residuals' descriptor open while the segment is in use: a search that runs on an older snapshot
        while a writer collects that snapshot's files must still read them (the memory maps keep their files too).
        It is opened with the map, never later by name: the file may be collected in between. Closed when the
        segment is garbage-collected."""
        if self.fd is not None:
            weakref.finalize(self, os.close, self.fd)

    def residuals_of(self, docs: np.ndarray) -> np.ndarray:
        """Packed residuals of the tokens of ``docs``, in order, read with one ``pread`` per document rather than
        through the memory map: the kernel maps a file's page cache in large folios, so touching 128 documents (3 MB)
        through the map made the search process resident in some 60 MB more of the file, and over many queries in
        most of it. Read this way, only what is read is in the process; the rest stays in the page cache."""
        starts, stops = self.doc_offsets[docs], self.doc_offsets[docs + 1]
        if self.fd is None:  # an in-memory array
            return self.residuals[_token_ranges(self.doc_offsets, docs)[0]]
        width = self.residuals.shape[1]
        out = np.empty((int((stops - starts).sum()), width), dtype=np.uint8)
        view, row = memoryview(out).cast("B"), 0
        for start, stop in zip(starts.tolist(), stops.tolist()):
            size = (stop - start) * width
            if os.preadv(self.fd, [view[row:row + size]], self.residuals.offset + start * width) != size:
                raise OSError(f"short read of the residuals (descriptor {self.fd})")  # pread: no shared offset
            row += size
        return out


def inverted_file(codes: np.ndarray, doc_offsets: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroid -> sorted unique documents, as CSR arrays (offsets, docs)."""
    n_docs = len(doc_offsets) - 1
    docs = np.repeat(np.arange(n_docs, dtype=np.int64), np.diff(doc_offsets))
    keys = np.unique(codes.astype(np.int64) * n_docs + docs)
    offsets = np.zeros(n_centroids + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // n_docs, minlength=n_centroids), out=offsets[1:])
    return offsets, (keys % n_docs).astype(np.int32)


def _postings(segment: SegmentArrays, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(document, centroid) pairs of the inverted lists of ``centroids``."""
    starts, stops = segment.ivf_offsets[centroids], segment.ivf_offsets[centroids + 1]
    lengths = stops - starts
    index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    return segment.ivf_docs[index], np.repeat(centroids, lengths)


def _token_ranges(offsets: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token positions of ``docs`` concatenated, and where each document starts in that list."""
    starts, lengths = offsets[docs], offsets[docs + 1] - offsets[docs]
    bounds = np.zeros(len(docs), dtype=np.int64)
    np.cumsum(lengths[:-1], out=bounds[1:])
    return np.repeat(starts - bounds, lengths) + np.arange(lengths.sum()), bounds


def _maxsim_by_document(scores: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """scores (n_query_tokens, n_tokens of several documents) -> per document sum over query tokens of the max."""
    return np.maximum.reduceat(scores, bounds, axis=1).sum(axis=0)


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    if len(scores) <= n:
        return np.argsort(-scores, kind="stable")
    top = np.argpartition(-scores, n - 1)[:n]
    return top[np.argsort(-scores[top], kind="stable")]


def search_segment(codec: ResidualCodec, segment: SegmentArrays, query: np.ndarray, centroid_scores: np.ndarray,
                   k: int, settings: SearchSettings, allowed: np.ndarray | None,
                   trace: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(local document indices, MaxSim scores) of the best ``k`` documents of one segment, best first.
    ``centroid_scores``: query (n_q, dim) @ centroids.T, shared by all segments. ``allowed``: mask over local docs.
    ``trace``: receives the documents that reach each stage (bench/plaid_fidelity.py measures each stage's loss)."""
    n_docs = len(segment.doc_offsets) - 1
    # 1. candidates
    probe = np.unique(np.argpartition(-centroid_scores, min(settings.n_ivf_probe, centroid_scores.shape[1]) - 1,
                                      axis=1)[:, : settings.n_ivf_probe])
    candidates = np.zeros(n_docs, dtype=bool)
    candidates[_postings(segment, probe)[0]] = True
    if allowed is not None:
        candidates &= allowed
    if not candidates.any():
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    # 2. centroid pruning: score candidates from their kept centroids, read off the inverted file
    kept = np.flatnonzero(centroid_scores.max(axis=0) >= settings.centroid_score_threshold)
    kept = np.union1d(kept, probe)
    docs, cents = _postings(segment, kept)
    on = candidates[docs]
    docs, cents = docs[on], cents[on]
    order = np.argsort(docs, kind="stable")
    docs, cents = docs[order], cents[order]
    unique_docs, bounds = np.unique(docs, return_index=True)
    approx = _maxsim_by_document(centroid_scores[:, cents], bounds)
    stage2 = unique_docs[_top(approx, settings.n_candidates)]
    # 3. full centroid interaction over every token of the survivors
    tokens, bounds = _token_ranges(segment.doc_offsets, stage2)
    approx = _maxsim_by_document(centroid_scores[:, segment.codes[tokens]], bounds)
    stage3 = np.sort(stage2[_top(approx, settings.n_full_scores)])
    if trace is not None:
        trace.update(candidates=np.flatnonzero(candidates), stage2=stage2, stage3=stage3)
    # 4. decompression and exact MaxSim
    tokens, bounds = _token_ranges(segment.doc_offsets, stage3)
    scores = codec.scores(query, centroid_scores, segment.codes[tokens], segment.residuals_of(stage3),
                          segment.inverse_norms[tokens])
    exact = _maxsim_by_document(scores, bounds)
    best = _top(exact, k)
    return stage3[best].astype(np.int64), exact[best].astype(np.float32)
