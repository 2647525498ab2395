"""``mret eval`` and ``mret datasets``: the evaluation harness and the offline benchmark builders on the command
line. Imports stay inside the commands so that ``mret --help`` starts fast."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .console import KindChoice, ModeChoice, err, fail
from .embed import DEVICE_HELP, DTYPE_HELP
from .distributed import RAY_HELP


class Target(str, Enum):
    beir = "beir"
    mldr = "mldr"
    codesearchnet = "codesearchnet"
    folder = "folder"


class IndexKind(str, Enum):
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"
    plaid = "plaid"


METRICS = (("ndcg@10", "nDCG@10"), ("recall@100", "Recall@100"), ("mrr@10", "MRR@10"), ("map", "MAP"))


def eval_command(
    target: Target = typer.Argument(..., help="beir | mldr | codesearchnet | folder (any BEIR-layout folder)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help=(
        "A local folder, or a name to download: a BEIR dataset (scifact, nfcorpus, ...), an MLDR language (en), "
        "a CoIR task (codesearchnet: cosqa, apps, ...).")),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model folder or hub id (not used by --mode "
                                        "lexical)."),
    mode: ModeChoice = typer.Option(ModeChoice.semantic, "--mode", help=(
        "semantic: the model; lexical: BM25 (no model); hybrid: both, fused as `mret search` fuses them.")),
    kind: KindChoice = typer.Option("dense", "--kind", help="dense: one vector per text; colbert: one per token."),
    index: IndexKind = typer.Option(IndexKind.flat, "--index", help=(
        "flat = exact (FAISS flat, or exhaustive MaxSim for colbert); hnsw, ivfpq (dense); plaid (colbert).")),
    split: str = typer.Option("test", "--split", help="Which qrels split to score."),
    max_length: int = typer.Option(None, "--max-length", help=(
        "Document tokens kept (0: the model's maximum, 8192 for ModernBERT). Default: the model's own setting; "
        "for mldr, the maximum.")),
    output: Path = typer.Option(None, "--output", "-o", help="Folder for run.trec and metrics.json "
                                "(default: runs/<dataset>-<split>-<model>-<kind>-<index>)."),
    token_embeddings: bool = typer.Option(False, "--token-embeddings", help=(
        "With --kind colbert: use any encoder's own token vectors as a multi-vector model (an untrained baseline).")),
    language: str = typer.Option(None, "--language", help="codesearchnet: the language (default: the files' "
                                 "prefix, else python); mldr: the language (default: from a mldr-v1.0-XX folder, "
                                 "else en). One the data contradicts is an error."),
    nbits: int = typer.Option(2, "--nbits", help="PLAID residual bits: 1, 2 or 4."),
    pool_factor: int = typer.Option(1, "--pool-factor", help=(
        "With --kind colbert: pool each document's token vectors to about 1/N of them (PyLate's pool_factor: "
        "hierarchical clustering, [CLS] kept); 1 keeps them all.")),
    depth: int = typer.Option(100, "--depth", help="Documents retrieved per query (at least 100)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP + " Default float32: the model's own figures."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Downloads, embeddings and indexes "
                                   "(default: $MRET_CACHE_DIR or ~/.cache/modernretrieval)."),
    ray: Optional[str] = typer.Option(None, "--ray", help=RAY_HELP),
    shards: int = typer.Option(2, "--shards", help="With --ray: the index in this many shards, one actor each."),
    keep_own_ids: bool = typer.Option(False, "--keep-own-ids", help=(
        "Score a document whose id is the query's own id. By default it is dropped from the query's results, as "
        "BEIR does (its published numbers were computed so); a warning counts the queries judged on their own id.")),
) -> None:
    """Evaluate a model + index on a retrieval benchmark: nDCG@10, Recall@100, MRR@10, MAP (pytrec_eval)."""
    from modernretrieval.files import cache_root
    from eval.runner import EvalSettings, run_eval

    cache = cache_dir or cache_root()
    if nbits not in (1, 2, 4):
        fail(f"--nbits must be 1, 2 or 4, got {nbits}")
    if model is None and mode is not ModeChoice.lexical:
        fail(f"--model is needed for --mode {mode.value}")
    model = model or "bm25"
    if mode is not ModeChoice.lexical:
        from retrieval.heads.precision import check

        check(device, dtype)  # a bad --device/--dtype fails before the dataset is read or downloaded
    if max_length is None and target is Target.mldr:
        max_length = 0  # long documents: never cut at the model's short default
    settings = EvalSettings(model=model, kind=kind.value, index=index.value, max_length=max_length,
                            token_embeddings=token_embeddings, depth=depth, nbits=nbits, mode=mode.value,
                            pool_factor=pool_factor, device=device, dtype=dtype, keep_own_ids=keep_own_ids,
                            split=split)
    settings.check()  # a settings mistake fails before the dataset is read or downloaded
    data = load_target(target, dataset, split, language, cache)
    name = "bm25" if mode is ModeChoice.lexical else f"{Path(model.rstrip('/')).name}-{kind.value}-{index.value}"
    name += f"-pool{pool_factor}" if pool_factor != 1 else ""
    name += f"-{dtype}" if dtype != "float32" and mode is not ModeChoice.lexical else ""
    suffix = "-hybrid" if mode is ModeChoice.hybrid else ""
    output = output or Path("runs") / _slug(f"{data.name}-{split}-{name}{suffix}")
    what = "BM25 (lexical)" if mode is ModeChoice.lexical else f"model {model}, {kind.value}, index {index.value}" + (
        ", fused with BM25" if mode is ModeChoice.hybrid else "")
    err.print(f"{data.name} ({split}): {len(data.queries):,} queries, {len(data.corpus):,} documents; {what}",
              highlight=False)
    if ray is None:
        record = run_eval(data, settings, output, cache, show_progress=True)
    else:
        from .distributed import ray_eval

        record = ray_eval(data, settings, output, cache, ray, shards)
    print_report(record, output)


def load_target(target: Target, dataset: str, split: str, language: str | None, cache: Path):
    """The dataset as a BeirDataset: a local folder in the target's layout, or a name downloaded into ``cache``."""
    from eval.datasets.beir import DatasetError, find_file, load_beir

    local = Path(dataset).expanduser()
    if target is Target.folder:
        if not local.is_dir():
            raise DatasetError(f"{dataset} is not a folder (mret eval folder reads a BEIR-layout folder)")
        return load_beir(local, split)
    if target is Target.beir:
        if local.is_dir():
            return load_beir(local, split)
        from eval.datasets.download import fetch_beir

        return load_beir(fetch_beir(dataset, cache, show_progress=True), split, name=dataset)
    if target is Target.mldr:
        from eval.datasets.mldr import download_mldr, load_mldr

        if local.is_dir():
            return load_mldr(local, language, split)  # the language from a mldr-v1.0-XX folder, else en
        if language is not None and language != dataset:  # `--dataset de --language en`: which one was meant?
            raise DatasetError(f"--dataset {dataset} names MLDR's language; --language {language} disagrees")
        return load_mldr(download_mldr(cache / "datasets", dataset), dataset, split)
    from eval.datasets.codesearchnet import download_coir, load_codesearchnet, load_coir

    if not local.is_dir():  # a CoIR task name
        return load_coir(download_coir(dataset, cache / "datasets"), split)
    if find_file(local, "corpus.jsonl") or any(local.rglob("*.parquet")):
        return load_coir(local, split)
    return load_codesearchnet(local, language, split)  # the language from the files' prefix, else python


