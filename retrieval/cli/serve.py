"""``mret serve``, ``mret watch``, ``mret mcp``, ``mret stop``: a warm, always-current index for tools
(retrieval/serve/). FastAPI, uvicorn, watchfiles and mcp come with the ``serve`` extra and are imported only by these
commands."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .console import KindChoice, err, fail
from .index import INDEX_DIR_HELP

PATH_HELP = "The indexed folder (default: the index found from here, as `mret search` finds it)."
EXTRA_HINT = 'these commands need the serve extra: pip install -e ".[serve]"'


def _need(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        fail(f"{module} is not installed; {EXTRA_HINT}")


def _tree_service(path: Optional[Path], index_dir: Optional[Path], model: Optional[str] = None,
                  kind: Optional[KindChoice] = None, create: bool = False):
    """The service for a tree: PATH (its index created when ``create``), or an existing index found from here."""
    from ..codebase.location import find_index_dir
    from ..serve.service import ServedRetriever, TreeService

    if path is not None:
        if not path.is_dir():
            fail(f"{path} is not a folder")
        retriever = ServedRetriever(path, index_dir, model, kind.value if kind else None, show_progress=False)
        if retriever.config is None and not create:
            fail(f"no index of {path} yet; run `mret index {path}` first (or `mret watch {path}`)")
        return TreeService(retriever)
    folder = index_dir or find_index_dir()
    if folder is None:
        fail("no .mret index here or in any parent folder; run `mret index PATH` first, or pass PATH or --index-dir")
    return TreeService(ServedRetriever.open(folder, show_progress=False))


def _indexes_first(path: Optional[Path], index_dir: Optional[Path], collection: Optional[Path], watch: bool) -> bool:
    """``mret serve PATH --watch`` on a tree without an index: the server indexes it before serving."""
    from ..codebase.location import CONFIG, INDEX_DIR_NAME

    return watch and collection is None and path is not None and not ((index_dir or path / INDEX_DIR_NAME)
                                                                      / CONFIG).exists()


def limit_threads(threads: int | None, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the server's OpenMP/BLAS thread count for every thread it will start (torch's and faiss's counts are
    per OS thread: ``torch.set_num_threads`` in the main thread leaves the batcher's and the request threads' at
    every core). None: 1 unless OMP_NUM_THREADS is set; 0: leave the libraries' defaults."""
    if threads == 0 or (threads is None and "OMP_NUM_THREADS" in environ):
        return
    if "torch" in sys.modules or "faiss" in sys.modules:  # too late for the environment (an in-process caller)
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        environ[name] = str(threads or 1)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def serve_command(
    path: Optional[Path] = typer.Argument(None, help=PATH_HELP),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help=INDEX_DIR_HELP),
    collection: Optional[Path] = typer.Option(None, "--collection", help=(
        "Serve a document collection in this folder instead of a tree (created on first use, with --model): "
        "POST /documents, DELETE /documents/ID, /search with a metadata filter.")),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The model of a new collection (or tree index)."),
    kind: Optional[KindChoice] = typer.Option(None, "--kind", help="dense or colbert, for a new collection."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (beyond loopback only with a key)."),
    port: int = typer.Option(8765, "--port", help="Port (0: any free port; the index folder's server.json names it)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="MRET_API_KEY", show_envvar=True, help=(
        "Require Authorization: Bearer KEY on every route but /health.")),
    watch: bool = typer.Option(False, "--watch", help="Keep the index in step with the tree as files change."),
    idle_exit: Optional[float] = typer.Option(None, "--idle-exit", hidden=True, help="Stop after this many idle seconds."),
    private: bool = typer.Option(False, "--private", hidden=True, help=(
        "Every route but /health needs the server file's token (the background server of mret search --keep-warm).")),
    threads: Optional[int] = typer.Option(None, "--threads", min=0, help=(
        "CPU threads of each model call and vector search (torch, faiss). Default 1 (or OMP_NUM_THREADS when set): "
        "concurrent searches are batched and spread over the cores, where more threads per call spin against each "
        "other (README: Speed). 0: the libraries' own default (every core).")),
) -> None:
    """Serve an index over HTTP (JSON; OpenAPI docs at /docs): one model loaded once, many concurrent searches."""
    if threads is None and _indexes_first(path, index_dir, collection, watch):
        threads = 0  # the first index of the tree is the work to speed up: every core (README: Threads)
    limit_threads(threads)  # before torch or faiss is imported: OpenMP reads it once, for every thread
    _need("fastapi")
    _need("uvicorn")
    from ..serve.runner import Server, check_bind
    from ..serve.service import CollectionService, open_service

    check_bind(host, api_key)  # before anything is loaded
    if not 0 <= port <= 65535:
        fail(f"--port must be between 0 and 65535, got {port}")
    _logging()
    if collection is not None:
        if path is not None or index_dir is not None or watch:
            fail("--collection serves a folder of documents: no PATH, --index-dir or --watch with it")
        service = open_service(collection=collection, model=model, kind=kind.value if kind else None)
        folder = collection
    else:
        service = _tree_service(path, index_dir, model, kind, create=watch)
        folder = service.retriever.index_dir
        if service.retriever.config is None:  # --watch on a tree not indexed yet: index it first
            err.print(f"indexing {escape(str(service.retriever.root))} first", highlight=False)
            service.retriever.index()

    def ready(url: str) -> None:
        what = "collection" if isinstance(service, CollectionService) else "index"
        err.print(f"serving the {what} {escape(str(Path(folder).resolve()))} on {url} (docs: {url}/docs)"
                  + ("; watching the tree" if watch else "") + (
                      "; API key required" if api_key else ""), highlight=False, soft_wrap=True)

    try:
        Server(service, host, port, api_key, Path(folder), idle_exit, watch, on_ready=ready, private=private).run()
    finally:
        service.close()


