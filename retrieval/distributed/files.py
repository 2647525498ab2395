"""A corpus given as files (parquet, JSON lines; a folder or a glob of them) read as a Ray Dataset and encoded on
Ray: what ``mret embed --ray`` runs (``embed_corpus(spec, read_corpus(inputs), parts)``).

What is read where. The files are read by Ray Data tasks (``ray.data.read_parquet`` / ``ray.data.read_json``), so
they may live on any filesystem pyarrow reaches (a local folder, ``s3://``, ``gs://``, ``hdfs://``...), and only the
columns used are read: ``text`` (required), ``title`` (optional: joined before the text as ``mret embed`` joins a
.jsonl's title; with or without it the text's edges are stripped as ``mret embed`` strips them, so the vectors are
those of single-process ``mret embed``) and ``id`` (optional: returned in input
order so that the caller can write them beside the vectors). Input order is the order of the files as given
(a folder's files sorted by name, a glob's matches sorted) and of the rows within each file; Ray Data keeps it
(``preserve_order``) in the order of the materialized blocks. JSON lines are read by pyarrow's reader (a file at a time), which
keeps ``"id": "4983"`` a string (``lines=True`` would parse them with pandas, which makes it the number 4983).

The texts stay in the cluster: the read is materialized in Ray's object store (spilled to disk when larger than it),
and the driver gathers only each text's length and id; ``retrieval.distributed.blocks`` makes the pipeline's plan
from the lengths and has Ray Data gather each chunk's texts by sorting them into place. So a corpus larger than the
driver's memory (MS MARCO's passages are ~3 GB of text) is encoded as a small one is; the output (the vectors) is
written by the driver from the parts, a chunk at a time (``write_output``), in the files ``mret embed`` writes.

Resumable: the parts go to a folder the caller names (``mret embed`` uses ``<output>.parts``), stamped with the
settings of the run (``parts.json``: model, kind, query, dtype, chunk size); a rerun with the same settings reads
and sorts the files again but encodes no chunk already written, a folder of other settings is refused rather than
served.
"""

from __future__ import annotations

import glob
import json
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from modernretrieval.errors import ModernRetrievalError
from modernretrieval.files import atomic_write, atomic_write_json
from retrieval.encoding import CHUNK_TEXTS, Encoded, chunk_plan, part_name, saved_row_lengths

from .blocks import encode_blocks, iter_plan, read_plan
from .cluster import connect, first_line, require_ray
from .encode import EncodeReport, HeadSpec, check_load

FORMATS = {".parquet": "parquet", ".jsonl": "json"}
SETTINGS_FILE = "parts.json"


class CorpusFilesError(ModernRetrievalError):
    """The corpus files cannot be used: missing, of mixed or unknown formats, unreadable, or without a text column."""


@dataclass
class Corpus:
    """A corpus in Ray's object store: ``blocks`` (object refs of pyarrow tables with a ``text`` column, titles
    joined; in input order) and ``lengths`` (each block's texts' lengths in characters), the ids (None when the files
    have no ``id`` column) and the files read."""

    blocks: list
    lengths: list[np.ndarray]
    ids: np.ndarray | None
    paths: list[str]

    @property
    def size(self) -> int:
        return sum(map(len, self.lengths))


@dataclass
class FilesRun:
    """What ``embed_corpus`` did (``report``) and where its rows are: the parts, read back in input order a chunk at
    a time (``chunks``, what ``write_output`` streams) or all at once (``rows``); the ids (or None)."""

    report: EncodeReport
    ids: np.ndarray | None
    parts: Path
    lengths: np.ndarray
    digests: dict[int, str]
    is_query: bool
    chunk_texts: int

    def chunks(self) -> Iterator[tuple[list[int], list[np.ndarray], float, int]]:
        return iter_plan(self.parts, self.lengths, self.digests, self.is_query, self.chunk_texts)

    def rows(self) -> Encoded:
        return read_plan(self.parts, self.lengths, self.digests, self.is_query, self.chunk_texts)


