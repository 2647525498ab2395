"""``mret index --rebuild``: a whole new index built beside the current one, swapped in when it is complete.

The way back from a damaged index (a truncated vector file, an unreadable database): the current vector folder is
never opened, only replaced. The settings come from config.json (model, kind, max length, dimension).

How the swap is made. config.json names the vector folder (``index`` as first created, ``index.<hex>`` after a
rebuild; a name is never used twice). A rebuild, holding ``rebuild.lock``:

1. deletes leftovers: vector folders that config.json does not name (a killed rebuild's partial folder, an old
   folder that a writer held when its rebuild ended);
2. creates ``index.<random hex>`` and indexes the tree into it, commit by commit as any run (the old folder serves
   searches meanwhile);
3. fsyncs the index folder (the new folder's entry), then rewrites config.json to name the new folder with
   ``atomic_write``: a temporary file, fsynced, renamed over config.json, the folder fsynced. That one rename is the
   swap: every process that reads config.json before it uses the old folder, every one after it the new one;
4. deletes the old folder, under its write lock (a writer holding it: the next run deletes it).

A kill before the rename leaves config.json naming the old folder, untouched (still searchable, or still reporting
the same damage); the next run deletes the partial folder (step 1). A kill after it leaves only a leftover.

Why not rename folders (``index`` -> ``index.old``, ``index.new`` -> ``index``)? POSIX ``rename(2)`` replaces a file,
or an empty folder, atomically, never a folder with files in it: swapping two trees takes two renames, with a moment
without ``index`` that every reader would have to recover from. Linux's ``renameat2(RENAME_EXCHANGE)`` swaps two
folders in one step but is neither POSIX nor in Python's ``os``; a symlink ``index -> index.<hex>`` replaced by a
rename is POSIX (not Windows, where symlinks need a privilege). All three keep the name ``.mret/index`` and change
what it means under a process that opened it before the swap: a writer still running would next collect "garbage"
in what is now the new folder (the files its older database does not know), destroying the new index. Folder names
that are never reused avoid that: a process that opened the old folder keeps writing there, harmlessly, until it
finds the folder gone. The design relies on POSIX in one more place: a folder whose files a reader still has open
or memory-mapped can be deleted (the files live on until closed); where it cannot (Windows), the deletion is left
to the next run.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .config import is_vector_folder

REBUILD_LOCK = "rebuild.lock"
REBUILD_WAIT = 10.0  # seconds a rebuild waits for a plain run to finish deleting leftovers
WRITE_LOCK = "write.lock"  # the vector index's own write lock (indexes.base.LOCK)


@contextmanager
def rebuild_lock(index_dir: Path, timeout: float) -> Iterator[bool]:
    """Hold ``rebuild.lock`` if it can be taken within ``timeout`` seconds; yields whether it was. A rebuild holds it
    throughout; a plain run only while it deletes leftovers (and skips that while a rebuild runs)."""
    lock = FileLock(str(index_dir / REBUILD_LOCK))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def fresh_name() -> str:
    """A vector folder name never used before."""
    return f"index.{secrets.token_hex(6)}"


def remove_leftovers(index_dir: Path, active: str) -> list[str]:
    """Delete the vector folders config.json does not name (``active``); call under ``rebuild_lock``. Returns the
    names deleted."""
    removed = []
    for entry in sorted(index_dir.iterdir()):
        leftover = entry.name != active and is_vector_folder(entry.name) and entry.is_dir() and not entry.is_symlink()
        if leftover and remove_folder(entry):
            removed.append(entry.name)
    return removed


def remove_folder(folder: Path) -> bool:
    """Delete a vector folder that config.json no longer names, unless a writer holds its write lock now (a run that
    opened it before a rebuild and is committing: it is deleted by a later run). Whether it was deleted."""
    lock = FileLock(str(folder / WRITE_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        lock.release()
    return not folder.exists()
