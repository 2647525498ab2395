"""Training tokens/s of a contrastive step (forward, in-batch-negatives loss, backward, AdamW) with our encoder
against sentence-transformers on transformers' ModernBertModel: same random ModernBERT weights, same texts of mixed
lengths, same loss (MultipleNegativesRankingLoss = InfoNCE at temperature 0.05), in one process.

    python bench/train_throughput.py [--shape base] [--pairs 16] [--steps 3] [--threads 2] [--device cpu]

Tokens counted are the texts' real tokens (padding excluded) on both sides. Steps alternate between the two
implementations so that the machine's drift affects both alike; the median step time of each is reported.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def mixed_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Queries of 8-40 words and documents of 16-480 words (uniform; about 10 to 500 tokens)."""
    rng = random.Random(seed)
    words = "retrieval encoder token window attention index query document vector score model long code".split()
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 40))) for _ in range(n)]
    documents = [" ".join(rng.choice(words) for _ in range(rng.randint(16, 480))) for _ in range(n)]
    return queries, documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--pairs", type=int, default=16, help="(query, document) pairs per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from heads_throughput import make_folders
    from retrieval import BiEncoder
    from retrieval.training import losses

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        dense, _ = make_folders(Path(scratch), args.shape)
        ours = BiEncoder.from_pretrained(dense, device=device)
        peer = SentenceTransformer(str(dense), device=args.device, model_kwargs={"attn_implementation": "sdpa"})
        peer_loss = MultipleNegativesRankingLoss(peer, scale=20.0)
        ours.train()
        peer.train()
        ours_opt = torch.optim.AdamW(ours.parameters(), lr=1e-5)
        peer_opt = torch.optim.AdamW(peer.parameters(), lr=1e-5)

        def ours_step(queries: list[str], documents: list[str]) -> int:
            ids = ours.tokenize(queries) + ours.tokenize(documents)
            vectors = ours.forward(ids)
            losses.info_nce(vectors[: len(queries)], vectors[len(queries):], 0.05).backward()
            ours_opt.step()
            ours_opt.zero_grad(set_to_none=True)
            return sum(map(len, ids))

        def peer_step(queries: list[str], documents: list[str]) -> int:
            features = [peer.preprocess(queries), peer.preprocess(documents)]
            features = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in f.items()} for f in features]
            peer_loss(features, None).backward()
            peer_opt.step()
            peer_opt.zero_grad(set_to_none=True)
            return int(sum(f["attention_mask"].sum() for f in features))

        times: dict[str, list[float]] = {"ours": [], "sentence-transformers": []}
        tokens: dict[str, int] = {}
        for step in range(args.steps + 1):
            queries, documents = mixed_pairs(args.pairs, seed=step)
            for name, run in (("ours", ours_step), ("sentence-transformers", peer_step)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                n = run(queries, documents)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step:  # the first step warms up
                    times[name].append(time.perf_counter() - started)
                    tokens[name] = tokens.get(name, 0) + n
        print(f"random ModernBERT-{args.shape}, {args.pairs} pairs per step (queries 8-40 words, documents "
              f"16-480 words), {args.steps} timed steps, {args.threads} threads, {device}")
        rates = {}
        for name in times:
            per_step = statistics.median(times[name])
            rates[name] = tokens[name] / args.steps / per_step
            print(f"{name:<24} median step {per_step:7.2f} s   {rates[name]:9,.0f} tokens/s   "
                  f"({tokens[name] // args.steps:,} real tokens per step)")
        print(f"ours / sentence-transformers: {rates['ours'] / rates['sentence-transformers']:.2f}x (target >= 1.3x)")


if __name__ == "__main__":
    main()
