"""What every ``mret`` command shares: the error console, the one-line failure, the --kind choice."""

from __future__ import annotations

from enum import Enum
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)


class Kind(str, Enum):
    dense = "dense"
    colbert = "colbert"


def fail(message: str) -> NoReturn:
    """A user mistake: one red line on stderr (greppable, no traceback) and exit code 2."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # paths may hold [..]
    raise typer.Exit(2)
