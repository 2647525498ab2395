"""The states an index passes through, as plain data: a segment of vectors, a batch of a stream, the snapshot
readers see of one committed generation, and a writer's pending transaction (base.py says how they are used)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .files import FileEntry
from .store import Document, Write

ExpectedTokens = int | Callable[[], int] | None  # an int, or an estimate made when it is needed


@dataclass
class Segment:
    """Vectors written by one commit. ``rows[i]`` is the global row of local item i; ``data`` is the subclass's."""

    id: int
    rows: np.ndarray
    files: dict[str, FileEntry]
    info: dict[str, Any] = field(default_factory=dict)
    data: Any = None


@dataclass(frozen=True, eq=False)
class Batch:
    """One change of a stream (``add_stream``): the documents ``remove`` out, then ``ids`` in with their
    ``embeddings`` (FAISS: an (n, dim) array; PLAID: one (n_tokens, dim) array per document) and ``documents``
    (default: bare ones). An id both removed and added is replaced. A plain ``(ids, embeddings)`` pair in a stream
    is read as ``Batch(ids, embeddings)``."""

    ids: Sequence[str] = ()
    embeddings: Any = ()
    documents: Sequence[Document] | None = None
    remove: Sequence[str] = ()


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One committed generation as readers see it. Built once and never changed (its arrays are read-only): a
    commit builds the next one and publishes it in one assignment, so a read that took a snapshot at its start sees
    one whole generation however many commits land meanwhile."""

    generation: int
    settings: dict[str, Any]
    shared_files: dict[str, FileEntry]
    shared: Any  # the subclass's shared files, opened (FAISS: the trained IVF-PQ; PLAID: the codec)
    segments: dict[int, Segment]
    row_of: dict[str, int]  # live document id -> row
    id_of: np.ndarray  # row -> document id (objects)
    alive: np.ndarray  # row -> True while its document is in the index
    next_row: int
    next_segment: int
    dead_rows: int  # rows of removed documents still stored in segments (until compact)


@dataclass
class Pending:
    """One open transaction: the snapshot it started from and every change staged on top of it until the commit.
    Everything a write step needs is here or in its parameters, never on the index object, so that a transaction in
    one thread and reads in others never see each other's half-done state."""

    base: Snapshot
    segments: list[tuple[Segment, list[str]]] = field(default_factory=list)  # new segments and their doc ids
    removed: set[str] = field(default_factory=set)
    dropped: list[int] = field(default_factory=list)  # segments replaced by a merge
    moved: dict[int, int] = field(default_factory=dict)  # old segment -> merged segment
    documents: dict[str, Document] = field(default_factory=dict)
    shared: dict[str, FileEntry] | None = None  # shared files written in this transaction (a trained codec)
    shared_data: Any = None  # ... and what they hold, as ``Snapshot.shared``
    settings: dict[str, Any] | None = None
    store_writes: list[Write] = field(default_factory=list)  # the store's writes made inside the transaction
    next_row: int = field(init=False)  # the rows and segment ids the next new segment takes
    next_segment: int = field(init=False)

    def __post_init__(self) -> None:
        self.next_row, self.next_segment = self.base.next_row, self.base.next_segment

    @property
    def current_settings(self) -> dict[str, Any]:
        return self.settings if self.settings is not None else self.base.settings

    @property
    def current_shared(self) -> Any:
        return self.shared_data if self.shared is not None else self.base.shared

    def empty(self) -> bool:
        return not (self.segments or self.removed or self.dropped or self.shared or self.settings
                    or self.store_writes)
