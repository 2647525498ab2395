"""A sharded index: a folder of ordinary index folders plus a manifest, for collections one index cannot hold.

Layout: ``shard-0000/``, ``shard-0001/``... each a complete FaissIndex or PlaidIndex folder (its own store, commits
and crash guarantees, see base.py), and ``manifest.json`` naming the shards, written last and atomically: a folder
without a manifest is a build still under way, never half an index. A build over an earlier index removes its
manifest before it changes a shard (``start_build``), so a build that fails or is killed never leaves the old
manifest over a mix of old and new shards. Each document lives in exactly one shard.

PLAID shards share one codec, trained once on a sample of the whole collection (``train_shared_codec``): every shard
then scores with the same centroids and residual codebooks, so their scores compare and the merge is exact.

Search here is the one-machine path (a loop over the shards, each memory-mapped), so a sharded index never needs a
cluster; ``retrieval.distributed`` runs the same per-shard searches in one Ray actor per shard. Either way each
shard returns its top ``k`` and ``merge_hits`` keeps the best ``k`` of all: exact, since a document in the overall
top ``k`` is in its own shard's top ``k``. Filters are passed to every shard's store.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modernretrieval.files import atomic_write_json, fsync_dir

from .base import Hits, VectorIndex
from .errors import IndexCorruptError, IndexInputError
from .faiss_index import FaissIndex
from .plaid import PlaidIndex
from .plaid.codec import ResidualCodec
from .state import Batch
from .store import Document, Filter, is_sql_filter

MANIFEST = "manifest.json"
FORMAT = 1
BACKENDS: dict[str, type[VectorIndex]] = {"faiss": FaissIndex, "plaid": PlaidIndex}
BUILD_BATCH = 256  # documents per add_stream batch when a shard is built from memory


def shard_name(number: int) -> str:
    return f"shard-{number:04d}"


def split(n: int, n_shards: int) -> list[range]:
    """``n`` documents in input order cut into ``n_shards`` contiguous ranges whose sizes differ by at most one."""
    if n_shards < 1:
        raise IndexInputError(f"the number of shards must be at least 1, got {n_shards}")
    if n_shards > n:
        raise IndexInputError(f"{n_shards} shards for {n} documents: a shard holds one document at least")
    bounds = [n * i // n_shards for i in range(n_shards + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def train_shared_codec(embeddings: Iterable[np.ndarray], total_tokens: int | None = None,
                       **settings: Any) -> ResidualCodec:
    """One PLAID codec for every shard, trained as a single index would train it (``PlaidIndex.train_codec``) on
    ``embeddings`` (per-document token arrays: the collection or a sample of it), sized for ``total_tokens``."""
    tokens = np.concatenate([np.asarray(a, dtype=np.float32) for a in embeddings])
    tokens /= np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)
    return PlaidIndex.train_codec(tokens, total_tokens, **settings)


def build_shard(folder: str | Path, backend: str, ids: Sequence[str], embeddings: Any,
                documents: Sequence[Document] | None = None, codec: ResidualCodec | None = None,
                codec_tokens: int = 0, **settings: Any) -> int:
    """Build one shard, an ordinary index, from its documents held in memory; returns how many it holds.
    ``embeddings``: an (n, dim) array for FAISS, one (n_tokens, dim) array per document for PLAID. The rest is
    ``build_shard_stream``'s."""
    starts = range(0, len(ids), BUILD_BATCH)
    return build_shard_stream(folder, backend, ids, (
        Batch(list(ids[i: i + BUILD_BATCH]), take_range(embeddings, range(i, min(i + BUILD_BATCH, len(ids)))),
              None if documents is None else list(documents[i: i + BUILD_BATCH])) for i in starts),
        codec, codec_tokens, **settings)


