"""A corpus given as files (parquet, JSON lines; a folder or a glob of them) read as a Ray Dataset and encoded on
Ray: what ``mret embed --ray`` runs (``embed_corpus(spec, read_corpus(inputs), parts)``).

What is read where. The files are read by Ray Data tasks (``ray.data.read_parquet`` / ``ray.data.read_json``), so
they may live on any filesystem pyarrow reaches (a local folder, ``s3://``, ``gs://``, ``hdfs://``...), and only the
columns used are read: ``text`` (required), ``title`` (optional: joined before the text as ``mret embed`` joins a
.jsonl's title, so the vectors are those of single-process ``mret embed``) and ``id`` (optional: returned in input
order so that the caller can write them beside the vectors). Input order is the order of the files as given
(a folder's files sorted by name, a glob's matches sorted) and of the rows within each file; Ray Data keeps it
(``preserve_order``) while the rows stream back. JSON lines are read by pyarrow's reader (a file at a time), which
keeps ``"id": "4983"`` a string (``lines=True`` would parse them with pandas, which makes it the number 4983).

The texts then come to the driver, streamed through Ray Data, and are encoded by ``encode_parts``: the chunk plan
sorts the whole corpus longest first (``encode_texts``'s plan, which must not be re-derived), so it is made where
all the texts are, and each chunk goes to the ``ChunkEncoder`` actors as one Ray Dataset row. The driver thus holds
the texts once, as it holds the output it writes; the reading (decompression, parsing, column selection) is
distributed, the plan is not. A corpus too large for the driver's memory would need the plan made from per-row
lengths and the chunks gathered by a Ray shuffle; that is not done here.

Resumable: the parts go to a folder the caller names (``mret embed`` uses ``<output>.parts``), stamped with the
settings of the run (``parts.json``: model, kind, query, dtype, chunk size); a rerun with the same settings skips
every chunk already written, a folder of other settings is refused rather than served.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modernretrieval.errors import ModernRetrievalError
from modernretrieval.files import atomic_write_json
from retrieval.encoding import CHUNK_TEXTS, Encoded

from .cluster import connect, require_ray
from .encode import EncodeReport, HeadSpec, encode_parts, read_parts

FORMATS = {".parquet": "parquet", ".jsonl": "json"}
SETTINGS_FILE = "parts.json"


class CorpusFilesError(ModernRetrievalError):
    """The corpus files cannot be used: missing, of mixed or unknown formats, unreadable, or without a text column."""


@dataclass
class Corpus:
    """The texts in input order, their ids (None when the files have no ``id`` column), and the files read."""

    texts: list[str]
    ids: np.ndarray | None
    paths: list[str]


@dataclass
class FilesRun:
    """What ``embed_corpus`` returns: the rows in input order, the ids (or None) and what the encoding did."""

    encoded: Encoded
    ids: np.ndarray | None
    report: EncodeReport


def corpus_files(inputs: Sequence[str | Path]) -> tuple[str, list[str]]:
    """The format ("parquet" or "json") and the files of ``inputs``: files, folders (their .parquet/.jsonl files,
    sorted) or globs (sorted); a URI (``s3://...``) is passed to Ray as it is. One format for all of them."""
    paths: list[str] = []
    for item in map(str, inputs):
        if "://" in item:
            paths.append(item)
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


def read_corpus(inputs: Sequence[str | Path]) -> Corpus:
    """The texts (and ids) of ``inputs`` read as a Ray Dataset, streamed back in input order (see the module)."""
    ray = require_ray()
    connect("local")  # the cluster joined already, if any
    kind, paths = corpus_files(inputs)
    where = paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"
    context = ray.data.DataContext.get_current()
    keep_order, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    texts: list[str] = []
    ids: list[np.ndarray] = []
    try:
        if kind == "parquet":  # the schema is in the files' footers: only the columns used are read
            dataset = ray.data.read_parquet(paths)
            _has_text(dataset.schema().names, where)
            dataset = dataset.select_columns([c for c in ("text", "title", "id") if c in dataset.schema().names])
        else:  # a JSON file's columns are known once it is parsed: each batch is checked
            dataset = ray.data.read_json(paths)
        with_ids = None
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=4096):
            _has_text(batch.column_names, where)
            if with_ids is None:
                with_ids = "id" in batch.column_names
            elif with_ids != ("id" in batch.column_names):
                raise CorpusFilesError(f'{where}: some rows have an "id" and some have none')
            texts += _texts(batch, len(texts), where)
            if with_ids:
                ids.append(_ids(batch, len(texts), where))
    except ModernRetrievalError:
        raise
    except (OSError, ValueError, ray.exceptions.RayError) as error:  # pyarrow's errors are these, wrapped by Ray
        raise CorpusFilesError(f"cannot read {where}: {_first_line(error)}") from None
    finally:
        context.execution_options.preserve_order = keep_order
    if not texts:
        raise CorpusFilesError(f"{where} holds no text")
    return Corpus(texts, np.concatenate(ids) if ids else None, paths)


def embed_corpus(spec: HeadSpec, corpus: Corpus, parts: Path, is_query: bool = False, *,
                 chunk_texts: int = CHUNK_TEXTS, workers: int | None = None,
                 progress: bool | Callable[[int], object] | None = None, address: str | None = "local") -> FilesRun:
    """Encode ``corpus`` through ``encode_parts`` into ``parts`` (a rerun resumes; a folder of other settings
    raises CorpusFilesError) and return the rows in input order."""
    claim_parts(parts, {**asdict(spec), "query": is_query, "chunk_texts": chunk_texts})
    documents, queries = ((), corpus.texts) if is_query else (corpus.texts, ())
    report = encode_parts(spec, parts, documents, queries, chunk_texts=chunk_texts, workers=workers,
                          progress=progress, address=address)
    return FilesRun(read_parts(parts, corpus.texts, is_query, chunk_texts), corpus.ids, report)


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


def _texts(batch, start: int, where: str) -> list[str]:
    """A batch's texts (title joined as ``mret embed`` joins it); a missing or non-string text is an error."""
    import pyarrow as pa

    text = batch.column("text")
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        raise CorpusFilesError(f'{where}: the "text" column holds {text.type}, not strings')
    values = text.to_pylist()
    if None in values:
        raise CorpusFilesError(f"{where}: row {start + values.index(None)} has no text")
    if "title" not in batch.column_names:
        return values
    titles = batch.column("title").to_pylist()
    return [(str(title or "") + " " + value).strip() for title, value in zip(titles, values)]


def _ids(batch, end: int, where: str) -> np.ndarray:
    column = batch.column("id")
    if column.null_count:
        raise CorpusFilesError(f"{where}: an \"id\" is missing before row {end}")
    values = column.to_numpy(zero_copy_only=False)
    return values.astype(str) if values.dtype == object else values


def _first_line(error: BaseException) -> str:
    cause = error
    while getattr(cause, "cause", None) is not None:  # Ray wraps the reader's error
        cause = cause.cause
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__  # Ray appends its retry advice below
