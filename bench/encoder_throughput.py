"""Encoder throughput on CPU: our ModernBERT against transformers' ModernBertModel (sdpa), same random base weights.

    python bench/encoder_throughput.py [--threads 2] [--shape base] [--repeat 3] [--quick]
    python bench/encoder_throughput.py --workloads fixed-512 --dtype float32 bfloat16 int8 --no-peer

Speed: for each workload, one process holds our encoder (in each ``--dtype``: float32 and bfloat16 by default; int8
is the body's linear layers quantized dynamically, retrieval/heads/precision.py) and the peer, and runs them in turn,
`--repeat` rounds, keeping each one's best; interleaving makes the ratio robust to this machine's drifting speed.
Memory: each (implementation, long document) also runs alone in a fresh process, whose peak RSS is reported.

Workloads:
  fixed-512      16 texts of 512 tokens
  var-arrival    64 texts of 32..512 tokens (seeded), batches of 16 in arrival order, as a user would send them
  var-sorted     the same texts sorted by length first (what a careful user of the peer does)
  doc-4096       one 4096-token document
  doc-8192       one 8192-token document
The peer is called as users call it: padded input_ids + attention_mask per batch. Ours gets the same batches
through Encoder.embed_token_ids (which packs them, sorted by length, in batches of its default token budget).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT.parent / "shared" / "data" / "modernbert-tokenizer"
WORKLOADS = ["fixed-512", "var-arrival", "var-sorted", "doc-4096", "doc-8192"]
DTYPES = ["float32", "bfloat16", "int8"]


def workload_batches(name: str, quick: bool) -> list[list[list[int]]]:
    """Token-id batches ([CLS] ... [SEP]); random ids, since speed does not depend on content."""
    rng = random.Random(0)

    def text(n: int) -> list[int]:
        return [50281] + [rng.randrange(5, 50000) for _ in range(n - 2)] + [50282]

    if name == "fixed-512":
        return [[text(512) for _ in range(16)]]
    if name.startswith("var-"):
        texts = [text(rng.randint(32, 512)) for _ in range(16 if quick else 64)]
        if name == "var-sorted":
            texts.sort(key=len)
        return [texts[i:i + 16] for i in range(0, len(texts), 16)]
    return [[text(int(name.split("-")[1]))]]


def load(impl: str, folder: str):
    """A callable running one batch of token-id lists through ``impl``."""
    import torch

    if impl == "peer":
        from transformers import ModernBertModel

        model = ModernBertModel.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32).eval()

        def run(batch):
            length = max(map(len, batch))
            ids = torch.tensor([row + [50283] * (length - len(row)) for row in batch])
            mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in batch])
            return model(input_ids=ids, attention_mask=mask).last_hidden_state
        return run

    import encoder
    from retrieval.heads.precision import quantize_linears

    dtype = impl.removeprefix("ours-")  # ours-float32, ours-bfloat16, ours-int8
    model = encoder.from_pretrained(folder, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    if dtype == "int8":
        quantize_linears(model.model)
    return lambda batch: model.embed_token_ids(batch, show_progress=False)


def timed(run, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    return time.perf_counter() - start


def speed(workload: str, folder: str, quick: bool, repeat: int, impls: list[str]) -> dict[str, float]:
    """Tokens/s per implementation, best of ``repeat`` interleaved rounds."""
    import torch

    batches = workload_batches(workload, quick)
    tokens = sum(len(row) for batch in batches for row in batch)
    runners = {impl: load(impl, folder) for impl in impls}
    best = {impl: float("inf") for impl in impls}
    with torch.inference_mode():
        for run in runners.values():
            run([batches[0][0][:64]])  # warm-up: threads, allocator, kernels
        for _ in range(repeat):
            for impl, run in runners.items():
                best[impl] = min(best[impl], timed(run, batches))
    return {impl: tokens / seconds for impl, seconds in best.items()}


def peak_rss(impl: str, workload: str, folder: str) -> float:
    """MB of peak RSS of a fresh process that loads ``impl`` and runs ``workload`` once."""
    import torch

    batches = workload_batches(workload, quick=False)
    with torch.inference_mode():
        timed(load(impl, folder), batches)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--folder", args.folder, "--threads", str(args.threads),
           "--repeat", str(args.repeat), *(["--quick"] if args.quick else []), "--dtype", *args.dtype,
           *([] if args.peer else ["--no-peer"]), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(extra)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; each implementation's best is kept")
    parser.add_argument("--quick", action="store_true", help="16 variable-length texts instead of 64")
    parser.add_argument("--workloads", nargs="*", default=WORKLOADS, choices=WORKLOADS)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=DTYPES,
                        help="our encoder in these formats (the ratios are to the first)")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="leave transformers out")
    parser.add_argument("--speed", help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    impls = (["peer"] if args.peer else []) + [f"ours-{dtype}" for dtype in args.dtype]
    if args.speed:
        print(json.dumps(speed(args.speed, args.folder, args.quick, args.repeat, impls)))
        return
    if args.memory:
        print(json.dumps({"peak_rss_mb": peak_rss(*args.memory, args.folder)}))
        return

    from encoder.testing import random_encoder

    with tempfile.TemporaryDirectory() as folder:
        args.folder = folder
        random_encoder(args.shape, seed=0, tokenizer_dir=TOKENIZER).save_pretrained(folder)
        rows = []
        for workload in args.workloads:
            tps = child(args, "--speed", workload)
            memory = {}
            if workload.startswith("doc-"):
                memory = {impl: child(args, "--memory", impl, workload)["peak_rss_mb"]
                          for impl in ("peer", "ours-float32")[0 if args.peer else 1:]}
            rows.append((workload, tps, memory))
            print(f"  {workload}: " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in tps.items()), file=sys.stderr,
                  flush=True)
    report(rows, args)


def report(rows, args) -> None:
    """tokens/s: the peer, ours in each dtype; ratios: ours (first dtype) / peer, each other dtype / the first."""
    import torch
    import transformers

    print(f"\nModernBERT-{args.shape} (random weights), CPU, {args.threads} threads, best of {args.repeat} interleaved "
          f"rounds, torch {torch.__version__}, transformers {transformers.__version__}; tokens/s")
    first, others = args.dtype[0], args.dtype[1:]
    columns = (["peer fp32"] if args.peer else []) + [f"ours {d}" for d in args.dtype] + (
        [f"ours/peer"] if args.peer else []) + [f"{d}/{first}" for d in others] + ["peer RSS MB", "ours RSS MB"]
    header = f"{'workload':12s}" + "".join(f" {c:>15s}" for c in columns)
    print(header)
    print("-" * len(header))
    for workload, tps, memory in rows:
        values = ([tps["peer"]] if args.peer else []) + [tps[f"ours-{d}"] for d in args.dtype] + (
            [tps[f"ours-{first}"] / tps["peer"]] if args.peer else []) + [
            tps[f"ours-{d}"] / tps[f"ours-{first}"] for d in others]
        cells = [f"{v:15.1f}" if v > 20 else f"{v:15.2f}" for v in values]
        cells += [f"{memory.get(k, float('nan')):15.0f}" for k in ("peer", "ours-float32")]
        print(f"{workload:12s} " + " ".join(cells))


if __name__ == "__main__":
    main()
