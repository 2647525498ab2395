"""PlaidIndex on synthetic token embeddings: the codec, the staged search against exhaustive MaxSim over the same
decompressed vectors, incremental changes, streaming build, re-clustering, bad input.
(Quality against exact search on real embeddings: tests/indexes/test_index_quality.py.)"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from indexes import IndexInputError, PlaidIndex
from indexes.plaid.codec import ResidualCodec, fit_residual_quantizer, scalar_codebooks
from indexes.plaid.search import inverted_file
from support import assert_same_ranking

DIM = 32


def corpus(seed: int, n_docs: int, topics: int = 40) -> list[np.ndarray]:
    """Documents whose tokens cluster around a few topic vectors each: structure like real token embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, DIM)).astype(np.float32)
    docs = []
    for _ in range(n_docs):
        mine = rng.choice(topics, 3, replace=False)
        n = int(rng.integers(4, 40))
        x = centers[rng.choice(mine, n)] + 0.4 * rng.standard_normal((n, DIM)).astype(np.float32)
        docs.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return docs


def queries_from(docs: list[np.ndarray], seed: int, n: int = 20) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(docs), n, replace=False):
        q = docs[i][rng.choice(len(docs[i]), 6)] + 0.2 * rng.standard_normal((6, DIM)).astype(np.float32)
        out.append(q / np.linalg.norm(q, axis=1, keepdims=True))
    return out


def maxsim(query: np.ndarray, docs: list[np.ndarray]) -> np.ndarray:
    return np.array([(query @ d.T).max(axis=1).sum() for d in docs])


def ids(n: int, start: int = 0) -> list[str]:
    return [f"d{i}" for i in range(start, start + n)]


