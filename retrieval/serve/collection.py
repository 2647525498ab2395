"""Document collections that are not a tree: documents with an id, a text and metadata, added or replaced in
batches through ``POST /documents`` and searched with a filter over their metadata.

A collection folder holds ``collection.json`` (model, kind, chunk length and dimension, fixed at creation) and
``index/``: the same vector index (FAISS flat for dense, PLAID for colbert) with its SQLite store that a tree's index
uses, so commits are crash-safe and atomic in the same way: a batch is one ``update`` (one commit), acknowledged only
after it returns. One document is one vector entry (its text is truncated to the model's length, not chunked:
clients chunk long documents themselves, with ids of their choosing).

Search modes as a tree's: ``hybrid`` (the default: the vector ranking fused with BM25 over the texts, as ``mret
search`` fuses them), ``semantic`` or ``lexical``. BM25 here reads the text alone (ids are not words of a document),
with Lucene's BM25 as `mret eval --mode lexical` (see ``PROSE_WEIGHTS``).

Filters are a small JSON language compiled to a parameterised SQL predicate: ``{"lang": "en"}`` (equal),
``{"year": {"in": [2023, 2024]}}`` (one of), several keys all apply; keys and values are always parameters, never
SQL text from the client.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from indexes import Document, FaissIndex, PlaidIndex
from modernretrieval.files import atomic_write_json

from ..codebase.config import RetrieverError, model_name
from ..codebase.snippets import best_lines, query_terms
from ..fusion import MODES, fuse
from ..heads import DEFAULT_MODELS, Head, load_head

CONFIG, INDEX = "collection.json", "index"
Scalar = str | int | float | bool
SNIPPET_LINES = 4
CANDIDATES = 50  # each side's depth before fusing (as a tree's search)
PROSE_WEIGHTS = (0.0, 0.0, 1.0)  # BM25 field weights (path, symbols, body): a document's text only


@dataclass
class CollectionConfig:
    format: int
    model: str
    kind: str
    max_length: int
    dim: int


@dataclass
class DocumentIn:
    """One document of a ``POST /documents`` batch."""

    id: str
    text: str
    metadata: dict[str, Any]


def is_collection(folder: Path) -> bool:
    return (Path(folder) / CONFIG).exists()


def metadata_filter(spec: Mapping[str, Scalar | Mapping[str, Sequence[Scalar]]]) -> tuple[str, list[Any]]:
    """``{"key": value, "key2": {"in": [...]}}`` as a SQL predicate over ``documents.metadata`` and its parameters."""
    clauses, params = [], []
    for key, condition in spec.items():
        if not isinstance(key, str) or not key:
            raise RetrieverError(f"filter keys must be non-empty strings, got {key!r}")
        path = '$."' + key.replace('"', '""') + '"'  # (json path quoting; it is a parameter either way)
        if isinstance(condition, Mapping):
            values = condition.get("in")
            if set(condition) != {"in"} or not isinstance(values, list) or not values:
                raise RetrieverError(f"filter {key!r}: give a value, or {{\"in\": [values]}} with at least one value")
            clauses.append(f"json_extract(metadata, ?) IN ({','.join('?' * len(values))})")
            params += [path, *(_scalar(key, v) for v in values)]
        else:
            clauses.append("json_extract(metadata, ?) = ?")
            params += [path, _scalar(key, condition)]
    return " AND ".join(clauses) or "1", params


def _scalar(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)  # json_extract gives 1/0 for true/false
    if isinstance(value, (str, int, float)):
        return value
    raise RetrieverError(f"filter {key!r}: values must be strings, numbers or booleans, got {value!r}")


class Collection:
    """Documents by id in ``folder``: ``put`` (add or replace, one commit), ``delete``, ``search``."""

    def __init__(self, folder: str | Path, model: str | None = None, kind: str | None = None,
                 head_wrapper: Any = None):
        self.folder = Path(folder)
        self._wrap = head_wrapper or (lambda head: head)
        if is_collection(self.folder):
            raw = json.loads((self.folder / CONFIG).read_text())
            self.config = CollectionConfig(**raw)
            if model is not None and model_name(model) != self.config.model:
                raise RetrieverError(f"{self.folder} holds a collection built with {self.config.model}")
            self.head: Head = self._wrap(load_head(self.config.model, self.config.kind, self.config.max_length))
        else:
            self.head = self._create(model, kind or "dense")
        self.vectors = (FaissIndex if self.config.kind == "dense" else PlaidIndex).open(self.folder / INDEX)

    def _create(self, model: str | None, kind: str) -> Head:
        if (self.folder / "config.json").exists():
            raise RetrieverError(f"{self.folder} is a tree's index, not a document collection")
        head = load_head(model or DEFAULT_MODELS[kind], kind)  # type: ignore[index]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = CollectionConfig(1, model_name(model or DEFAULT_MODELS[kind]), head.kind,  # type: ignore[index]
                                       head.document_length, head.dim)
        if (self.folder / INDEX).exists():  # a killed creation, before collection.json: start again
            shutil.rmtree(self.folder / INDEX)
        if head.kind == "dense":
            FaissIndex.create(self.folder / INDEX, dim=head.dim, kind="flat").close()
        else:
            PlaidIndex.create(self.folder / INDEX, dim=head.dim, nbits=2).close()
        atomic_write_json(self.folder / CONFIG, asdict(self.config))  # last: the folder now holds a whole collection
        return self._wrap(head)

    def close(self) -> None:
        self.vectors.close()

    def put(self, documents: Sequence[DocumentIn]) -> int:
        """Add or replace ``documents`` in one commit; returns the generation committed."""
        ids = [d.id for d in documents]
        if len(set(ids)) != len(ids):
            raise RetrieverError("a batch holds the same id twice")
        embeddings = self.head.encode_documents([d.text for d in documents], show_progress=False)
        rows = [Document(d.id, source=d.id, metadata=dict(d.metadata), text=d.text) for d in documents]
        self.vectors.update(ids, embeddings, rows)  # waits on the write lock; readers keep the last commit
        return self.vectors.generation

    def delete(self, doc_id: str) -> bool:
        """Remove one document; False when there is none with this id."""
        with self.vectors.transaction():
            if doc_id not in self.vectors:
                return False
            self.vectors.remove([doc_id])
        return True

    def search(self, query: str, k: int, filter: Mapping[str, Any] | None = None,
               mode: str = "hybrid") -> list[dict[str, Any]]:
        if not isinstance(query, str) or not query.strip():
            raise RetrieverError("the query is empty")
        if mode not in MODES:
            raise RetrieverError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        where = metadata_filter(filter) if filter else None
        depth = k if mode == "semantic" else max(k, CANDIDATES)
        with self.vectors.store.read_transaction():  # both sides and the documents read from one commit
            lexical = [] if mode == "semantic" else self.vectors.store.lexical_search(query, depth, where,
                                                                                      PROSE_WEIGHTS)
            semantic = [] if mode == "lexical" else \
                self.vectors.search(self.head.encode_queries([query]), k=depth, filter=where)[0]
            found = semantic if mode == "semantic" else lexical[:k] if mode == "lexical" else \
                fuse(semantic, lexical, k)
            documents = self.vectors.documents([i for i, _ in found])
        terms = query_terms(query)
        results = []
        for (doc_id, score), doc in zip(found, documents):
            if doc is None:  # removed between the search and the lookup
                continue
            _, lines = best_lines(doc.text or "", terms)
            results.append({"id": doc_id, "score": round(float(score), 6), "snippet": "\n".join(lines[:SNIPPET_LINES]),
                            "metadata": doc.metadata})
        return results

    def status(self) -> dict[str, Any]:
        return {"collection": str(self.folder.resolve()), "model": self.config.model, "kind": self.config.kind,
                "max_length": self.config.max_length, "documents": len(self.vectors), "index": self.vectors.stats()}
