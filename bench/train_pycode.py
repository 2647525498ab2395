"""Training from scratch on the offline code benchmark: a tiny random ModernBERT (the real tokenizer) is adapted with
MLM on the pycode corpus (held-out MLM loss before/after), then trained as a bi-encoder on pycode's train split
(docstring -> function, in-batch negatives) and scored on its test split (nDCG@10, our eval harness), against the
same model untrained.

    mret datasets pycode .cache/datasets/pycode        # once: Python 3.11's stdlib functions (eval/offline_code.py)
    python bench/train_pycode.py [--data .cache/datasets/pycode] [--shape tiny] [--epochs 3] [--mlm-steps 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENIZER = ROOT.parent / "shared" / "data" / "modernbert-tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".cache" / "datasets" / "pycode")
    parser.add_argument("--shape", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mlm-steps", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    import torch

    from encoder.testing import random_encoder
    from eval.datasets.beir import load_beir
    from eval.runner import evaluate_head
    from retrieval import BiEncoder
    from retrieval.training import Trainer, TrainSettings

    if not (args.data / "corpus.jsonl").exists():
        sys.exit(f"no dataset at {args.data}: run `mret datasets pycode {args.data}` first")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        random_encoder(args.shape, seed=0, tokenizer_dir=TOKENIZER).save_pretrained(scratch / "random")
        started = time.perf_counter()
        mlm = Trainer(TrainSettings("mlm", str(scratch / "random"), str(args.data), str(scratch / "mlm"),
                                    batch_size=32, max_steps=args.mlm_steps, learning_rate=args.lr,
                                    max_length=args.max_length, eval_fraction=0.05)).train()
        print(f"MLM on the pycode corpus, {args.mlm_steps} steps ({time.perf_counter() - started:.0f} s): held-out "
              f"loss {mlm.evaluations[0]['mlm_loss']:.3f} -> {mlm.evaluations[-1]['mlm_loss']:.3f}", flush=True)

        test = load_beir(args.data, "test")
        rows = []
        for name, base in (("random init", scratch / "random"), ("after MLM", scratch / "mlm")):
            folder = scratch / f"st-{name.replace(' ', '-')}"
            encoder = BiEncoder.from_base(base)
            encoder.max_length = args.max_length
            encoder.save(folder)
            untrained = evaluate_head(BiEncoder.from_pretrained(folder), test)
            started = time.perf_counter()
            result = Trainer(TrainSettings("dense", str(folder), str(args.data), str(scratch / f"trained-{name}"),
                                           split="train", epochs=args.epochs, batch_size=args.batch_size,
                                           learning_rate=args.lr, max_length=args.max_length)).train()
            trained = evaluate_head(BiEncoder.from_pretrained(scratch / f"trained-{name}"), test)
            rows.append((name, untrained, trained, result.steps, time.perf_counter() - started))
        print(f"\npycode test split ({len(test.queries)} queries, {len(test.corpus)} functions), random ModernBERT-"
              f"{args.shape}, contrastive training on the train split ({args.epochs} epochs, batch {args.batch_size}):")
        print(f"{'start':<14}{'untrained nDCG@10':>19}{'trained nDCG@10':>17}{'R@100':>8}{'steps':>7}{'seconds':>9}")
        for name, before, after, steps, seconds in rows:
            print(f"{name:<14}{before['ndcg@10']:>19.4f}{after['ndcg@10']:>17.4f}{after['recall@100']:>8.4f}"
                  f"{steps:>7}{seconds:>9.0f}")


if __name__ == "__main__":
    main()
