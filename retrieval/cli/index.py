"""``mret index``, ``mret search``, ``mret status``, ``mret remove``: the command-line face of ``Retriever``."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .console import KindChoice, ModeChoice, err, fail
from .embed import DEVICE_HELP, DTYPE_HELP
from .distributed import RAY_HELP
from .search_output import print_hits

out = Console(highlight=False, soft_wrap=True, emoji=False)  # ":fire:" in a path stays as it is

INDEX_DIR_HELP = "Index folder (default: ROOT/.mret; for search/status/remove, the nearest .mret at or above here)."


def _open(index_dir: Optional[Path]):
    from ..codebase.retriever import Retriever

    folder = index_dir or Retriever.find()
    if folder is None:
        fail("no .mret index here or in any parent folder; run `mret index PATH` first, or pass --index-dir")
    return Retriever.open(folder)


def rebuild_command(retriever) -> str:
    """The command that rebuilds this retriever's index, to paste as it is."""
    from ..codebase.config import INDEX_DIR_NAME

    command = f"mret index --rebuild {shlex.quote(str(retriever.root))}"
    if Path(retriever.index_dir).resolve() != Path(retriever.root) / INDEX_DIR_NAME:
        command += f" --index-dir {shlex.quote(str(Path(retriever.index_dir).resolve()))}"
    return command


@contextmanager
def damage_named(retriever) -> Iterator[None]:
    """A damaged index as one line that names the damaged file and the exact command that rebuilds it."""
    from indexes import IndexCorruptError

    try:
        yield
    except IndexCorruptError as error:
        fail(f"{error}; the index is damaged: `{rebuild_command(retriever)}` builds it again from the files")


def index_command(
    path: Path = typer.Argument(Path("."), help="The folder to index (the root: paths are stored relative to it)."),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help=INDEX_DIR_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=(
        "Model folder or hub id (default: Alibaba-NLP/gte-modernbert-base for dense, "
        "lightonai/GTE-ModernColBERT-v1 for colbert). Fixed when the index is created.")),
    kind: Optional[KindChoice] = typer.Option(None, "--kind", help="dense (one vector per chunk) or colbert (per token)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help=(
        "Tokens per chunk, special tokens included (default: the model's maximum, 8192 for ModernBERT).")),
    files_from: Optional[Path] = typer.Option(None, "--files-from", help=(
        "Index exactly the files listed in this file (one path per line, or NUL-separated as `git ls-files -z` "
        "prints them; relative to PATH; '-' reads stdin) "
        "instead of walking PATH; indexed files not in the list are removed.")),
    max_file_kb: int = typer.Option(1024, "--max-file-kb", help="Skip files larger than this."),
    pool_factor: Optional[int] = typer.Option(None, "--pool-factor", help=(
        "With --kind colbert: pool each chunk's token vectors to about 1/N of them (PyLate's pool_factor: "
        "hierarchical clustering, [CLS] kept; default 1, none). Fixed when the index is created.")),
    rebuild: bool = typer.Option(False, "--rebuild", help=(
        "Index everything again into a new index beside the current one, with its settings, and swap it in when "
        "complete (the way back from a damaged index; the current one serves searches until then).")),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP + " A run setting: an index built in one is "
                              "searched in any other."),
    ray: Optional[str] = typer.Option(None, "--ray", help=RAY_HELP),
) -> None:
    """Index a folder (incremental: only new and changed files are encoded; safe to interrupt and run again).
    Inside a git work tree the files are the ones git lists (its ignore files, .git/info/exclude and your global
    excludes apply); .mretignore files exclude more."""
    from ..codebase.retriever import Retriever

    if not path.is_dir():
        fail(f"{path} is not a folder")
    files = None
    if files_from is not None:
        if str(files_from) != "-" and not files_from.is_file():
            fail(f"--files-from {files_from}: no such file")
        raw = sys.stdin.buffer.read() if str(files_from) == "-" else files_from.read_bytes()
        try:  # one path a line, or NUL-separated (`git ls-files -z`, `find -print0`): names may hold anything else
            files = raw.decode("utf-8").split("\0") if b"\0" in raw else raw.decode("utf-8").splitlines()
        except UnicodeDecodeError as error:
            fail(f"--files-from {files_from}: not UTF-8 (byte {error.start})")
    if max_file_kb < 1:
        fail("--max-file-kb must be at least 1")
    retriever = Retriever(path, index_dir, model, kind.value if kind else None, max_length,
                          max_file_bytes=max_file_kb * 1024, pool_factor=pool_factor, device=device, dtype=dtype)
    if rebuild and retriever.config is not None:
        err.print(f"rebuilding {escape(str(retriever.index_dir))} beside the current index, which stays in use until "
                  "the new one is complete", highlight=False, soft_wrap=True)
    with retriever, damage_named(retriever):
        if ray is None:
            summary = retriever.index(files, rebuild=rebuild)
        else:
            from .distributed import ray_encoder

            with ray_encoder(retriever, ray, device, dtype) as encoder:
                retriever.settings.encode = encoder
                summary = retriever.index(files, rebuild=rebuild)
    err.print(f"[bold]{summary.files:,} files, {summary.chunks:,} chunks[/bold] indexed in "
              f"{escape(str(retriever.index_dir))}; "
              f"this run: {summary.encoded_files:,} files encoded ({summary.encoded_chunks:,} chunks, "
              f"{summary.encoded_tokens:,} tokens, {summary.encoded_tokens / max(summary.encode_seconds, 1e-9):,.0f} tokens/s encoding), "
              f"{summary.unchanged_files:,} unchanged, {summary.removed_files:,} removed, {summary.seconds:.1f} s"
              + ("; files as git lists them" if summary.lister == "git" else ""), highlight=False, soft_wrap=True)
    if summary.skipped:
        err.print("skipped: " + ", ".join(f"{reason} {count:,}" for reason, count in summary.skipped.items()),
                  highlight=False, soft_wrap=True)


