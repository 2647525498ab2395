"""Speed of symbol extraction (retrieval/codebase/symbols.py) on real trees, against the cost of chunking the same
files, and how often today's chunk boundaries cut through a definition.

    nice python bench/symbols_speed.py [ROOT ...] [--budgets 8180,2040,504] [--repeat 1]

ROOTs default to the installed numpy and scipy packages (Python, C, C++, Fortran, Cython). Files are taken as
``mret index`` takes them (sources.walk and read_source, 1 MiB limit). For each budget, every code file is chunked
as indexing chunks it (chunking.chunk_text with the ModernBERT tokenizer from ../shared) and each definition of a
function, method or class is checked: is it whole in at least one chunk? One that is larger than the budget cannot
be; the figure that matters is the share of those that fit and are still cut.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "modernbert-tokenizer" / "tokenizer.json"
BODIES = {"function", "method", "class", "struct", "enum", "interface", "trait", "module", "macro", "type"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="*", type=Path)
    parser.add_argument("--budgets", default="8180,2040,504", help="chunk budgets in tokens ('' skips chunking)")
    parser.add_argument("--repeat", type=int, default=1, help="extraction passes (the best is reported)")
    args = parser.parse_args()

    from retrieval.codebase import symbols
    from retrieval.codebase.sources import SkippedFile, is_code, read_source, walk

    roots = args.roots or [Path(importlib.import_module(name).__file__).parent for name in ("numpy", "scipy")]
    texts: list[tuple[str, str]] = []
    for root in roots:
        for file in walk(root).files:
            if not is_code(file.path):
                continue
            try:
                texts.append((f"{root.name}/{file.path}", read_source(file)))
            except SkippedFile:
                pass
    parsers = sorted(g for g in symbols.GRAMMARS if symbols.grammar_available(g))
    print(f"{len(texts)} code files, {sum(len(t.encode()) for _, t in texts) / 2**20:.1f} MiB, from "
          f"{', '.join(str(r) for r in roots)}; tree-sitter grammars: {', '.join(parsers)}")

    for path, text in texts[:50]:  # warm up: grammars loaded and queries compiled once, outside the timing
        symbols.definitions(path, text)
    best: dict[str, float] = {}
    found: dict[str, list] = {}
    for _ in range(args.repeat):
        for path, text in texts:
            started = time.perf_counter()
            found[path] = symbols.definitions(path, text)
            seconds = time.perf_counter() - started
            best[path] = min(best.get(path, seconds), seconds)
    by_language: dict[str, Counter] = defaultdict(Counter)
    for path, text in texts:
        language = symbols.language_of(path)
        grammar = symbols._grammar_names(path, language)
        how = "tree-sitter" if grammar and any(symbols.grammar_available(g) for g in grammar) else "regex"
        row = by_language[f"{language} ({how})"]
        row["files"] += 1
        row["bytes"] += len(text.encode())
        row["symbols"] += len(found[path])
        row["microseconds"] += int(best[path] * 1e6)
    total = Counter()
    print("\n| language | files | MiB | symbols | seconds | symbols/s | MiB/s |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, row in sorted(by_language.items(), key=lambda item: -item[1]["bytes"]):
        total.update(row)
        print(_row(name, row))
    print(_row("**all**", total))
    slow = sorted(best.items(), key=lambda item: -item[1])[:3]
    print("slowest files: " + ", ".join(f"{p} {s * 1000:.0f} ms" for p, s in slow))

    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    if budgets:
        boundaries(texts, found, budgets, total["microseconds"] / 1e6)


def _row(name: str, row: Counter) -> str:
    seconds = row["microseconds"] / 1e6
    return (f"| {name} | {row['files']:,} | {row['bytes'] / 2**20:.1f} | {row['symbols']:,} | {seconds:.2f} | "
            f"{row['symbols'] / max(seconds, 1e-9):,.0f} | {row['bytes'] / 2**20 / max(seconds, 1e-9):.1f} |")


def boundaries(texts, found, budgets: list[int], symbol_seconds: float) -> None:
    from tokenizers import Tokenizer

    from retrieval.codebase.chunking import chunk_text
    from retrieval.codebase.sources import is_code

    if not TOKENIZER.exists():
        print(f"(no tokenizer at {TOKENIZER}: chunk boundaries not measured)")
        return
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    print("\n| budget | chunking s | tokens | files split | definitions | in split files | larger than a chunk | "
          "fit but cut | cut share | chunk ends inside a function | inside one that fits a chunk |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for budget in budgets:
        started = time.perf_counter()
        chunked = {path: chunk_text(text, tokenizer, budget, is_code(path)) for path, text in texts}
        seconds = time.perf_counter() - started
        tokens = sum(c.tokens for chunks in chunked.values() for c in chunks)
        stats = Counter()
        for path, text in texts:
            chunks, defs = chunked[path], [d for d in found[path] if d.kind in BODIES]
            stats["definitions"] += len(defs)
            if len(chunks) < 2:
                continue
            stats["split"] += 1
            fits = _fits(tokenizer, text.split("\n"), budget)

            for d in defs:
                stats["in split"] += 1
                if any(c.start_line <= d.start_line and d.end_line <= c.end_line for c in chunks):
                    continue
                stats["cut" if fits(d) else "too large"] += 1
            functions = [d for d in defs if d.kind in ("function", "method")]
            for c in chunks[:-1]:
                stats["ends"] += 1
                inside = [d for d in functions if d.start_line <= c.end_line < d.end_line]
                stats["ends inside"] += bool(inside)
                stats["ends inside fitting"] += any(fits(d) for d in inside)
        fit = stats["in split"] - stats["too large"]
        print(f"| {budget} | {seconds:.1f} | {tokens:,} | {stats['split']:,} | {stats['definitions']:,} | "
              f"{stats['in split']:,} | {stats['too large']:,} | {stats['cut']:,} | "
              f"{stats['cut'] / max(fit, 1):.1%} | {stats['ends inside']:,}/{stats['ends']:,} | "
              f"{stats['ends inside fitting']:,} |")
        print(f"  symbol extraction took {symbol_seconds:.1f} s = {symbol_seconds / max(seconds, 1e-9):.0%} of "
              f"chunking ({seconds:.1f} s); at 337 tokens/s (ModernBERT-base on these 2 cores, README) the "
              f"encoder would take {tokens / 337 / 3600:.1f} h: extraction is "
              f"{symbol_seconds / (tokens / 337):.4%} of it")


def _fits(tokenizer, lines: list[str], budget: int):
    """Whether a definition's own text fits ``budget`` tokens (each counted once)."""
    sizes: dict = {}

    def fits(d) -> bool:
        if d not in sizes:
            text = "\n".join(lines[d.start_line - 1:d.end_line])
            sizes[d] = len(tokenizer.encode(text, add_special_tokens=False).ids)
        return sizes[d] <= budget

    return fits


if __name__ == "__main__":
    main()
