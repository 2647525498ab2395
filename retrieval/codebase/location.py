"""Where an index folder is and what it is called, in a module that imports nothing heavy: the command line's warm
path (serve/warm.py) finds a running server's index without loading the indexes or the model."""

from __future__ import annotations

from pathlib import Path

CONFIG, INDEX, LAST_RUN = "config.json", "index", "last_run.json"
INDEX_DIR_NAME = ".mret"


def find_index_dir(start: str | Path = ".") -> Path | None:
    """The nearest ``.mret`` index folder at or above ``start`` (as git finds .git)."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / INDEX_DIR_NAME / CONFIG).exists():
            return folder / INDEX_DIR_NAME
    return None
