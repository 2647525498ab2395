"""What every ``mret`` command shares: the error console, the one-line failure, the --kind choice, and the one place
where the project's errors become messages."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from encoder.errors import ModelLoadError
from modernretrieval.errors import ModernRetrievalError
from retrieval.fusion import MODES
from retrieval.kinds import KINDS

err = Console(stderr=True, emoji=False)  # ":fire:" in a path or message stays as it is

KindChoice = Enum("KindChoice", {kind: kind for kind in KINDS}, type=str)  # --kind, from the heads' one list
KindChoice.__doc__ = "dense: one vector per text; colbert: one per token."
ModeChoice = Enum("ModeChoice", {mode: mode for mode in MODES}, type=str)  # --mode, from fusion.py's one list
ModeChoice.__doc__ = "hybrid: embeddings and BM25 fused; semantic: embeddings; lexical: BM25."

Command = TypeVar("Command", bound=Callable[..., object])


def fail(message: str) -> NoReturn:
    """A user mistake: one red line on stderr (greppable, no traceback) and exit code 2."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # paths may hold [..]
    raise typer.Exit(2)


def message_for(error: ModernRetrievalError) -> str:
    """The line a user reads for an error they can fix."""
    from indexes import IndexCorruptError  # here: faiss is not loaded for `mret --help`

    if isinstance(error, ModelLoadError):
        return (f"{error} Pass a local model folder with --model (a sentence-transformers folder for --kind dense, "
                "a PyLate one for --kind colbert).")
    if isinstance(error, IndexCorruptError):  # (mret search/status/index/remove name the exact command)
        return f"{error}; the index is damaged: `mret index --rebuild PATH` builds it again from the files of PATH"
    return str(error)


@contextmanager
def user_errors() -> Iterator[None]:
    """Every ModernRetrievalError as one line and exit code 2; any other exception is a bug and keeps its
    traceback."""
    try:
        yield
    except ModernRetrievalError as error:
        fail(message_for(error))


def command(function: Command) -> Command:
    """A command whose user errors end as one line (applied to every command when the app is built)."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        with user_errors():
            return function(*args, **kwargs)

    return run  # type: ignore[return-value]
