"""The project's one atomic write of a whole file: every file that is replaced in place (an index's config.json, a
cached encoding, a pipeline part, a training log) goes through it, so that a crash never leaves a partial file."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` whole or not at all: ``write`` fills a temporary file beside it, which is fsynced and
    renamed over ``path``, and the folder is fsynced so that the rename survives a power loss. A crash leaves the
    old file (or none), never a partial one; the temporary file is removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # open() keeps the umask's mode
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, value: Any) -> None:
    """``value`` as indented JSON, through ``atomic_write``."""
    atomic_write(path, lambda f: f.write(json.dumps(value, indent=2).encode() + b"\n"))


def fsync_dir(folder: str | Path) -> None:
    """Make a folder's entries (a new or renamed file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