def watch_command(
    path: Path = typer.Argument(Path("."), help="The folder to keep indexed."),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help=INDEX_DIR_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model of a new index (as mret index)."),
    kind: Optional[KindChoice] = typer.Option(None, "--kind", help="dense or colbert, for a new index."),
) -> None:
    """Keep an index in step with its tree: index now, then after every burst of changes (one incremental run each;
    ignored files never start one). Ctrl-C stops."""
    _need("watchfiles")
    import threading

    from ..serve.watch import TreeWatcher

    _logging()
    service = _tree_service(path, index_dir, model, kind, create=True)

    def report(summary) -> None:
        err.print(f"{summary.files:,} files indexed; {summary.encoded_files:,} encoded, {summary.removed_files:,} "
                  f"removed in {summary.seconds:.2f} s", highlight=False)

    watcher = TreeWatcher(service, on_run=report)
    watcher.start()
    err.print(f"watching {escape(str(service.retriever.root))} (Ctrl-C stops)", highlight=False, soft_wrap=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
        service.close()


def mcp_command(
    path: Optional[Path] = typer.Argument(None, help=PATH_HELP),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help=INDEX_DIR_HELP),
) -> None:
    """An MCP server on stdin/stdout for coding agents: tools search, status and related (see README for the
    configuration snippets of Claude Code, Cursor, Codex...)."""
    _need("mcp")
    from ..serve.mcp_server import run_stdio

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # stdout is the protocol's
    service = _tree_service(path, index_dir)
    try:
        run_stdio(service)
    finally:
        service.close()


def stop_command(
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help=INDEX_DIR_HELP),
) -> None:
    """Stop the server running for an index (the background one of `mret search --keep-warm`, or `mret serve`)."""
    from ..serve.warm import find_index_dir, stop

    folder = index_dir or find_index_dir()
    if folder is None:
        fail("no .mret index here or in any parent folder; pass --index-dir")
    if not stop(folder):
        fail(f"no server is running for {folder}")
    err.print(f"stopped the server of {escape(str(folder))}", highlight=False)
