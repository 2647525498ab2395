"""Keep a tree's index in step with the tree: file events (watchfiles) are gathered while they keep coming (a burst
of saves, a ``git checkout``) and then become one incremental run (``Retriever.index``: only changed files are read
and encoded, each batch one commit), so searches keep answering from the last commit throughout.

Events that cannot change the index never start a run: anything in the index folder, version-control, dependency,
cache and build folders (the folders the indexer never enters) is filtered out as the event arrives; of the rest, a
path counts only if the indexer lists it now (git's list or the walk, .mretignore applied) or the index holds it
(a deletion, the old name of a rename). A changed ``.gitignore``/``.mretignore`` always counts: it changes the list.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ..codebase.indexing import IndexSummary
from ..codebase.sources import EXCLUDED_DIRS, files_under, walk
from .service import IndexingStopped, TreeService

log = logging.getLogger("mret.watch")
QUIET_MS = 100  # a run starts once no event has come for this long...
MAX_GATHER_MS = 1600  # ...or when events have kept coming for this long
IGNORE_FILES = (".gitignore", ".mretignore")


class TreeWatcher:
    """Watch ``service``'s tree in a thread; ``runs`` counts the indexing runs it made (the first, at start, too)."""

    def __init__(self, service: TreeService, on_run: Callable[[IndexSummary], None] | None = None,
                 quiet_ms: int = QUIET_MS, max_gather_ms: int = MAX_GATHER_MS):
        self.service = service
        self.retriever = service.retriever
        self.root = Path(self.retriever.root).resolve()
        self.index_dir = Path(self.retriever.index_dir).resolve()
        self.on_run, self.quiet_ms, self.max_gather_ms = on_run, quiet_ms, max_gather_ms
        self.runs = 0
        self.ready = threading.Event()  # watching, and the index caught up with the tree once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching. A run under way stops at its next safe point (between two commits; the next run encodes
        the rest) and is waited for, however long that batch takes: the caller closes the index once this returns,
        and closing it under the run would end the run in an error."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        import watchfiles

        changes_seen = watchfiles.watch(self.root, watch_filter=self._watched, debounce=self.max_gather_ms,
                                        step=self.quiet_ms, stop_event=self._stop, rust_timeout=200,
                                        yield_on_timeout=True, raise_interrupt=False)
        for changes in changes_seen:  # the first yield (a timeout or events) means the watcher is installed
            if not self.ready.is_set():
                self.sync()  # whatever changed before the watcher was installed
                self.ready.set()
            elif changes:
                paths = {self._relative(path) for _, path in changes}
                if self.matters(paths):
                    log.info("changed: %s", ", ".join(sorted(paths)[:5]) + (" ..." if len(paths) > 5 else ""))
                    self.sync()

    def _watched(self, change: object, path: str) -> bool:
        """Cheap, per event: nothing in the index folder or in folders the indexer never enters."""
        absolute = Path(path)
        if absolute == self.index_dir or self.index_dir in absolute.parents:
            return False
        try:
            parts = absolute.relative_to(self.root).parts
        except ValueError:
            return False
        return not any(part in EXCLUDED_DIRS or part.endswith(".egg-info") for part in parts)

    def _relative(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def matters(self, paths: set[str]) -> bool:
        """Whether any of ``paths`` (relative) is, or was, part of the index: only then is a run worth starting."""
        if any(Path(p).name in IGNORE_FILES for p in paths):
            return True
        listed = {f.path for f in walk(self.root, exclude=[self.index_dir]).files}
        if paths & listed:
            return True
        known = self.retriever.vectors.store.sources()
        return any(next(files_under(known, p), None) is not None for p in paths)

    def sync(self) -> IndexSummary | None:
        """One incremental run (one at a time in this process); a failure is logged and the next change retries."""
        with self.service.index_lock:
            try:
                summary = self.service.index(stop=self._stop)
            except IndexingStopped:  # stop(): a shutdown, not a failure
                log.info("indexing stopped for the shutdown; the next run goes on from its last commit")
                return None
            except Exception as error:  # e.g. `mret index` holds the write lock: the next event tries again
                log.warning("indexing after a change failed: %s", error)
                return None
            self.runs += 1
        log.info("index updated: %d files encoded, %d removed", summary.encoded_files, summary.removed_files)
        if self.on_run is not None:
            self.on_run(summary)
        return summary