def search_command(
    query: str = typer.Argument(..., help="What to look for, in words."),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help=INDEX_DIR_HELP),
    k: int = typer.Option(10, "-k", "--top-k", help="How many results."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {path, start_line, end_line, score, "
                                 "snippet} (paths relative to the indexed root)."),
    path_glob: Optional[list[str]] = typer.Option(None, "--path-glob", "-g", help=(
        "Only paths matching this gitignore-style pattern ('*.py', 'src/**'); repeat for several.")),
    file_type: Optional[list[str]] = typer.Option(None, "--type", "-t", help=(
        "Only this language or extension (python, md, ...); repeat for several.")),
    mode: ModeChoice = typer.Option(ModeChoice.hybrid, "--mode", help=(
        "hybrid: the embedding ranking fused with BM25 over paths, defined names and text; semantic or lexical: "
        "one of them.")),
    per_file: int = typer.Option(0, "--per-file", help=(
        "At most this many chunks of one file in the results (0: no limit).")),
    full: bool = typer.Option(False, "--full", help=(
        "Print each hit's whole chunk (its lines in the file) instead of its best-matching part and a snippet.")),
    keep_warm: bool = typer.Option(False, "--keep-warm", help=(
        "Leave a server running in the background for this index, so that the next searches answer at once "
        "(it stops after 15 idle minutes; `mret stop` ends it).")),
) -> None:
    """Search an index: the best chunks as path:start-end, score and a snippet."""
    if k < 1:
        fail("-k must be at least 1")
    if per_file < 0:
        fail("--per-file must be 0 (no limit) or more")
    from ..serve.warm import start_background, warm_search  # standard library only

    # a server running for this index answers (--full needs whole chunks, which it does not send; --per-file a rule
    # it does not take)
    hits = None if full or per_file else warm_search(index_dir, query, k, path_glob, file_type, mode.value)
    if hits is None:
        with _open(index_dir) as retriever, damage_named(retriever):
            from ..codebase.ranking import Rules

            hits = retriever.search(query, k=k, path_glob=path_glob, file_type=file_type, mode=mode.value,
                                    rules=Rules(per_file=per_file))
        if keep_warm:
            start_background(retriever.index_dir)
    print_hits(hits, query, as_json, full)


def status_command(
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help=INDEX_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """What an index holds: its root, model, files, chunks, tokens, languages, size on disk, last run."""
    with _open(index_dir) as retriever, damage_named(retriever):
        status = retriever.status()
    if as_json:
        out.print_json(json.dumps(status))
        return
    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # a long path wraps whole on a terminal, never cropped with "…"
    last = status["last_run"] or {}
    rows = {
        "root": status["root"], "index": status["index_dir"], "model": f"{status['model']} ({status['kind']}, "
        f"chunks up to {status['max_length']:,} tokens)",
        "indexed": f"{status['files']:,} files, {status['chunks']:,} chunks, {status['tokens']:,} tokens"
                   + (f"; {status['chunks'] - status['pending_chunks']:,} chunks encoded, {status['pending_chunks']:,} "
                      "searchable by text only until `mret index` encodes them" if status["pending_chunks"] else ""),
        "languages": ", ".join(f"{lang} {n:,}" for lang, n in list(status["languages"].items())[:8]) or "-",
        "on disk": f"{status['bytes_on_disk'] / 2**20:,.1f} MiB",
        "last run": (f"{last.get('encoded_files', 0):,} files encoded, {last.get('unchanged_files', 0):,} unchanged, "
                     f"{last.get('removed_files', 0):,} removed in {last.get('seconds', 0):.1f} s") if last else "-",
    }
    if not out.is_terminal:  # piped: whole `name: value` lines, never a path cropped to the table's width
        sys.stdout.write("".join(f"{name}: {value}\n" for name, value in rows.items()))
        sys.stdout.flush()
        return
    for name, value in rows.items():
        table.add_row(f"[bold]{name}[/bold]", escape(value))  # paths may hold [..]
    out.print(table)


def remove_command(
    path: str = typer.Argument(..., help="A file or folder (relative to here or to the indexed root)."),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help=INDEX_DIR_HELP),
) -> None:
    """Remove a file, or everything under a folder, from the index (add it to .mretignore to keep it out)."""
    if not path.strip():  # Path("") is "." (the root): an empty variable must not empty the index
        fail("remove needs a file or folder, got an empty path")
    with _open(index_dir) as retriever, damage_named(retriever):
        files, chunks = retriever.remove(path, whole_root=False)
    err.print(f"removed {files:,} files ({chunks:,} chunks); `mret index` takes them back unless .gitignore or "
              ".mretignore excludes them", highlight=False, soft_wrap=True)


