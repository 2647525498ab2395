"""fast-plaid (PyLate's PLAID backend) as a peer for bench/index_bench.py, which calls this script in the same run
on the same token vectors so that our PLAID index and fast-plaid are measured side by side.

It runs with the python of its own virtual environment (bench/peers/setup_fastplaid.sh), never the project's:
pylate pins old torch/transformers, so fast-plaid is not a dependency of the project.

    bench/.venvs/fastplaid/bin/python bench/peers/fastplaid_peer.py --input vectors.npz --output result.json \
        [--nbits 2] [--k 10] [--threads 1,2] [--timed-queries N] [--index-dir DIR]

Input npz: doc_embeddings (tokens, dim) float32, doc_offsets (n_docs+1,) int64, query_embeddings, query_offsets;
document i is doc_embeddings[doc_offsets[i]:doc_offsets[i+1]]. Builds the index on CPU with fast-plaid's own API and
its default k-means settings, then, for each thread count, searches one query at a time (after one warm-up query)
with fast-plaid's default search parameters, in a fresh process (the last thread count over every query, which gives
the results; the others over the first ``--timed-queries`` queries, as the exhaustive baseline is timed):
peak_rss_mb is its peak RSS (VmHWM), and search_rss_mb its growth from after imports and loading the queries (the definition bench/index_bench.py uses).
Threads: fast-plaid's search runs libtorch ops (through tch, on this venv's libtorch_cpu), so torch.set_num_threads
(plus OMP/MKL/RAYON_NUM_THREADS in the environment) sets them; its `n_processes` (joblib over query chunks) does not
apply to a single query. index_bytes counts every file fast-plaid leaves in the index directory; index_files lists
them (it also writes merged_*.npy copies of codes/residuals when loading, and embeddings.npy, a raw float32 copy of the
vectors, when there are at most 1000 documents).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from fast_plaid import search


def split(embeddings: np.ndarray, offsets: np.ndarray) -> list[torch.Tensor]:
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    return [torch.from_numpy(embeddings[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss: a child inherits its parent's value across fork+exec."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def search_worker(args: argparse.Namespace) -> None:
    """Fresh process: load the index, search one query at a time, print latency, hits and peak RSS as JSON."""
    torch.set_num_threads(args.search_threads)
    data = np.load(args.input)
    queries = split(data["query_embeddings"], data["query_offsets"])[: args.n_queries]
    baseline = peak_rss_mb()  # as in bench/index_bench.py: after imports and queries, before opening the index
    index = search.FastPlaid(index=args.index_dir, device="cpu")

    def one(query: torch.Tensor) -> list[tuple[int, float]]:
        return index.search(queries_embeddings=query[None], top_k=args.k, show_progress=False)[0]

    one(queries[0])  # warm-up
    times, hits = [], []
    for query in queries:
        start = time.perf_counter()
        hits.append(one(query))
        times.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
                      "peak_rss_mb": peak_rss_mb(), "search_rss_mb": peak_rss_mb() - baseline, "hits": hits}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output")
    parser.add_argument("--nbits", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--timed-queries", type=int, default=None,
                        help="queries timed at the thread counts before the last (default: all)")
    parser.add_argument("--index-dir", help="default: a temporary directory")
    parser.add_argument("--n-queries", type=int, help=argparse.SUPPRESS)  # internal: the search worker
    parser.add_argument("--search-threads", type=int, help=argparse.SUPPRESS)  # internal: the search worker
    args = parser.parse_args()
    if args.search_threads:
        return search_worker(args)
    if not args.output:
        parser.error("--output is required")

    data = np.load(args.input)
    docs = split(data["doc_embeddings"], data["doc_offsets"])
    n_docs, n_tokens = len(docs), sum(len(d) for d in docs)
    index_dir = Path(args.index_dir or tempfile.mkdtemp(prefix="fastplaid_"))

    start = time.perf_counter()
    search.FastPlaid(index=str(index_dir), device="cpu").create(documents_embeddings=docs, nbits=args.nbits)
    build_seconds = time.perf_counter() - start
    build_rss_mb = peak_rss_mb()
    del docs, data

    latency, hits = {}, []
    thread_counts = args.threads.split(",")
    for threads in thread_counts:
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, RAYON_NUM_THREADS=threads)
        timed_only = threads != thread_counts[-1] and args.timed_queries is not None
        limit = ["--n-queries", str(args.timed_queries)] if timed_only else []
        out = subprocess.run([sys.executable, __file__, "--input", args.input, "--index-dir", str(index_dir),
                              "--k", str(args.k), "--search-threads", threads, *limit],
                             env=env, check=True, capture_output=True, text=True).stdout
        run = json.loads(out.strip().splitlines()[-1])
        hits = run.pop("hits")
        latency[threads] = {**run, "queries": len(hits)}

    files = {f.name: f.stat().st_size for f in sorted(index_dir.iterdir()) if f.is_file()}
    result = {
        "fast_plaid_version": version("fast-plaid"), "torch_version": torch.__version__,
        "nbits": args.nbits, "k": args.k, "build_seconds": build_seconds, "build_peak_rss_mb": build_rss_mb,
        "index_bytes": sum(files.values()), "bytes_per_token": sum(files.values()) / n_tokens, "index_files": files,
        "n_docs": n_docs, "n_tokens": n_tokens, "latency": latency,
        "peak_rss_mb": max(run["peak_rss_mb"] for run in latency.values()),
        "search_rss_mb": max(run["search_rss_mb"] for run in latency.values()),
        "results": [[int(doc) for doc, _ in h] for h in hits],
        "scores": [[float(score) for _, score in h] for h in hits],
    }
    Path(args.output).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