EVERYTHING = dict(n_ivf_probe=10_000, centroid_score_threshold=-2.0, n_candidates=10_000, n_full_scores=10_000)


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_codec_round_trip(nbits):
    tokens = np.concatenate(corpus(0, 300))
    codec = ResidualCodec.train(tokens, 64, nbits)
    codes, packed = codec.compress(tokens)
    assert packed.shape == (len(tokens), DIM * nbits // 8) and packed.dtype == np.uint8
    cosine = (codec.decompress(codes, packed) * tokens).sum(axis=1)
    centroid_only = (codec.centroids[codes] * tokens).sum(axis=1)
    assert cosine.mean() > centroid_only.mean()  # the residual adds information
    assert cosine.mean() >= {1: 0.9, 2: 0.95, 4: 0.99}[nbits]


# the least squared error of any scalar quantizer with 2, 4 or 16 levels on a unit Gaussian (Max, 1960)
MAX_SCALAR_OPTIMUM = {1: 0.3634, 2: 0.1175, 4: 0.009497}


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_codebooks_beat_the_best_scalar_quantizer(nbits):
    """Gaussian residuals with correlated dimensions of unequal spread (as an encoder's are): coding each dimension
    on its own, however well (ColBERTv2's buckets, or Lloyd-Max's optimum), cannot get below Max's bound times the
    total variance; the rotation and codebooks must, clearly, at the same bits."""
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((DIM, DIM)) * np.linspace(0.05, 1.0, DIM)[:, None]
    residuals = (rng.standard_normal((20_000, DIM)) @ mixing).astype(np.float32)
    rotation, codebooks = fit_residual_quantizer(residuals[:10_000], nbits)
    assert np.allclose(rotation @ rotation.T, np.eye(DIM), atol=1e-5)
    codec = ResidualCodec(np.zeros((1, DIM), np.float32), rotation, codebooks, nbits)
    held_out = residuals[10_000:]
    codes, packed = codec.compress(held_out)
    error = float(((codec.residuals(codes, packed) - held_out) ** 2).sum(axis=1).mean())
    scalar_bound = MAX_SCALAR_OPTIMUM[nbits] * float(held_out.var(axis=0).sum())
    assert error < 0.5 * scalar_bound  # measured 0.36, 0.36, 0.29; 0.70, 0.73, 0.93 without the rotation


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_indexes_written_with_scalar_buckets_still_open(tmp_path, monkeypatch, nbits):
    """Indexes written before codebooks stored per-dimension bucket levels (``weights`` (dim, 2**nbits)), with the
    bucket numbers packed most significant first, and no rotation. Such an index is written here as that version
    wrote it (its buckets are the codebooks of ``scalar_codebooks`` on a grid: the nearest entry is each dimension's
    nearest level); it must open with codebooks that decode it the same, say so in its stats, and lose the old codec
    on ``rebuild``."""
    import indexes.plaid.index as plaid_index

    train = ResidualCodec.train

    def scalar_train(sample, n_centroids, nbits, *args, **kwargs):
        codec = train(sample, n_centroids, nbits, *args, **kwargs)
        codes = codec.assign(sample)
        residuals = (sample - codec.centroids[codes]) / codec.scales[codes, None]
        codec.weights = np.quantile(residuals, (np.arange(2**nbits) + 0.5) / 2**nbits, axis=0).T.astype(np.float32)
        codec.rotation = np.eye(DIM, dtype=np.float32)[None]
        codec.codebooks = scalar_codebooks(codec.weights, nbits, DIM)[None]
        codec.regions = np.zeros(len(codec.centroids), dtype=np.int32)
        return codec

    def old_buckets(codec, vectors):
        codes = codec.assign(vectors)
        residuals = (vectors - codec.centroids[codes]) / codec.scales[codes, None]
        return codes, np.abs(residuals[:, :, None] - codec.weights[None]).argmin(axis=2).astype(np.uint8)

    def old_compress(codec, vectors):  # how that version packed bucket numbers
        codes, buckets = old_buckets(codec, vectors)
        bits = (buckets[:, :, None] >> np.arange(codec.nbits - 1, -1, -1)) & 1
        return codes, np.packbits(bits.reshape(len(vectors), -1), axis=1)
    monkeypatch.setattr(ResidualCodec, "train", scalar_train)
    monkeypatch.setattr(ResidualCodec, "compress", old_compress)
    monkeypatch.setattr(plaid_index, "CODEC_ARRAYS", ("centroids", "weights", "scales"))
    docs, queries = corpus(3, 200), queries_from(corpus(3, 200), 4)
    old = PlaidIndex.create(tmp_path / "ix", dim=DIM, nbits=nbits)
    old.add(ids(200), docs)
    written = old.search(queries, k=10, **EVERYTHING)
    weights = np.load(next((tmp_path / "ix").rglob("*codec-weights.npy")))
    old.close()
    monkeypatch.undo()

    index = PlaidIndex.open(tmp_path / "ix")
    assert index.legacy_codec and index.stats()["codec"].startswith("scalar buckets")
    index.codec.weights = weights
    codes, packed = old_compress(index.codec, docs[0])
    assert np.allclose(index.codec.residuals(codes, packed), weights[np.arange(DIM), old_buckets(index.codec, docs[0])[1]])
    assert_same_ranking(index.search(queries, k=10, **EVERYTHING), written)  # grid codebooks: same levels, new sums
    index.rebuild()
    assert not PlaidIndex.open(tmp_path / "ix").legacy_codec


def test_per_centroid_scales_fit_tight_and_loose_clusters():
    """Tokens around 32 directions whose spreads range over 40x (frequent tokens vs rare ones): the scales must
    follow the spread, and decode with less error than one shared quantizer (scales all 1, codebooks fitted to the
    unscaled residuals) at the same bits. Codebooks absorb much of it by themselves (two spreads 8x apart: 0.995), so
    the margin is modest; on SciFact with MiniLM the scales cut the error by 3%."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((32, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    which = rng.integers(0, 32, 20_000)
    spread = np.geomspace(0.005, 0.2, 32)[which][:, None]
    tokens = centers[which] + spread * rng.standard_normal((20_000, DIM))
    tokens = (tokens / np.linalg.norm(tokens, axis=1, keepdims=True)).astype(np.float32)
    codec = ResidualCodec.train(tokens, 32, 2)
    codes = codec.assign(tokens)
    scale = codec.scales[codes]  # k-means may merge or split a cluster: compare the tokens' median scales
    assert np.median(scale[which < 16]) < 0.5 * np.median(scale[which >= 16])

    shared = ResidualCodec(codec.centroids, *fit_residual_quantizer(tokens - codec.centroids[codes], 2), 2)  # scales 1

    def error(c: ResidualCodec) -> float:
        return float(((c.decompress(*c.compress(tokens)) - tokens) ** 2).sum(axis=1).mean())
    assert error(codec) < 0.97 * error(shared)  # 0.947 measured


def test_regions_code_residuals_whose_axes_differ_across_the_sphere(monkeypatch):
    """Tokens around two groups of directions whose residuals spread along different axes (as tokens of different
    kinds do; here each group in its own quarter of the dimensions): one rotation and one set of codebooks spend
    bytes on both groups' axes for every token; a quantizer per region spends them on the token's own. At the same
    bits, the regional codec must decode with clearly less error."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((16, DIM))
    centers[:8, : DIM // 2] += 4  # two groups of clusters, apart on the sphere
    centers[8:, DIM // 2:] += 4
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    which = rng.integers(0, 16, 40_000)
    axes = [np.diag(np.where(np.arange(DIM) // (DIM // 4) == quarter, 0.3, 0.01)) for quarter in (0, 3)]
    noise = rng.standard_normal((40_000, DIM))
    spread = np.where((which < 8)[:, None], noise @ axes[0], noise @ axes[1])
    tokens = centers[which] + 0.3 * spread
    tokens = (tokens / np.linalg.norm(tokens, axis=1, keepdims=True)).astype(np.float32)

    def error(regions: int) -> float:
        monkeypatch.setattr(ResidualCodec, "REGIONS", regions)
        codec = ResidualCodec.train(tokens, 16, 2)
        assert codec.n_regions == regions
        return float(((codec.decompress(*codec.compress(tokens)) - tokens) ** 2).sum(axis=1).mean())
    assert error(2) < 0.8 * error(1)


def test_inverted_file_lists_each_document_once_per_centroid():
    codes = np.array([3, 1, 3, 0, 3, 3], dtype=np.uint16)
    offsets, docs = inverted_file(codes, np.array([0, 3, 4, 6]), 4)
    lists = [docs[offsets[c]:offsets[c + 1]].tolist() for c in range(4)]
    assert lists == [[1], [0], [], [0, 2]]


@pytest.mark.parametrize("regions", [1, 4])
def test_staged_search_with_nothing_pruned_is_exhaustive_maxsim(tmp_path, monkeypatch, regions):
    """With every stage opened wide, PLAID must rank exactly as exhaustive MaxSim over its own decompressed vectors:
    this pins the stages' bookkeeping (postings, token ranges, reduceat bounds, merging of segments), and, with
    several regions, search's decoding (one table, a rotated query per region) against ``decompress``'s."""
    monkeypatch.setattr(ResidualCodec, "REGIONS", regions)
    monkeypatch.setattr(ResidualCodec, "REGION_SAMPLE", 500)  # this corpus is far smaller than a real one
    docs = corpus(1, 400)
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM, nbits=2)
    index.add(ids(250), docs[:250])
    index.add(ids(150, 250), docs[250:])
    codec = index.codec
    assert codec.n_regions == regions and len(np.unique(codec.regions)) == regions
    decompressed = []
    for segment in index._segments.values():
        data = segment.data
        for i in range(len(segment.rows)):
            a, b = data.doc_offsets[i], data.doc_offsets[i + 1]
            decompressed.append(codec.decompress(data.codes[a:b], data.residuals[a:b]))
    for query in queries_from(docs, 2):
        hits = index.search([query], k=10, **EVERYTHING)[0]
        expected = maxsim(query, decompressed)
        order = np.argsort(-expected, kind="stable")[:10]
        np.testing.assert_allclose([h[1] for h in hits], expected[order], rtol=1e-5, atol=1e-5)
        assert [h[0] for h in hits][:3] == [f"d{i}" for i in order[:3]]


def test_default_search_finds_the_exact_top_10(tmp_path):
    docs = corpus(3, 600)
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM, nbits=4)
    index.add(ids(600), docs)
    recall = []
    for query in queries_from(docs, 4, 30):
        exact = set(np.argsort(-maxsim(query, docs))[:10])
        found = {int(h[0][1:]) for h in index.search([query], k=10)[0]}
        recall.append(len(exact & found) / 10)
    assert np.mean(recall) >= 0.9


def test_stages_keep_more_documents_in_a_larger_segment(tmp_path, monkeypatch):
    """Stages 2 and 3 grow with the square root of a segment's documents (from REFERENCE_DOCS up, capped at the
    widest tier), and a search gives each segment the counts for its own size."""
    from indexes.plaid import index as plaid_index
    from indexes.plaid import search as plaid_search

    for_k, ref = plaid_search.SearchSettings.for_k, plaid_search.REFERENCE_DOCS
    assert for_k(10, 100) == for_k(10, ref) == for_k(10)
    assert (for_k(10).n_candidates, for_k(10).n_full_scores) == (512, 192)
    assert (for_k(10, 4 * ref).n_candidates, for_k(10, 4 * ref).n_full_scores) == (1024, 384)
    assert (for_k(50, 4 * ref).n_candidates, for_k(50, 4 * ref).n_full_scores) == (2048, 512)
    assert (for_k(10, 10**9).n_candidates, for_k(10, 10**9).n_full_scores) == (4096, 1024)  # the widest tier's
    assert for_k(500, 10**9) == for_k(500)

    monkeypatch.setattr(plaid_search, "REFERENCE_DOCS", 25)
    seen, search_segment = [], plaid_index.search_segment
    monkeypatch.setattr(plaid_index, "search_segment", lambda *a, **kw: seen.append(a[5]) or search_segment(*a, **kw))
    docs = corpus(7, 500)
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM, nbits=2)
    index.add(ids(400), docs[:400])
    index.add(ids(100, 400), docs[400:])
    index.search(queries_from(docs, 8, 1), k=10)
    assert sorted((s.n_candidates, s.n_full_scores) for s in seen) == [(1024, 384), (2048, 768)]
    index.search(queries_from(docs, 8, 1), k=10, n_full_scores=50)  # a caller's count still wins
    assert [s.n_full_scores for s in seen[2:]] == [50, 50]


def test_remove_update_filter_reopen_compact(tmp_path):
    docs = corpus(5, 200)
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM)
    index.add(ids(200), docs)
    own = [d[:5] for d in docs]  # a document's own tokens find it
    assert index.search(own[7], k=1)[0][0][0] == "d7"
    index.remove(["d7"])
    assert all(h[0] != "d7" for h in index.search(own[7], k=200, **EVERYTHING)[0])
    index.update(["d8"], [docs[9]])
    hits = index.search(own[9], k=2)[0]
    assert {h[0] for h in hits} == {"d8", "d9"} and abs(hits[0][1] - hits[1][1]) < 1e-5
    index = PlaidIndex.open(tmp_path / "ix")
    assert len(index) == 199 and "d7" not in index
    assert all(isinstance(s.data.residuals, np.memmap) for s in index._segments.values())  # not read into RAM
    assert all(h[0] != "d7" for h in index.search(own[7], k=200, **EVERYTHING)[0])
    index.add(["late"], [docs[7]])
    assert index.search(own[7], k=1)[0][0][0] == "late"
    subset = {f"d{i}" for i in range(50, 60)}
    assert {h[0] for h in index.search(own[3], k=50, filter=subset)[0]} <= subset
    before = index.search(own[:10], k=5)
    index.compact()
    after = PlaidIndex.open(tmp_path / "ix").search(own[:10], k=5)
    assert index.stats()["segments"] == 1
    # merging moves codes, it never re-encodes: the same ranking, scores summed over one segment instead of several
    assert_same_ranking(after, before)


def test_streaming_build_trains_on_a_sample_not_the_first_batch(tmp_path):
    docs = corpus(6, 400)
    batches = ((ids(40, start), docs[start:start + 40]) for start in range(0, 400, 40))
    tokens_per_batch = sum(len(d) for d in docs[:40])
    index = PlaidIndex.build(tmp_path / "ix", batches, dim=DIM, sample_tokens=4 * tokens_per_batch)
    assert len(index) == 400 and index.generation == 1  # one commit
    assert index.settings["trained_tokens"] >= 3 * tokens_per_batch
    assert index.search(docs[123][:4], k=1)[0][0][0] == "d123"


def test_growing_far_past_the_codec_re_clusters(tmp_path):
    docs = corpus(7, 300)
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM, sample_tokens=100_000)
    index.add(ids(10), docs[:10])
    first = index.settings["trained_tokens"]
    index.add(ids(290, 10), docs[10:])
    assert index.settings["trained_tokens"] > first and index.stats()["segments"] == 1
    assert index.search(docs[5][:4], k=1)[0][0][0] == "d5" and index.search(docs[250][:4], k=1)[0][0][0] == "d250"


def test_a_failed_re_clustering_does_not_fail_the_add_it_follows(tmp_path, monkeypatch, caplog):
    """The automatic rebuild (the index outgrew its codec) runs after the add's own commit: its failure must not
    turn the committed add into an exception. It is logged, the documents are searchable, the index opens, and
    the next add re-clusters."""
    docs = corpus(7, 300)
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM, sample_tokens=100_000)
    index.add(ids(10), docs[:10])
    first = index.settings["trained_tokens"]

    def failed_training(*args, **kwargs):
        raise MemoryError("k-means ran out of memory")

    monkeypatch.setattr(PlaidIndex, "train_codec", staticmethod(failed_training))
    with caplog.at_level(logging.WARNING, logger="mret.indexes"):
        index.add(ids(280, 10), docs[10:290])  # far past the codec: the rebuild fails
    assert "committed" in caplog.text and "out of memory" in caplog.text
    assert len(index) == 290 and index.settings["trained_tokens"] == first
    reopened = PlaidIndex.open(tmp_path / "ix")
    assert len(reopened) == 290 and reopened.search(docs[250][:4], k=1)[0][0][0] == "d250"
    monkeypatch.undo()
    index.add(ids(10, 290), docs[290:])  # the next add re-clusters
    assert index.settings["trained_tokens"] > first and index.stats()["segments"] == 1
    assert index.search(docs[5][:4], k=1)[0][0][0] == "d5" and index.search(docs[295][:4], k=1)[0][0][0] == "d295"


