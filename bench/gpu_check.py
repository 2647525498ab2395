"""The GPU check: one command on a CUDA machine that shows the CUDA path works, and how fast it is.

    bash bench/gpu_check.sh [--device cuda] [--shape base] [--quick]     (installs what is missing, then runs this)

Steps, one row each in the table printed at the end (a step that fails is a FAILED row with its reason; the others
still run; the exit status is 1 when any failed):
  1. environment: torch, the device, flash-attn, torch's varlen attention
  2. the CUDA tests: tests/encoder/test_cuda.py (CUDA against CPU in fp32; varlen and flash against sdpa in bf16)
  3. encoder throughput with random base weights, bf16 on CUDA: ours (unpadded, packed, the auto backend) against
     transformers' ModernBertModel (padded batches, sdpa): 64 texts of 512 tokens; 256 texts of 32..512 tokens in
     arrival order, 32 per batch; one 8192-token document, 8 times. Best of ``--repeat`` interleaved rounds.
     (``--quick``: a few short texts and a 1024-token document.)
  4. `mret index` of a source tree (packages of this Python's standard library) with ``--device DEVICE``: tokens/s
     of the whole command (model loading included) and of the model alone.

The paper's anchor for ModernBERT-base (an RTX 4090): about 147k tokens/s on short variable-length input, 134k on
long. On a CPU, ``--device cpu --quick`` runs every step on the tiny shape: that checks the script (CI does, in
tests/e2e/test_gpu_check.py), not a GPU. Results also go to bench/results/gpu_check.json (``--json``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
TOKENIZERS = [ROOT / ".gpu" / "tokenizer", ROOT.parent / "shared" / "fixtures" / "pylate" / "model"]
PAPER = "RTX 4090, paper: 147k short / 134k long"
PAD = 50283


def workloads(quick: bool) -> dict[str, list[list[list[int]]]]:
    """Token-id batches ([CLS] ... [SEP], random ids: speed does not depend on content)."""
    rng = random.Random(0)

    def text(n: int) -> list[int]:
        return [50281] + [rng.randrange(5, 50000) for _ in range(n - 2)] + [50282]

    if quick:  # the script checked on a CPU: a few seconds
        return {"fixed 512": [[text(512) for _ in range(4)]],
                "variable 32-512": [[text(rng.randint(32, 512)) for _ in range(8)]],
                "document 8192": [[text(1024)]]}
    varied = [text(rng.randint(32, 512)) for _ in range(256)]
    return {"fixed 512": [[text(512) for _ in range(16)] for _ in range(4)],
            "variable 32-512": [varied[i:i + 32] for i in range(0, len(varied), 32)],
            "document 8192": [[text(8192)] for _ in range(8)]}


def environment(device: str) -> dict:
    import torch

    from encoder.attention import flash_attn_available, torch_varlen_available

    info = {"torch": torch.__version__, "device": device, "cuda": torch.cuda.is_available(),
            "flash_attn": flash_attn_available(), "torch_varlen": torch_varlen_available()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def cuda_tests() -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          "tests/encoder/test_cuda.py"], cwd=ROOT, capture_output=True, text=True)
    summary = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
    if out.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest: {summary}\n{out.stdout[-3000:]}{out.stderr[-2000:]}")
    return {"summary": summary, "seconds": time.perf_counter() - started}


def throughput(folder: Path, device: str, quick: bool, repeat: int) -> dict[str, dict[str, float]]:
    """Tokens/s of ours and of transformers per workload, bf16 on CUDA (fp32 on CPU), best of ``repeat``."""
    import torch
    from transformers import ModernBertModel

    import encoder

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    ours = encoder.from_pretrained(folder, device=device, dtype=dtype)
    peer = ModernBertModel.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype).to(device).eval()

    def run_ours(batch):
        return ours.embed_token_ids(batch, show_progress=False)

    def run_peer(batch):
        length = max(map(len, batch))
        ids = torch.tensor([row + [PAD] * (length - len(row)) for row in batch], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in batch], device=device)
        return peer(input_ids=ids, attention_mask=mask).last_hidden_state

    def seconds(run, batches) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in batches:
            run(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    results = {}
    with torch.inference_mode():
        for name, batches in workloads(quick).items():
            tokens = sum(len(row) for batch in batches for row in batch)
            best = {"ours": float("inf"), "transformers": float("inf")}
            for run in (run_ours, run_peer):
                seconds(run, batches[:1])  # warm-up: kernels, allocator
            for _ in range(repeat):
                best["ours"] = min(best["ours"], seconds(run_ours, batches))
                best["transformers"] = min(best["transformers"], seconds(run_peer, batches))
            results[name] = {impl: tokens / s for impl, s in best.items()}
    return results


def index_tree(model: Path, device: str, quick: bool, scratch: Path) -> dict:
    """`mret index` of standard-library packages with --device, then `mret status --json` for the tokens."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    tree = scratch / "tree"
    for package in (["json"] if quick else ["json", "email", "http", "logging", "urllib", "asyncio"]):
        shutil.copytree(stdlib / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    index_dir = scratch / "index"
    command = [sys.executable, "-m", "retrieval.cli", "index", str(tree), "--index-dir", str(index_dir),
               "--model", str(model), "--device", device, "--max-length", "512" if quick else "8192"]
    started = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode:
        raise RuntimeError(f"mret index exited {out.returncode}: {(out.stderr or out.stdout).strip()[-2000:]}")
    last_run = json.loads((index_dir / "last_run.json").read_text())
    return {"files": last_run["files"], "tokens": last_run["encoded_tokens"], "wall": wall,
            "tokens_per_s": last_run["encoded_tokens"] / wall,
            "model_tokens_per_s": last_run["encoded_tokens"] / max(last_run["encode_seconds"], 1e-9)}


def tokenizer_folder() -> Path:
    for folder in TOKENIZERS:
        if (folder / "tokenizer.json").exists():
            return folder
    sys.exit("no tokenizer: copy ../shared/fixtures/pylate/model/tokenizer*.json and config_sentence_transformers"
             ".json into .gpu/tokenizer/ (README, GPU)")


def table(results: dict) -> str:
    rows = [("step", "result")]
    env = results.get("environment", {})
    if "error" in env:
        rows.append(("environment", f"FAILED: {env['error']}"))
    else:
        rows.append(("environment", f"torch {env['torch']}, {env.get('gpu', env['device'])}, flash-attn "
                                    f"{'yes' if env['flash_attn'] else 'no'}, torch varlen "
                                    f"{'yes' if env['torch_varlen'] else 'no'}"))
    tests = results.get("cuda_tests", {})
    rows.append(("tests/encoder/test_cuda.py", f"FAILED: {tests['error']}" if "error" in tests else
                 f"{tests['summary']} ({tests['seconds']:.0f} s)"))
    speed = results.get("throughput", {})
    if "error" in speed:
        rows.append(("encoder throughput", f"FAILED: {speed['error']}"))
    else:
        for name, by_impl in speed.items():
            rows.append((f"tokens/s, {name}", f"ours {by_impl['ours']:,.0f} vs transformers "
                                              f"{by_impl['transformers']:,.0f} "
                                              f"({by_impl['ours'] / by_impl['transformers']:.2f}x)"))
    index = results.get("index", {})
    rows.append(("mret index --device", f"FAILED: {index['error']}" if "error" in index else
                 f"{index['files']} files, {index['tokens']:,} tokens in {index['wall']:.1f} s: "
                 f"{index['tokens_per_s']:,.0f} tokens/s (model alone {index['model_tokens_per_s']:,.0f})"))
    width = max(len(step) for step, _ in rows)
    lines = [f"| {step:<{width}} | {result} |" for step, result in rows]
    lines.insert(1, f"|{'-' * (width + 2)}|{'-' * 8}|")
    return "\n".join(lines) + f"\n(anchor: {PAPER})"


def step(results: dict, name: str, work) -> None:
    print(f"[gpu_check] {name} ...", flush=True)
    try:
        results[name] = work()
    except Exception as error:  # noqa: BLE001  (one row says what failed; the other steps still run)
        message = " ".join(str(error).split())  # one line in the table
        results[name] = {"error": f"{type(error).__name__}: {message[-400:]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to check the script itself)")
    parser.add_argument("--shape", default=None, choices=["tiny", "base", "large"], help="default: base (tiny with --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads and tree")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    args = parser.parse_args()
    shape = args.shape or ("tiny" if args.quick else "base")

    from heads_throughput import make_folders

    results: dict = {"shape": shape}
    with tempfile.TemporaryDirectory() as scratch:
        dense, _ = make_folders(Path(scratch) / "models", shape, tokenizer_folder())
        step(results, "environment", lambda: environment(args.device))
        step(results, "cuda_tests", cuda_tests)
        step(results, "throughput", lambda: throughput(dense, args.device, args.quick, args.repeat))
        step(results, "index", lambda: index_tree(dense, args.device, args.quick, Path(scratch)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nGPU check, random ModernBERT-{shape}:\n{table(results)}")
    sys.exit(1 if any("error" in value for value in results.values() if isinstance(value, dict)) else 0)


if __name__ == "__main__":
    main()
