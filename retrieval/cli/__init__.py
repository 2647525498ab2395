"""The ``mret`` command line: the composition root, the only package that imports both the applications (the
codebase indexer, training) and the evaluation harness. User mistakes end in one red line and exit code 2, never a
traceback (``console.user_errors``, applied to every command here).

The app is built by ``build_app`` when asked for, not as a side effect of importing a module; ``mret search`` with a
warm server running is answered before the app (typer, rich) is even imported (fast.py)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


def build_app() -> typer.Typer:
    """A new Typer app with every command. Imports of the heavy layers stay inside the commands, so that
    ``mret --help`` starts fast."""
    import typer

    from .console import command
    from .embed import embed_command
    from .eval import DATASETS_HELP, eval_command, manpages_command, pycode_command
    from .index import index_command, remove_command, search_command, status_command
    from .serve import mcp_command, serve_command, stop_command, watch_command
    from .train import train_command

    app = typer.Typer(help="modernretrieval: ModernBERT embeddings and retrieval.", no_args_is_help=True,
                      pretty_exceptions_enable=False)
    for name, function in (("embed", embed_command), ("index", index_command), ("search", search_command),
                           ("status", status_command), ("remove", remove_command), ("train", train_command),
                           ("eval", eval_command)):
        app.command(name)(command(function))
    datasets = typer.Typer(help=DATASETS_HELP, no_args_is_help=True)
    datasets.command("pycode")(command(pycode_command))
    datasets.command("manpages")(command(manpages_command))
    for name, function in (("serve", serve_command), ("watch", watch_command), ("mcp", mcp_command),
                           ("stop", stop_command)):
        app.command(name)(command(function))
    app.add_typer(datasets, name="datasets")
    return app


def main() -> None:
    """The ``mret`` entry point."""
    from .fast import run_warm_search

    if run_warm_search(sys.argv[1:]):
        return
    build_app()()


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # ``from retrieval.cli import app`` (tests, python -m): a freshly built app
        return build_app()
    raise AttributeError(f"module 'retrieval.cli' has no attribute {name!r}")