def print_report(record: dict, output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    settings, dataset = record["settings"], record["dataset"]
    table = Table(title=f"{dataset['name']}: {record['num_queries']} queries, {dataset['documents']:,} documents"
                        f" | {settings['model']} | {settings['kind']} | {settings['index']}", title_justify="left")
    table.add_column("metric")
    table.add_column("ours", justify="right")
    table.add_column("published", justify="right")
    table.add_column("source of the published number")
    for key, label in METRICS:
        references = [p for p in record["published"] if p["metric"] == key] or [None]
        for number, reference in enumerate(references):
            table.add_row(label if number == 0 else "", f"{record[key]:.4f}" if number == 0 else "",
                          f"{reference['value']:.4f}" if reference else "-",
                          _source(reference) if reference else "")
    console = Console(emoji=False)  # names and paths are printed as they are
    console.print(table)
    timings = record["timings"]
    speed = f" ({record['tokens_per_s']:,.0f} tokens/s)" if record.get("tokens_per_s") else ""
    work = (f"encoding {timings['encoding_total_s']} s{speed}, index {timings['index_s']} s, "
            if "encoding_total_s" in timings else "")
    console.print(f"{work}search {timings['search_ms_per_query']} ms/query; wrote {output / 'run.trec'} and "
                  f"{output / 'metrics.json'}", highlight=False)


def _source(reference: dict) -> str:
    """Where a published number comes from and how it was made; a number not like ours says so first."""
    text = f"{reference['source']} ({reference['setting']})"
    return f"{reference['note']} -- {text}" if reference.get("note") else text


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# ----- mret datasets: the offline benchmarks, built from text already on this machine
DATASETS_HELP = "Build offline benchmarks (BEIR layout) from text already on this machine."


def pycode_command(
    output: Path = typer.Argument(..., help="Folder to write (BEIR layout)."),
    source: list[Path] = typer.Option(None, "--source", help="Python source folders or files (default: the "
                                      "standard library of this Python)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of packages in the test split."),
) -> None:
    """A CodeSearchNet-style set: docstring's first paragraph -> its function (docstring removed)."""
    from eval.datasets.offline_code import build_code_dataset

    for path in source or []:
        if not path.exists():
            fail(f"--source {path} does not exist")
    info = build_code_dataset(output, list(source) if source else None, test_fraction=test_fraction,
                              show_progress=True)
    err.print(f"wrote {output}: {_counts(info)}", highlight=False)


def manpages_command(
    output: Path = typer.Argument(..., help="Folder to write (BEIR layout)."),
    max_documents: int = typer.Option(None, "--max-documents", help="Render at most this many pages."),
    max_queries: int = typer.Option(500, "--max-queries", help="Queries kept (all long pages stay as corpus)."),
) -> None:
    """A long-document set (MLDR-like) from the man pages installed here: a sentence from deep inside a page is the
    query, removed from its page."""
    from eval.datasets.offline_docs import build_manpage_dataset

    info = build_manpage_dataset(output, max_documents=max_documents, max_queries=max_queries, show_progress=True)
    err.print(f"wrote {output}: {_counts(info)}", highlight=False)


def _counts(info: dict) -> str:
    counts = info.get("counts", info)
    return ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, (int, float)))