def corpus_files(inputs: Sequence[str | Path]) -> tuple[str, list[str]]:
    """The format ("parquet" or "json") and the files of ``inputs``: files, folders (their .parquet/.jsonl files,
    sorted) or globs (sorted); a URI (``s3://...``) of a file or a glob is passed to Ray as it is, one of a folder
    is listed (``uri_folder``). One format for all of them."""
    paths: list[str] = []
    for item in map(str, inputs):
        if "://" in item:
            path = item.split("?")[0]
            paths += [item] if Path(path).suffix in FORMATS or glob.has_magic(path) else uri_folder(item)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise CorpusFilesError(f"{item} matches no file")
            paths += matches
        elif Path(item).is_dir():
            found = sorted(str(p) for p in Path(item).iterdir() if p.suffix in FORMATS and p.is_file())
            if not found:
                raise CorpusFilesError(f"{item} holds no .parquet or .jsonl file")
            paths += found
        elif Path(item).exists():
            paths.append(item)
        else:
            raise CorpusFilesError(f"{item} does not exist")
    suffixes = {Path(p.split("?")[0]).suffix for p in paths}
    unknown = suffixes - set(FORMATS)
    if unknown or len(suffixes) != 1:
        raise CorpusFilesError(f"--ray reads .parquet files or .jsonl files, one format at a time; got "
                               f"{', '.join(sorted(s or '(no suffix)' for s in suffixes))}"
                               + (" (a .txt is read without --ray)" if ".txt" in suffixes else ""))
    return FORMATS[suffixes.pop()], paths


def uri_folder(uri: str) -> list[str]:
    """The URIs of the .parquet/.jsonl files in the folder ``uri`` names (``s3://bucket/corpus/``,
    ``file:///data/corpus``: any filesystem pyarrow reaches), sorted by name; a URI of a single file, as it is."""
    import pyarrow.fs as pafs

    base, sep, query = uri.partition("?")
    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
        files = (filesystem.get_file_info(pafs.FileSelector(root)) if info.type == pafs.FileType.Directory else [])
    except (OSError, ValueError) as error:  # no such scheme, unreachable, no credentials
        raise CorpusFilesError(f"cannot list {uri}: {first_line(error)}") from None
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type != pafs.FileType.Directory:
        raise CorpusFilesError(f"{uri} does not exist")
    names = sorted(f.base_name for f in files if f.type == pafs.FileType.File and Path(f.base_name).suffix in FORMATS)
    if not names:
        raise CorpusFilesError(f"{uri} holds no .parquet or .jsonl file")
    return [f"{base.rstrip('/')}/{name}{sep}{query}" for name in names]


def read_corpus(inputs: Sequence[str | Path]) -> Corpus:
    """The texts (and ids) of ``inputs`` read as a Ray Dataset and kept in the object store (see the module)."""
    ray = require_ray()
    connect("local")  # the cluster joined already, if any
    kind, paths = corpus_files(inputs)
    where = paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"
    context = ray.data.DataContext.get_current()
    keep = context.execution_options.preserve_order, context.raise_original_map_exception
    context.execution_options.preserve_order = True
    context.raise_original_map_exception = True  # our own checks' errors, not "UDF failed"
    try:
        if kind == "parquet":  # the schema is in the files' footers: only the columns used are read
            dataset = ray.data.read_parquet(paths)
            _has_text(dataset.schema().names, where)
            dataset = dataset.select_columns([c for c in ("text", "title", "id") if c in dataset.schema().names])
        else:  # a JSON file's columns are known once it is parsed: each batch is checked
            dataset = ray.data.read_json(paths)
        blocks = dataset.map_batches(_prepare, fn_kwargs={"where": where}, batch_format="pyarrow").materialize()
        blocks = blocks.to_arrow_refs()
        measured = ray.get([ray.remote(_measure).remote(block) for block in blocks])
    except (OSError, ValueError, ray.exceptions.RayError) as error:  # pyarrow's errors are these, wrapped by Ray
        raise _corpus_error(error, where) from None
    finally:
        context.execution_options.preserve_order, context.raise_original_map_exception = keep
    lengths = [length for length, _ in measured]
    if not sum(map(len, lengths)):
        raise CorpusFilesError(f"{where} holds no text")
    return Corpus(blocks, lengths, _gathered_ids([ids for _, ids in measured], lengths, where), paths)


