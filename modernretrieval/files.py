"""The project's one atomic write of a whole file: every file that is replaced in place (an index's config.json, a
cached encoding, a pipeline part, a training log) goes through it, so that a crash never leaves a partial file. And the
one measure of a folder's size that a writer deleting files at the same time cannot break."""

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


def folder_bytes(*paths: str | Path) -> int:
    """Bytes of the files in ``paths`` (folders walked, files counted). Files that vanish while they are counted (a
    writer collecting an index's old files, SQLite removing its journal) are skipped: a reader may size an index that
    another process is committing to."""
    total = 0
    for path in paths:
        entries = [Path(root) / name for root, _, names in os.walk(path) for name in names] if Path(path).is_dir() \
            else [Path(path)]
        for entry in entries:
            try:
                total += entry.stat().st_size
            except FileNotFoundError:
                pass
    return total


def cache_root() -> Path:
    """Where downloads and remembered measurements live: $MRET_CACHE_DIR, else $XDG_CACHE_HOME/modernretrieval,
    else ~/.cache/modernretrieval."""
    if os.environ.get("MRET_CACHE_DIR"):
        return Path(os.environ["MRET_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "modernretrieval"