def build_shard_stream(folder: str | Path, backend: str, ids: Sequence[str],
                       batches: Iterable[Batch | tuple[Sequence[str], Any]], codec: ResidualCodec | None = None,
                       codec_tokens: int = 0, **settings: Any) -> int:
    """Build one shard from a stream of batches (``add_stream``: one batch in memory at a time, one commit), so a
    shard larger than memory can be built; returns how many documents it holds.

    ``ids``: every id the batches bring. A shard left complete by an earlier run (it opens and holds these ids,
    with this codec) is kept as it is and the batches are not read, so a rerun after a crash builds only the
    missing ones; anything else in ``folder`` is removed first. ``backend``: "faiss" (``settings`` go to
    FaissIndex.create, e.g. kind="flat") or "plaid" (``codec`` is the shared codec, required; ``settings`` go to
    PlaidIndex.create)."""
    folder = Path(folder)
    cls = _index_class(backend)
    if _complete(folder, cls, ids, codec):
        return len(ids)
    if backend == "plaid" and codec is None:
        raise IndexInputError("a PLAID shard needs the shared codec (train_shared_codec)")
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stream = iter(batches)
    first = next(stream, None)
    if first is None:
        raise IndexInputError(f"shard {folder.name} has no documents")
    stream = itertools.chain([first], stream)
    if backend == "faiss":
        embeddings = first.embeddings if isinstance(first, Batch) else first[1]
        index = FaissIndex.create(folder, int(np.asarray(embeddings).shape[1]), **settings)
    else:
        settings = {key: value for key, value in settings.items() if key != "nbits"}  # the codec's
        index = PlaidIndex.create(folder, codec.dim, nbits=codec.nbits, codec=codec, codec_tokens=codec_tokens,
                                  **settings)
    with index:
        index.add_stream(stream)
        return len(index)


def _complete(folder: Path, cls: type[VectorIndex], ids: Sequence[str], codec: ResidualCodec | None) -> bool:
    """The shard in ``folder`` holds exactly ``ids`` (and, for PLAID, uses ``codec``). Its vectors are not compared:
    a folder belongs to one model (the caller names it after it)."""
    if not (folder / "store.sqlite").exists():
        return False
    try:
        with cls.open(folder) as index:
            if len(index) != len(ids) or set(index.store.ids()) != set(ids):
                return False
            return codec is None or (isinstance(index, PlaidIndex) and index.codec is not None
                                     and np.array_equal(index.codec.centroids, codec.centroids))
    except (IndexCorruptError, IndexInputError, OSError, ValueError, KeyError):
        return False


def start_build(path: str | Path, backend: str, shard_ids: Sequence[Sequence[str]],
                codec: ResidualCodec | None = None) -> None:
    """Before a build of ``len(shard_ids)`` shards (``shard_ids[i]``: the ids shard i will hold) writes anything in
    ``path``: an earlier manifest is removed (durably) unless it already names these shards, each complete with
    these ids (and ``codec``), which the build will then keep as they are. So a build that fails or is killed
    midway leaves no manifest (the folder opens as "a build that did not finish"), never the old one over a mix of
    old and new shards."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        return
    try:
        manifest = read_manifest(path)
    except (IndexInputError, IndexCorruptError):
        manifest = None
    cls = _index_class(backend)
    if (manifest is not None and manifest["backend"] == backend
            and [s["name"] for s in manifest["shards"]] == [shard_name(i) for i in range(len(shard_ids))]
            and all(_complete(path / shard_name(i), cls, ids, codec) for i, ids in enumerate(shard_ids))):
        return
    (path / MANIFEST).unlink(missing_ok=True)
    fsync_dir(path)


def write_manifest(path: str | Path, backend: str, shard_sizes: Sequence[int], **info: Any) -> None:
    """Declare ``path`` a sharded index of ``len(shard_sizes)`` shards (``shard_name(i)``, built and holding those
    numbers of documents); ``info`` (dim, settings, ...) is kept for reports."""
    _index_class(backend)
    atomic_write_json(Path(path) / MANIFEST, {
        "format": FORMAT, "backend": backend, "documents": int(sum(shard_sizes)),
        "shards": [{"name": shard_name(i), "documents": int(n)} for i, n in enumerate(shard_sizes)], **info})


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise IndexInputError(f"no sharded index at {path}: the folder does not exist")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise IndexInputError(f"{path} is not a sharded index (no {MANIFEST}; a build that did not finish?)") from None
    except (OSError, ValueError) as error:
        raise IndexCorruptError(f"{path / MANIFEST} cannot be read: {error}") from None
    if manifest.get("format") != FORMAT or manifest.get("backend") not in BACKENDS:
        raise IndexCorruptError(f"{path / MANIFEST} is not a manifest this version reads")
    return manifest


def open_shard(path: str | Path, name: str, backend: str) -> VectorIndex:
    """One shard of the sharded index at ``path``, opened (memory-mapped) as the ordinary index it is."""
    return _index_class(backend).open(Path(path) / name)


def shareable(filter: Filter) -> Filter:
    """``filter`` as every shard can read it: a collection of ids that is an iterator becomes a list."""
    return filter if filter is None or is_sql_filter(filter) else list(filter)  # type: ignore[arg-type]


def merge_hits(per_shard: Sequence[Sequence[Hits]], k: int) -> list[Hits]:
    """Per query, the best ``k`` of every shard's hits (each shard's list best first); equal scores keep shard
    order, then each shard's own order."""
    merged = []
    for hits in zip(*per_shard):
        every = [hit for shard_hits in hits for hit in shard_hits]
        merged.append(sorted(every, key=lambda hit: -hit[1])[:k])  # sorted is stable
    return merged