def corpus_from_texts(texts: Sequence[str], paths: list[str], block_texts: int = 4096) -> Corpus:
    """A corpus of texts this process has read (a lone .txt file), put in the object store as ``read_corpus``
    leaves one."""
    import pyarrow as pa

    ray = require_ray()
    connect("local")
    if not texts:
        raise CorpusFilesError(f"{paths[0] if paths else 'the input'} holds no text")
    starts = range(0, len(texts), block_texts)
    return Corpus([ray.put(pa.table({"text": pa.array(texts[s:s + block_texts], pa.large_string())})) for s in starts],
                  [np.array([len(t) for t in texts[s:s + block_texts]], dtype=np.int64) for s in starts], None,
                  list(paths))


def embed_corpus(spec: HeadSpec, corpus: Corpus, parts: Path, is_query: bool = False, *,
                 chunk_texts: int = CHUNK_TEXTS, workers: int | None = None,
                 progress: bool | Callable[[int], object] | None = None, address: str | None = "local") -> FilesRun:
    """Encode ``corpus`` through ``encode_blocks`` into ``parts`` (a rerun resumes; a folder of other settings
    raises CorpusFilesError) and return the rows in input order. A mistake in ``spec`` fails before anything is
    written."""
    check_load(spec, address)
    claim_parts(parts, {**asdict(spec), "query": is_query, "chunk_texts": chunk_texts})
    report, digests = encode_blocks(spec, parts, corpus.blocks, corpus.lengths, is_query, chunk_texts=chunk_texts,
                                    workers=workers, progress=progress, address=address)
    return FilesRun(report, corpus.ids, parts, np.concatenate(corpus.lengths), digests, is_query, chunk_texts)


def write_output(run: FilesRun, output: Path, kind: str) -> tuple[int, ...]:
    """The rows written in input order as ``mret embed`` writes them (dense: an ``(n, dim)`` float32 .npy; colbert: a
    .npz of the packed ``embeddings`` and their ``offsets``), whole or not at all, one chunk in memory at a time:
    each row is written at its place in the file. Returns the shape of the (packed) array."""
    n = len(run.lengths)
    if kind == "dense":
        where = np.arange(n + 1)  # row i is rows i:i+1 of the array
    else:  # the token counts of every text first (each part's small "lengths" member), for the offsets
        where = np.zeros(n + 1, dtype=np.int64)
        for number, chunk in enumerate(chunk_plan(run.lengths, run.chunk_texts)):
            where[1:][chunk] = saved_row_lengths(run.parts / part_name(number, run.is_query))
        np.cumsum(where, out=where)
    shape: list[tuple[int, ...]] = []
    if kind == "dense":
        atomic_write(output, lambda f: shape.append(_write_rows(f, run.chunks(), where)))
    else:
        sweep_temporary(output)  # what a killed run left: as large as the output
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=temporary_prefix(output)) as folder:
            embeddings = Path(folder) / "embeddings.npy"
            with open(embeddings, "wb") as f:
                shape.append(_write_rows(f, run.chunks(), where))
            atomic_write(output, lambda f: _zip_packed(f, embeddings, where))
    return shape[0]


def temporary_prefix(output: Path) -> str:
    """The name ``write_output``'s temporary folder beside ``output`` starts with (a colbert output's embeddings,
    written there before they are zipped: the output needs about twice its size free in its folder while it is
    written, besides the parts)."""
    return f".{output.name}."


def sweep_temporary(output: Path) -> list[Path]:
    """Remove the temporary folders an earlier ``write_output`` of ``output`` left when it was killed; returns them.
    (Two runs writing the same output at once are not supported: the second would remove the first's.)"""
    import shutil

    # folders only: atomic_write's temporary files (.NAME.PID.HEX.tmp) are its own
    stale = [p for p in output.parent.glob(f"{glob.escape(temporary_prefix(output))}*") if p.is_dir()]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def _write_rows(f: BinaryIO, chunks: Iterator, where: np.ndarray) -> tuple[int, ...]:
    """An .npy of ``where[-1]`` float32 rows: the rows of text i at rows where[i]:where[i+1] (a dense row is one)."""
    start = shape = None
    for chunk, rows, _, _ in chunks:
        if start is None:
            shape = (int(where[-1]), rows[0].shape[-1])
            np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                     "fortran_order": False, "shape": shape})
            start = f.tell()
        for i, row in zip(chunk, rows):
            f.seek(start + int(where[i]) * shape[1] * 4)
            f.write(np.ascontiguousarray(row, dtype="<f4").tobytes())
    return shape