def test_a_segment_collected_while_a_reader_opens_it(tmp_path, monkeypatch):
    """Stage 4 reads residuals with pread through a descriptor. A reader opening a new segment must not end with
    its residuals mapped but no descriptor (FileNotFoundError) when a writer commits and collects that segment's
    files meanwhile: here the writer does so just before the reader's os.open of the residuals file."""
    docs = corpus(8, 60)
    writer = PlaidIndex.create(tmp_path / "ix", dim=DIM)
    writer.add(ids(20), docs[:20])
    reader = PlaidIndex.open(tmp_path / "ix")
    writer.add(ids(20, 20), docs[20:40])  # a segment the reader has not opened yet
    residuals = max(writer._segments.values(), key=lambda s: s.id).files["residuals"].name
    real_open, fired = os.open, []

    def open_after_a_collection(path, flags, *args, **kwargs):
        if Path(path).name == residuals and not fired:
            fired.append(path)
            writer.compact()  # retires the reader's segment...
            writer.add(ids(10, 40), docs[40:50])
            writer.add(ids(10, 50), docs[50:60])  # ...which this commit's writer collects
            assert not (tmp_path / "ix" / "files" / residuals).exists()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_after_a_collection)
    hits = reader.search(docs[25][:4], k=1)
    assert fired and hits[0][0][0] == "d25"
    assert reader.generation == writer.generation and len(reader) == 60


