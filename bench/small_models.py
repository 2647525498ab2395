"""Tokens/s of the small ModernBERT code retriever (lightonai/LateOn-Code-edge: Ettin-17M, 256 -> 512 -> 48) against
the base one (lightonai/LateOn-Code: ModernBERT-base, 768 -> 128), encoding documents with our ColBERT head on CPU.

    python bench/small_models.py [--texts 16] [--tokens 512] [--repeat 2] [--threads 2]

Both models are random checkpoints in their published layouts (tests/retrieval/test_lateon.py builds them and says
where each file's values come from): speed depends on the shapes, not on the weights. The documents are slices of
this Python's standard library source, cut to ``--tokens`` tokens each. The models alternate within one process
(best of ``--repeat`` rounds each), so that the machine's drifting speed affects both alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "retrieval")]


def stdlib_texts(n: int, tokens: int, tokenizer) -> list[str]:
    """``n`` pieces of standard-library source of about ``tokens`` tokens each (cut at a token boundary)."""
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = []
    for path in sources:
        ids = tokenizer.backend.encode(path.read_text(errors="replace"), add_special_tokens=False).ids
        if len(ids) >= tokens:
            texts.append(tokenizer.backend.decode(ids[: tokens - 4]))
        if len(texts) == n:
            break
    return texts


def main() -> None:
    from test_lateon import build_lateon

    from retrieval import ColBERT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        models = {name: ColBERT.from_pretrained(build_lateon(Path(root) / name, name))
                  for name in ("LateOn-Code-edge", "LateOn-Code")}
        texts = stdlib_texts(args.texts, args.tokens, models["LateOn-Code"].tokenizer)
        tokens = {name: sum(map(len, m.tokenize(texts, is_query=False))) for name, m in models.items()}
        best = {name: float("inf") for name in models}
        for _ in range(args.repeat):
            for name, model in models.items():
                start = time.perf_counter()
                model.encode_documents(texts)
                best[name] = min(best[name], time.perf_counter() - start)
        base = tokens["LateOn-Code"] / best["LateOn-Code"]
        print(f"| model | parameters | vectors | tokens/s ({args.texts} documents of {args.tokens} tokens, "
              f"{args.threads} threads) | vs LateOn-Code |\n|---|---:|---:|---:|---:|")
        rows = []
        for name, model in models.items():
            rate = tokens[name] / best[name]
            params = sum(p.numel() for p in model.parameters())
            rows.append({"model": name, "parameters": params, "dim": model.dim, "tokens_per_s": round(rate, 1),
                         "ratio": round(rate / base, 2)})
            print(f"| {name} | {params / 1e6:.1f}M | {model.dim} | {rate:,.0f} | {rate / base:.2f}x |", flush=True)
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