def _zip_packed(f, embeddings: Path, offsets: np.ndarray) -> None:
    """The .npz ``np.savez`` would write (stored, zip64) with the embeddings streamed from their file."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.write(embeddings, "embeddings.npy")
        with archive.open("offsets.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, offsets)


def claim_parts(parts: Path, settings: dict) -> None:
    """Stamp ``parts`` with the run's settings, or check that a folder left by a killed run has the same ones."""
    stamp = parts / SETTINGS_FILE
    settings = json.loads(json.dumps(settings))  # as JSON reads it back
    if stamp.exists():
        try:
            saved = json.loads(stamp.read_text())
        except (OSError, ValueError):
            saved = None
        if saved != settings:
            raise CorpusFilesError(f"{parts} holds the parts of a run with other settings ({saved}); remove it to "
                                   "start again")
        return
    if parts.exists() and any(parts.iterdir()):
        raise CorpusFilesError(f"{parts} exists and is not a parts folder of this command; remove it")
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, settings)


def _has_text(columns: list[str], where: str) -> None:
    if "text" not in columns:
        raise CorpusFilesError(f'{where}: no "text" column (columns: {", ".join(columns) or "none"})')


def _prepare(batch, where: str):
    """A batch as the corpus keeps it (run by Ray Data's tasks): ``text`` as ``mret embed`` reads a .jsonl's
    (``retrieval.cli.embed.read_texts``: the title, if any, joined before it, and the edges stripped, with or without
    a title; missing texts stay null: the driver names their rows), and ``id`` when there is one."""
    import pyarrow as pa

    _has_text(batch.column_names, where)
    text = batch.column("text")
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type) or pa.types.is_null(text.type)):
        raise CorpusFilesError(f'{where}: the "text" column holds {text.type}, not strings')
    values = text.to_pylist()
    titles = batch.column("title").to_pylist() if "title" in batch.column_names else [None] * len(values)
    values = [value if value is None else (str(title or "") + " " + value).strip()  # read_texts' own expression
              for title, value in zip(titles, values)]
    columns = {"text": pa.array(values, pa.large_string())}
    if "id" in batch.column_names:
        columns["id"] = batch.column("id")
    return pa.table(columns)


def _measure(block) -> tuple[np.ndarray, np.ndarray | None]:
    """A block's text lengths in characters (-1: no text) and its ids (None: no id column; a missing id: None)."""
    import pyarrow.compute as pc

    lengths = pc.fill_null(pc.utf8_length(block.column("text")), -1).to_numpy().astype(np.int64)
    if "id" not in block.column_names:
        return lengths, None
    column = block.column("id")
    if column.null_count:  # the driver names the row
        return lengths, np.array(column.to_pylist(), dtype=object)
    values = column.to_numpy(zero_copy_only=False)
    return lengths, values.astype(str) if values.dtype == object else values


def _gathered_ids(ids: list[np.ndarray | None], lengths: list[np.ndarray], where: str) -> np.ndarray | None:
    """The ids of every row, or None when no row has one; the driver's checks, with row numbers."""
    missing = np.flatnonzero(np.concatenate(lengths) < 0)
    if len(missing):
        raise CorpusFilesError(f"{where}: row {missing[0]} has no text")
    if all(block is None for block in ids):
        return None
    if any(block is None for block in ids):
        raise CorpusFilesError(f'{where}: some rows have an "id" and some have none')
    gathered = np.concatenate(ids)
    if gathered.dtype == object:
        raise CorpusFilesError(f'{where}: an "id" is missing at row {[v is None for v in gathered].index(True)}')
    return gathered


def _corpus_error(error: BaseException, where: str) -> CorpusFilesError:
    """One line for a failed read: our own check's message, or the reader's first line."""
    cause: BaseException | None = error
    while cause is not None:  # Ray wraps a task's error (``cause``) in an error of both classes
        inner = getattr(cause, "cause", None)
        if isinstance(cause, CorpusFilesError) and not isinstance(inner, CorpusFilesError):
            return CorpusFilesError(str(cause).splitlines()[0])
        cause = inner or cause.__cause__
    return CorpusFilesError(f"cannot read {where}: {first_line(error)}")

