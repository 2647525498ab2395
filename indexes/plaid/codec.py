"""ColBERTv2's residual compression: a token embedding becomes its nearest centroid plus a residual coded in
``nbits`` per dimension, one byte per ``8 / nbits`` dimensions.

Training (once per index, on a sample of token embeddings): spherical k-means (faiss) gives the centroids; each
centroid gets a scale, the RMS of its cluster's residuals relative to all clusters' (shrunk towards 1 for small
clusters); the scaled residuals of up to ``QUANTIZER_SAMPLE`` sampled tokens give the residual quantizer
(``fit_residual_quantizer``): an orthogonal rotation and, for each byte of a token, a codebook of 256 entries of
``8 / nbits`` rotated dimensions (a product quantizer over principal axes balanced across the bytes).
A token decodes to centroid + scale * codebook entries, rotated back. The rotation and codebooks are fitted per
region: the centroids are grouped into up to ``REGIONS`` regions (``region_of_centroids``), each with its own
quantizer fitted on its own tokens' residuals, since residuals around different parts of the sphere spread along
different axes (on pycode with MiniLM at 2 bits, 8 regions cut the tokens' squared error by 19%, below what one
quantizer of the global spectrum could reach). A region needs ``REGION_SAMPLE`` sampled residuals: small
collections get fewer regions, down to one (under 40k tokens). Eight by default: on pycode and SciFact they raised
the recall of the exact top 10 by 0.004 for ~10% more search time and a third more build time (README: PLAID's
fidelity).

ColBERTv2 codes each dimension on its own, with ``2**nbits`` buckets whose cut-offs are shared by all dimensions.
A scalar quantizer per dimension is a product codebook, the special case of a byte's 256 entries laid on a grid;
k-means frees them to follow the residuals' joint shape, and the rotation turns correlated dimensions into
independent ones and spreads the variance evenly over the bytes. Each refinement costs no byte per token and was
measured on SciFact with MiniLM token vectors at 2 bits, as the recall of the exact MaxSim top-10 over the
decompressed vectors ("codec ceiling") and the squared error of the decompressed tokens:
ColBERTv2's shared buckets 0.903 (4096 centroids); per-dimension quantile buckets 0.927 (0.084); per-dimension
Lloyd-Max buckets 0.946 (0.065), 0.952 with 8192 centroids (0.051); per-centroid scales -6% error, recall
unchanged; codebooks 0.959 (0.040); codebooks over the balanced principal axes 0.971 (0.030).
Decoding is a table lookup per byte (the codebooks are that table), so decompressing a document costs one gather,
one rotation (folded into the query when scoring), one scale and one add.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np
import torch

ASSIGN_CHUNK = 1 << 16
DECODE_CHUNK = 2048  # tokens decoded at a time in search (see ResidualCodec.scores)
QUANTIZER_SAMPLE = 200_000  # scaled residuals the codebooks are fitted on (they need far fewer tokens than k-means)
PQ_BLAS_THRESHOLD = 20  # points from which faiss assigns with BLAS while the codebooks are fitted


@dataclass
class ResidualCodec:
    centroids: np.ndarray  # (n_centroids, dim) float32, unit norm
    rotation: np.ndarray  # (regions, dim, dim) float32, orthogonal: a residual r of region g is coded as r @ rotation[g].T
    codebooks: np.ndarray  # (regions, dim * nbits / 8, 256, 8 / nbits) float32: byte p of value v decodes to codebooks[g, p, v]
    nbits: int
    scales: np.ndarray | None = None  # (n_centroids,) float32: residual scale of each centroid; None: all 1
    regions: np.ndarray | None = None  # (n_centroids,) int32: the region of each centroid; None: one region

    SCALE_PRIOR = 10  # a cluster's scale is its RMS shrunk towards 1 as if it held this many more tokens at RMS 1
    REGIONS = 8  # residual quantizers per codec at most (``region_of_centroids``); 1: one rotation and codebook set
    REGION_SAMPLE = 20_000  # scaled residuals a region's quantizer needs at least; fewer sampled: fewer regions

    def __post_init__(self) -> None:
        if self.scales is None:  # indexes written before per-centroid scales
            self.scales = np.ones(len(self.centroids), dtype=np.float32)
        if self.regions is None:  # indexes written before regions: one rotation and one set of codebooks
            self.regions = np.zeros(len(self.centroids), dtype=np.int32)
        if self.rotation.ndim == 2:
            self.rotation, self.codebooks = self.rotation[None], self.codebooks[None]

    @property
    def n_regions(self) -> int:
        return len(self.rotation)

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @classmethod
    def train(cls, sample: np.ndarray, n_centroids: int, nbits: int, niters: int = 4, seed: int = 0,
              max_points_per_centroid: int = 256) -> "ResidualCodec":
        if nbits not in (1, 2, 4):
            raise ValueError(f"nbits must be 1, 2 or 4, got {nbits}")
        rng = np.random.default_rng(seed)
        sample = sample[rng.permutation(len(sample))]
        kmeans = faiss.Kmeans(sample.shape[1], n_centroids, niter=niters, seed=seed, spherical=True,
                              max_points_per_centroid=max_points_per_centroid, verbose=False)
        kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
        norms = np.maximum(np.linalg.norm(kmeans.centroids, axis=1, keepdims=True), 1e-12)
        centroids = (kmeans.centroids / norms).astype(np.float32)
        codes = assign(centroids, sample)
        scales = cluster_scales(sample, centroids, codes, cls.SCALE_PRIOR)
        fit = slice(0, QUANTIZER_SAMPLE)
        residuals = (sample[fit] - centroids[codes[fit]]) / scales[codes[fit], None]
        n_regions = max(1, min(cls.REGIONS, len(residuals) // cls.REGION_SAMPLE, n_centroids))
        regions = region_of_centroids(centroids, n_regions, seed)
        token_regions = regions[codes[fit]]
        fitted = [fit_residual_quantizer(residuals[token_regions == g] if (token_regions == g).any() else residuals,
                                         nbits, seed) for g in range(n_regions)]
        return cls(centroids, np.stack([r for r, _ in fitted]), np.stack([c for _, c in fitted]), nbits, scales,
                   regions)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        return assign(self.centroids, vectors)

    def compress(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes (n,), packed residuals (n, dim * nbits / 8) uint8: one codebook entry per byte)."""
        codes = self.assign(vectors)
        packed = np.empty((len(vectors), self.dim * self.nbits // 8), dtype=np.uint8)
        for start in range(0, len(vectors), ASSIGN_CHUNK):
            stop = start + ASSIGN_CHUNK
            chunk = codes[start:stop]
            residual = (vectors[start:stop] - self.centroids[chunk]) / self.scales[chunk, None]
            for region, rows in self._by_region(chunk):
                packed[start + rows] = self._product_quantizers[region].compute_codes(
                    np.ascontiguousarray(residual[rows] @ self.rotation[region].T, dtype=np.float32))
        return codes, packed

    def _by_region(self, codes: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(region, positions in ``codes`` of its tokens) for each region present."""
        if self.n_regions == 1:
            return [(0, np.arange(len(codes)))]
        regions = self.regions[codes]
        return [(int(g), np.flatnonzero(regions == g)) for g in np.unique(regions)]

    @cached_property
    def _product_quantizers(self) -> list[faiss.ProductQuantizer]:
        """faiss's encoder (nearest entry of each byte's codebook) over each region's codebooks."""
        quantizers = []
        for codebooks in self.codebooks:
            quantizer = faiss.ProductQuantizer(self.dim, len(codebooks), 8)
            faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(), quantizer.centroids)
            quantizers.append(quantizer)
        return quantizers

    def residuals(self, codes: np.ndarray, packed: np.ndarray) -> np.ndarray:
        """(n, dim) decoded residuals of packed rows (n, bytes per token) of tokens with centroids ``codes``, before
        their centroid's scale."""
        out = np.empty((len(packed), self.dim), dtype=np.float32)
        positions = np.arange(packed.shape[1])
        for region, rows in self._by_region(codes):
            rotated = self.codebooks[region][positions, packed[rows]].reshape(len(rows), self.dim)
            out[rows] = rotated @ self.rotation[region]
        return out

    def decompress(self, codes: np.ndarray, packed: np.ndarray) -> np.ndarray:
        """Unit-norm float32 vectors (n, dim)."""
        vectors = self.centroids[codes] + self.scales[codes, None] * self.residuals(codes, packed)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def inverse_norms(self, codes: np.ndarray, packed: np.ndarray) -> np.ndarray:
        """1 / ||centroid + residual|| per token (float32), stored beside the codes so that search can score
        decompressed tokens without gathering centroids or normalizing (see ``scores``)."""
        out = np.empty(len(codes), dtype=np.float32)
        for start in range(0, len(codes), ASSIGN_CHUNK):
            stop = start + ASSIGN_CHUNK
            chunk = codes[start:stop]
            vectors = self.centroids[chunk] + self.scales[chunk, None] * self.residuals(chunk, packed[start:stop])
            out[start:stop] = 1 / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
        return out

    def centroid_scores(self, query: np.ndarray) -> np.ndarray:
        """query (n_q, dim) @ centroids.T. Search does its matrix products in torch only: mixing numpy's BLAS
        thread pool with torch's makes both spin against each other on a small CPU (2x slower on 2 cores)."""
        return (torch.from_numpy(query) @ self._torch_centroids.T).numpy()

    @cached_property
    def _torch_centroids(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.centroids))

    @cached_property
    def _torch_rotation(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.rotation, dtype=np.float32))  # (regions, dim, dim)

    @cached_property
    def _torch_table(self) -> torch.Tensor:
        """The codebooks flattened to (regions * bytes * 256, 8 / nbits): row (g * bytes + p) * 256 + v."""
        return torch.from_numpy(np.ascontiguousarray(self.codebooks.reshape(-1, 8 // self.nbits), dtype=np.float32))

    @cached_property
    def _position_offsets(self) -> torch.Tensor:
        return torch.arange(self.dim * self.nbits // 8, dtype=torch.int32) * 256

    @cached_property
    def _region_offsets(self) -> np.ndarray:
        """(n_centroids,) int32: the first table row of each centroid's region."""
        return (self.regions * (self.dim * self.nbits // 8 * 256)).astype(np.int32)

    def scores(self, query: np.ndarray, centroid_scores: np.ndarray, codes: np.ndarray, packed: np.ndarray,
               inverse_norms: np.ndarray) -> np.ndarray:
        """query (n_q, dim) against decompressed tokens: (n_q, n) cosines, as query @ decompress(...).T, but as
        (query . centroid + scale * (rotation @ query) . coded residual) / norm, where query . centroid is already in
        ``centroid_scores``: the query is rotated once per region instead of every token. Only the residuals are
        decoded (one table lookup per byte, in torch: multithreaded), ``DECODE_CHUNK`` tokens at a time: each chunk's
        decoded residuals stay in cache for the product, which makes decoding 128 documents 3x faster than decoding
        them at once, and bounds the memory it takes. With regions, the tokens are taken region by region (sorted
        once, their scores put back in order once): each chunk reads one region's table, which stays in cache (all
        regions' tables together do not), and is one product with one rotated query."""
        query_t = torch.from_numpy(query) @ self._torch_rotation.transpose(1, 2)  # (regions, n_q, dim)
        order = np.argsort(self.regions[codes], kind="stable") if self.n_regions > 1 else None
        by_region_codes = codes if order is None else codes[order]
        by_region_packed = np.asarray(packed) if order is None else np.asarray(packed)[order]
        token_regions = self.regions[by_region_codes]
        cuts = np.union1d(np.arange(0, len(codes), DECODE_CHUNK), np.flatnonzero(np.diff(token_regions)) + 1)
        packed_t = torch.from_numpy(by_region_packed)
        offsets = torch.from_numpy(self._region_offsets[by_region_codes])
        products = torch.empty((len(query), len(codes)), dtype=torch.float32)
        for start, stop in zip(cuts.tolist(), [*cuts[1:].tolist(), len(codes)]):
            rows = (packed_t[start:stop].int() + self._position_offsets + offsets[start:stop, None]).reshape(-1)
            residuals = torch.index_select(self._torch_table, 0, rows).reshape(-1, self.dim)
            products[:, start:stop] = query_t[token_regions[start]] @ residuals.T
        if order is not None:
            in_order = torch.empty_like(products)
            in_order[:, torch.from_numpy(order)] = products
            products = in_order
        codes = codes.astype(np.int64)
        products *= torch.from_numpy(self.scales[codes])
        products += torch.from_numpy(centroid_scores[:, codes])
        products *= torch.from_numpy(inverse_norms)
        return products.numpy()


def assign(centroids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Nearest centroid (largest inner product) of each vector, by faiss, in chunks to bound memory."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    codes = np.empty(len(vectors), dtype=np.uint16 if len(centroids) <= 1 << 16 else np.int32)
    for start in range(0, len(vectors), ASSIGN_CHUNK):
        chunk = np.ascontiguousarray(vectors[start:start + ASSIGN_CHUNK], dtype=np.float32)
        codes[start:start + len(chunk)] = index.search(chunk, 1)[1][:, 0]
    return codes


def region_of_centroids(centroids: np.ndarray, n_regions: int, seed: int = 0) -> np.ndarray:
    """(n_centroids,) int32: the centroids grouped into ``n_regions`` by spherical k-means (faiss) over the centroids
    themselves. Each region gets its own rotation and codebooks: residuals around different parts of the sphere have
    different principal axes, which one global rotation averages away (locally optimized product quantization,
    Kalantidis and Avrithis 2014)."""
    if n_regions <= 1:
        return np.zeros(len(centroids), dtype=np.int32)
    kmeans = faiss.Kmeans(centroids.shape[1], n_regions, niter=20, seed=seed, spherical=True, verbose=False)
    kmeans.cp.min_points_per_centroid = 1
    kmeans.train(np.ascontiguousarray(centroids, dtype=np.float32))
    return assign(kmeans.centroids, centroids).astype(np.int32)


def fit_residual_quantizer(residuals: np.ndarray, nbits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The rotation (dim, dim) and codebooks (dim * nbits / 8, 256, 8 / nbits) for ``residuals`` (n, dim) at
    ``nbits`` per dimension. The rotation is faiss's PCA with balanced bins: principal axes, dealt to the bytes so
    that each byte's sub-vector carries about the same variance (the closed form of optimized product quantization,
    Ge et al. 2013); then a product quantizer with one byte per sub-vector (faiss) is fitted on the rotated
    residuals. A sample with no more tokens than dimensions cannot estimate the axes: it keeps the identity.
    Fewer than 256 residuals (a tiny first batch) are resampled with replacement: codebooks then repeat entries.

    On correlated Gaussians (tests) the rotation halves the error of codebooks without it. On SciFact with MiniLM
    token vectors (2 bits, 8192 centroids) it cut their squared error from 0.040 to 0.030 and raised the codec's
    recall of the exact top-10 from 0.959 to 0.971; faiss's iterative OPQ (from a random rotation, 20 rounds) reached
    only 0.041 and took a minute more to train."""
    residuals = np.ascontiguousarray(residuals, dtype=np.float32)
    n, dim = residuals.shape
    n_bytes = dim * nbits // 8
    rotation = np.eye(dim, dtype=np.float32)
    if n > dim:
        pca = faiss.PCAMatrix(dim, dim, 0, False)
        pca.balanced_bins = n_bytes
        pca.train(residuals)
        rotation = faiss.vector_to_array(pca.A).reshape(dim, dim).astype(np.float32)
    if n < 256:
        residuals = residuals[np.random.default_rng(seed).choice(n, 256)]
    quantizer = faiss.ProductQuantizer(dim, n_bytes, 8)
    quantizer.cp.seed = seed
    quantizer.cp.min_points_per_centroid = 1  # small samples are expected (tests, tiny corpora): no warning
    # faiss (1.15) assigns fewer than `distance_compute_blas_threshold` (128,000) points without BLAS, a path that
    # is ~5x slower for these few-dimensional k-means of 256 entries: BLAS from 20 points on (faiss's old default)
    blas_threshold = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = min(blas_threshold, PQ_BLAS_THRESHOLD)
    try:
        quantizer.train(np.ascontiguousarray(residuals @ rotation.T))
    finally:
        faiss.cvar.distance_compute_blas_threshold = blas_threshold
    codebooks = faiss.vector_to_array(quantizer.centroids).reshape(n_bytes, 256, 8 // nbits)
    return rotation, codebooks.astype(np.float32)


def scalar_codebooks(weights: np.ndarray, nbits: int, dim: int) -> np.ndarray:
    """Codebooks equivalent to per-dimension scalar buckets (indexes written before codebooks stored ``weights``
    (dim, 2**nbits), or one shared (2**nbits,), with ``nbits``-bit bucket numbers packed most significant first):
    byte value v at byte p decodes dimension p * 8/nbits + j to weights[that dimension, bucket j of v]."""
    per_byte = 8 // nbits
    values = np.arange(256, dtype=np.uint16)
    shifts = nbits * np.arange(per_byte - 1, -1, -1)
    buckets = (values[:, None] >> shifts) & (2**nbits - 1)  # (256, per_byte)
    weights = np.broadcast_to(np.asarray(weights, dtype=np.float32), (dim, 2**nbits))
    by_position = weights.reshape(-1, per_byte, 2**nbits)  # (bytes, per_byte, buckets)
    return np.take_along_axis(by_position[:, None], buckets[None, :, :, None], axis=3)[..., 0]


def cluster_scales(vectors: np.ndarray, centroids: np.ndarray, codes: np.ndarray, prior: float) -> np.ndarray:
    """(n_centroids,) float32: each cluster's RMS residual norm over all clusters', shrunk towards 1 by ``prior``
    pseudo-tokens (a cluster seen a few times in the sample keeps a scale near 1). In chunks: the residuals of a
    whole sample would double its memory."""
    n_centroids = len(centroids)
    squared = np.zeros(n_centroids)
    for start in range(0, len(vectors), ASSIGN_CHUNK):
        chunk = codes[start:start + ASSIGN_CHUNK]
        residuals = vectors[start:start + ASSIGN_CHUNK] - centroids[chunk]
        squared += np.bincount(chunk, weights=np.einsum("nd,nd->n", residuals, residuals), minlength=n_centroids)
    counts = np.bincount(codes, minlength=n_centroids)
    overall = max(float(squared.sum() / max(counts.sum(), 1)), 1e-12)
    return np.sqrt((squared / overall + prior) / (counts + prior)).astype(np.float32)
