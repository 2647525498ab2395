"""What a server serves, behind one small interface for the HTTP app and the MCP tools: a tree's index
(``TreeService``, a ``Retriever``) or a document collection (``CollectionService``). Both load one model, once,
whose single-query encodings are batched across threads (batching.py)."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

from ..codebase.config import RetrieverError
from ..codebase.indexing import IndexSummary
from ..codebase.retriever import Retriever
from .batching import BatchingHead
from .collection import Collection, DocumentIn


class Unsupported(RetrieverError):
    """An operation this kind of index does not have (documents posted to a tree's index)."""


class IndexingStopped(Exception):
    """A run of ``TreeService.index`` stopped between two commits because it was asked to (a shutdown): what it
    committed stays, and the next run encodes the rest (a stopped run is like a killed one, without the kill)."""


class Service(Protocol):
    kind: str  # "tree" | "collection"

    def search(self, query: str, k: int, mode: str | None = None, path_glob: Any = None, file_type: Any = None,
               filter: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def status(self) -> dict[str, Any]: ...

    def put(self, documents: list[DocumentIn]) -> int: ...

    def delete(self, doc_id: str) -> bool: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


class ServedRetriever(Retriever):
    """A Retriever whose model batches single-query encodings: ``search`` (every mode) is the Retriever's own."""

    def _load_model(self):  # type: ignore[override]
        return BatchingHead(super()._load_model())


class TreeService:
    """A tree's index: search results as ``mret search --json`` prints them (plus the snippet's first line)."""

    kind = "tree"

    def __init__(self, retriever: Retriever):
        self.retriever = retriever
        # one indexing run of this process at a time (watch, MCP refresh); reentrant: the watcher counts its runs
        # under it, around ``index()``, which takes it too
        self.index_lock = threading.RLock()
        self._closing = threading.Event()

    def index(self, stop: threading.Event | None = None) -> IndexSummary:
        """One incremental run under ``index_lock`` that stops at its next safe point once ``stop`` is set or
        ``close()`` begins, raising IndexingStopped: the check comes before each batch is encoded, so the run ends
        between two commits, and a shutdown waits for one batch at most, not a whole run (a ``git checkout``'s)."""

        def stopping() -> bool:
            return self._closing.is_set() or (stop is not None and stop.is_set())

        with self.index_lock:
            if stopping():
                raise IndexingStopped("stopped before it started")
            settings = self.retriever.settings
            before_batch = settings.before_batch

            def check() -> None:
                if stopping():  # raised just before the run encodes its next batch: between two commits
                    raise IndexingStopped("stopped before its next batch")
                if before_batch is not None:
                    before_batch()

            settings.before_batch = check
            try:
                return self.retriever.index()
            finally:
                settings.before_batch = before_batch

    def search(self, query: str, k: int, mode: str | None = None, path_glob: Any = None, file_type: Any = None,
               filter: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if filter:
            raise Unsupported("filter applies to document collections; a tree's index takes path_glob and type")
        with _searching(self.retriever.model, mode):
            hits = self.retriever.search(query, k=k, path_glob=path_glob, file_type=file_type, mode=mode or "hybrid")
        return [{**hit.to_json(), "snippet_line": hit.snippet_line} for hit in hits]

    def status(self) -> dict[str, Any]:
        return self.retriever.status()

    def put(self, documents: list[DocumentIn]) -> int:
        raise Unsupported("this server indexes a tree: its documents are the tree's files (serve a collection "
                          "with `mret serve --collection DIR` to post documents)")

    def delete(self, doc_id: str) -> bool:
        raise Unsupported("this server indexes a tree: remove files with `mret remove PATH`")

    def warm_up(self) -> None:
        """Load the model and open the index now, not on the first request."""
        self.retriever.model.encode_queries(["warm up"])
        self.retriever.vectors.stats()

    def close(self) -> None:
        """Stop this process's indexing run (``index()``) at its next batch and wait for it: the index is never closed
        under a writer, which would end the run in an error."""
        self._closing.set()
        with self.index_lock:
            self.retriever.close()
        _close_batcher(self.retriever._model)


class CollectionService:
    """A document collection (collection.py)."""

    kind = "collection"

    def __init__(self, collection: Collection):
        self.collection = collection

    def search(self, query: str, k: int, mode: str | None = None, path_glob: Any = None, file_type: Any = None,
               filter: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if path_glob or file_type:
            raise Unsupported("path_glob and type apply to a tree's index; filter a collection by its metadata")
        with _searching(self.collection.head, mode):
            return self.collection.search(query, k, filter, mode or "hybrid")

    def status(self) -> dict[str, Any]:
        return self.collection.status()

    def put(self, documents: list[DocumentIn]) -> int:
        return self.collection.put(documents)

    def delete(self, doc_id: str) -> bool:
        return self.collection.delete(doc_id)

    def warm_up(self) -> None:
        self.collection.head.encode_queries(["warm up"])

    def close(self) -> None:
        self.collection.close()
        _close_batcher(self.collection.head)


def _searching(head: Any, mode: str | None) -> Any:
    """A search in progress, for the batcher to wait for its query (a lexical search asks none; a plain head:
    nothing to tell)."""
    return head.searching() if isinstance(head, BatchingHead) and mode != "lexical" else nullcontext()


def _close_batcher(head: Any) -> None:
    if isinstance(head, BatchingHead):
        head.batcher.close()


def open_service(index_dir: Path | None = None, root: Path | None = None, collection: Path | None = None,
                 model: str | None = None, kind: str | None = None) -> Service:
    """The service for a collection folder, or for a tree's index (``root``, or an existing ``index_dir``)."""
    if collection is not None:
        return CollectionService(Collection(collection, model, kind, head_wrapper=BatchingHead))
    if root is None and index_dir is not None:
        return TreeService(ServedRetriever.open(index_dir, show_progress=False))
    return TreeService(ServedRetriever(root, index_dir, model, kind, show_progress=False))
