"""An index folder's configuration: what it indexes and with which model, fixed when the index is created.

An index folder (default ``ROOT/.mret``) holds ``config.json`` (this), the vector folder it names (``index/`` as
first created, ``index.<hex>/`` after a rebuild: a FaissIndex flat for dense, a PlaidIndex for colbert, each with its
SQLite store of chunks) and ``last_run.json`` (the last run's summary). ``config.json`` is written last when an index
is created: a folder that has it holds a whole (maybe empty) index. Rewriting it to name another vector folder is how
a rebuild swaps its new index in (rebuild.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from encoder.config import is_int
from indexes import FaissIndex, PlaidIndex
from modernretrieval.errors import ModernRetrievalError
from modernretrieval.files import atomic_write_json

from ..heads import KINDS, Kind
from .location import CONFIG, INDEX, INDEX_DIR_NAME, LAST_RUN, find_index_dir  # noqa: F401  (re-exported)

FORMAT = 1
PLAID_NBITS = 2


class RetrieverError(ModernRetrievalError, ValueError):
    """A user mistake (wrong folder, another model than the index's, an empty query): one clear message."""


@dataclass
class IndexConfig:
    """The keys of config.json, in its order."""

    format: int
    root: str  # the indexed tree, absolute
    model: str  # a local folder by its absolute path, or a hub id
    kind: Kind
    max_length: int  # tokens per chunk, as the model counts them
    max_length_setting: int  # what was asked for (0: the model's maximum)
    dim: int
    index: str = INDEX  # the vector folder, inside the index folder (older configs have no key: "index")
    pool_factor: int = 1  # colbert: documents' token vectors pooled to about 1/pool_factor (older configs: 1)

    @classmethod
    def read(cls, index_dir: Path) -> "IndexConfig | None":
        """The configuration of ``index_dir``, or None when it has none (not created yet)."""
        path = index_dir / CONFIG
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            config = cls(**{key: raw[key] for key in cls.__dataclass_fields__ if key not in ("index", "pool_factor")},
                         index=raw.get("index", INDEX), pool_factor=raw.get("pool_factor", 1))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RetrieverError(f"{path} is not a modernretrieval index configuration ({error!r})") from None
        if not is_int(config.format) or config.format < 1:
            raise RetrieverError(f"{path} has a format of {config.format!r}, not a modernretrieval index format")
        if config.format > FORMAT:  # read and rewritten here, its newer keys would be lost
            raise RetrieverError(f"{path} is format {config.format}, built by a newer modernretrieval (this one reads "
                                 f"format {FORMAT}); upgrade modernretrieval")
        for name, kind in (("max_length", int), ("max_length_setting", int), ("dim", int), ("root", str),
                           ("model", str), ("index", str), ("kind", str)):
            value = getattr(config, name)
            if not (is_int(value) if kind is int else isinstance(value, str)):
                raise RetrieverError(f"{path} has {name} {value!r}, not {'an integer' if kind is int else 'a string'}")
        if config.kind not in KINDS:
            raise RetrieverError(f"{path} names an unknown kind {config.kind!r}")
        if not is_int(config.pool_factor) or config.pool_factor < 1:
            raise RetrieverError(f"{path} names a pool factor of {config.pool_factor!r}, not an integer of at least 1")
        if not is_vector_folder(config.index):  # a name, never a path: rebuilds delete the folders they replace
            raise RetrieverError(f"{path} names {config.index!r} as its vector folder, not a folder of its own")
        return config

    def write(self, index_dir: Path) -> None:
        atomic_write_json(index_dir / CONFIG, asdict(self))

    def check_same(self, index_dir: Path, model: str | Path | None, kind: str | None,
                   max_length: int | None, pool_factor: int | None = None) -> None:
        """Settings given for an existing index must be the ones it was built with: chunks and vectors would mix."""
        differs = []
        if model is not None and model_name(model) != self.model:
            differs.append(f"model {self.model}")
        if kind is not None and kind != self.kind:
            differs.append(f"kind {self.kind}")
        if max_length is not None and max_length not in (self.max_length, self.max_length_setting):
            differs.append(f"max length {self.max_length}")
        if pool_factor is not None and pool_factor != self.pool_factor:
            differs.append(f"pool factor {self.pool_factor}")
        if differs:
            raise RetrieverError(f"{index_dir} was built with {', '.join(differs)}; delete it to rebuild with "
                                 "other settings, or choose another --index-dir")

    def create_vectors(self, index_dir: Path) -> None:
        """The empty vector index this configuration calls for."""
        if self.kind == "dense":
            FaissIndex.create(index_dir / self.index, dim=self.dim, kind="flat").close()
        else:
            PlaidIndex.create(index_dir / self.index, dim=self.dim, nbits=PLAID_NBITS).close()

    def open_vectors(self, index_dir: Path) -> FaissIndex | PlaidIndex:
        return (FaissIndex if self.kind == "dense" else PlaidIndex).open(index_dir / self.index)


def is_vector_folder(name: str) -> bool:
    """Whether ``name`` is one of the names vector folders get: ``index``, or ``index.<hex>`` from a rebuild."""
    return re.fullmatch(r"index(\.[0-9a-f]{8,32})?", name) is not None


def model_name(model: str | Path) -> str:
    """A local folder by its absolute path (so that the index finds it from anywhere), a hub id as is."""
    local = Path(model).expanduser()
    return str(local.resolve()) if local.is_dir() else str(model)


def read_last_run(index_dir: Path) -> dict[str, Any] | None:
    """The last run's summary, or None when there is none or it is damaged (only a report: never worth failing)."""
    try:
        last = json.loads((index_dir / LAST_RUN).read_text())
    except (OSError, ValueError):  # absent, unreadable, not JSON (UnicodeDecodeError is a ValueError)
        return None
    return last if isinstance(last, dict) else None