def test_a_huge_k_returns_at_most_the_live_documents(tmp_path):
    """No stage sizes an array by k: a k far beyond the index returns what k > 100 returns (the widest settings)."""
    docs = corpus(9, 80)
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM)
    index.add(ids(80), docs)
    index.remove(["d3"])
    queries = queries_from(docs, 1, n=3)
    wide = index.search(queries, k=1000)
    for k in (10**12, 2**62, 10**30):
        hits = index.search(queries, k=k)
        assert hits == wide and all(0 < len(h) <= 79 and "d3" not in dict(h) for h in hits)


def test_bad_input_is_a_clear_error(tmp_path):
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM)
    index.add([], [])  # nothing to add, nothing to rebuild: no error, no commit
    index.rebuild()
    assert index.generation == 0
    docs = corpus(8, 20)
    index.add(ids(20), docs)
    cases = [
        (lambda: index.add(["x"], [np.ones((3, 16))]), r"shape \(n_tokens >= 1, 32\)"),
        (lambda: index.add(["x"], [np.zeros((0, DIM))]), "n_tokens >= 1"),
        (lambda: index.add(["x"], [np.full((2, DIM), np.inf)]), "NaN or infinite"),
        (lambda: index.add(["d1"], [docs[0]]), "already in the index"),
        (lambda: index.remove(["nope"]), "not in the index"),
        (lambda: index.search([np.ones((2, 5))], k=3), "queries"),
        (lambda: index.search([docs[0][:3]], k=3, bogus=1), "unknown search option: 'bogus'"),
        (lambda: PlaidIndex.create(tmp_path / "other", dim=DIM, nbits=3), "nbits"),
    ]
    for call, message in cases:
        with pytest.raises(IndexInputError, match=message):
            call()