class ShardedIndex:
    """A sharded index opened on one machine: every shard open (memory-mapped), searched in turn."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.backend: str = self.manifest["backend"]
        self.shards: list[VectorIndex] = []
        try:
            for shard in self.manifest["shards"]:
                self.shards.append(open_shard(self.path, shard["name"], self.backend))
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, path: str | Path) -> ShardedIndex:
        return cls(path)

    def search(self, queries: Any, k: int = 10, filter: Filter = None, **options: Any) -> list[Hits]:
        """As ``VectorIndex.search``, over every shard: for each query up to ``k`` (doc_id, score), best first."""
        filter = shareable(filter)
        return merge_hits([shard.search(queries, k, filter, **options) for shard in self.shards], k)

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def stats(self) -> dict[str, Any]:
        return {"backend": self.backend, "shards": len(self.shards), "documents": len(self),
                "per_shard": [shard.stats() for shard in self.shards]}

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_sharded(path: str | Path, backend: str, ids: Sequence[str], embeddings: Any, n_shards: int,
                  documents: Sequence[Document] | None = None, codec: ResidualCodec | None = None,
                  **settings: Any) -> ShardedIndex:
    """Build a sharded index on this machine, shard after shard (``retrieval.distributed`` builds them in
    parallel): contiguous ranges of the input order (``split``), a PLAID codec trained once on the whole
    collection unless ``codec`` is given, the manifest last (an earlier one removed first: ``start_build``). A
    rerun keeps the shards already complete."""
    ranges = split(len(ids), n_shards)
    codec_tokens = 0
    if backend == "plaid":
        codec_tokens = sum(len(a) for a in embeddings)
        codec = codec or train_shared_codec(embeddings, codec_tokens, **codec_settings(settings))
    start_build(path, backend, [[ids[j] for j in r] for r in ranges], codec)
    sizes = [build_shard(Path(path) / shard_name(i), backend, [ids[j] for j in r], take_range(embeddings, r),
                         None if documents is None else [documents[j] for j in r], codec, codec_tokens, **settings)
             for i, r in enumerate(ranges)]
    write_manifest(path, backend, sizes)
    return ShardedIndex(path)


CODEC_SETTINGS = ("nbits", "n_centroids", "centroid_factor", "kmeans_niters", "sample_tokens", "seed")


def codec_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The PlaidIndex.create settings that decide the codec (``train_codec``'s arguments)."""
    return {key: settings[key] for key in CODEC_SETTINGS if key in settings}


def take_range(embeddings: Any, r: range) -> Any:
    """The embeddings of the documents in ``r``: rows of an array, or arrays of a sequence."""
    return embeddings[r.start: r.stop] if isinstance(embeddings, np.ndarray) else list(embeddings[r.start: r.stop])


def _index_class(backend: str) -> type[VectorIndex]:
    if backend not in BACKENDS:
        raise IndexInputError(f"a shard is a {' or a '.join(BACKENDS)} index, not {backend!r}")
    return BACKENDS[backend]