def test_rebuild_refuses_a_transaction_with_new_documents(tmp_path):
    """rebuild() re-encodes the committed segments with a new codec: documents added earlier in the same
    transaction, encoded with the old codec, would be decoded with the new one."""
    docs = corpus(9, 40)
    index = PlaidIndex.create(tmp_path / "ix", dim=DIM)
    index.add(ids(30), docs[:30])
    with pytest.raises(IndexInputError, match="rebuild"), index.transaction():
        index.add(ids(10, 30), docs[30:])
        index.rebuild()
    assert len(index) == 30 and index.generation == 1
    index.rebuild()
    assert index.generation == 2 and index.search(docs[5][:4], k=1)[0][0][0] == "d5"


def test_codebooks_are_fitted_with_blas_assignment_and_the_setting_is_given_back(monkeypatch):
    """faiss 1.15 assigns fewer than 128,000 points without BLAS, ~5x slower for the codebooks' small k-means
    (bench figures in the README): the fit lowers the threshold while it trains, and restores the process's own."""
    import faiss

    seen = []
    real_train = faiss.ProductQuantizer.train

    def train(self, x):
        seen.append(faiss.cvar.distance_compute_blas_threshold)
        return real_train(self, x)

    monkeypatch.setattr(faiss.ProductQuantizer, "train", train)
    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 128_000  # (faiss 1.15's default)
    try:
        fit_residual_quantizer(np.random.default_rng(0).standard_normal((2_000, 16)).astype(np.float32), 2)
        assert seen == [20] and faiss.cvar.distance_compute_blas_threshold == 128_000
    finally:
        faiss.cvar.distance_compute_blas_threshold = before
