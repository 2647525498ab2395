"""The BEIR folder layout, which every dataset here is read into or written as: corpus.jsonl (_id, title, text),
queries.jsonl (_id, text), qrels/{split}.tsv (query-id, corpus-id, score; a header line). The Hugging Face copies
(BeIR/*) gzip the two jsonl files; both spellings are read."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from modernretrieval.errors import ModernRetrievalError


class DatasetError(ModernRetrievalError, ValueError):
    """A dataset that is missing or malformed: the message names the file (and line) and what is wrong."""


@dataclass
class BeirDataset:
    corpus: dict[str, dict[str, str]]  # doc id -> {"title", "text"}
    queries: dict[str, str]  # query id -> text (only queries judged in the split)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    folder: Path | None = None  # where it was loaded from: part of encode_beir's cache key
    name: str = ""  # e.g. "scifact", "mldr-en", "codesearchnet-python": the key for published numbers
    info: dict[str, object] = field(default_factory=dict)  # how it was built or where it came from

    def document_texts(self, ids: list[str]) -> list[str]:
        """Title and text joined as BEIR does: "title text" (just the text when there is no title)."""
        return [(self.corpus[i].get("title", "") + " " + self.corpus[i]["text"]).strip() for i in ids]


def find_file(folder: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in folder, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-empty line of a .jsonl or .jsonl.gz file; DatasetError on bad JSON."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Windows editors) is no JSON
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(item, dict):
                    raise DatasetError(f"{path}:{number}: expected a JSON object")
                yield number, item
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as error:  # zlib.error: a damaged .gz stream
        raise DatasetError(f"{path}: cannot be read ({error})") from None


def valid_unicode(text: str) -> str:
    """``text`` with any lone surrogate (JSON may escape half a pair: "\\ud83d") made U+FFFD: a tokenizer, and the
    cache's digest, need text that UTF-8 can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def field_of(item: dict, keys: tuple[str, ...], path: Path, number: int) -> str:
    """The first of ``keys`` present in item, as a string; DatasetError naming the line when none is."""
    for key in keys:
        if item.get(key) is not None:
            return valid_unicode(str(item[key]))
    raise DatasetError(f"{path}:{number}: no {' or '.join(repr(k) for k in keys)} field")


class Duplicates:
    """Counts the ids a corpus repeats (the last row wins, as BEIR's loader keeps it) and warns once, naming the
    count and the first repeated id."""

    def __init__(self, path: Path | str):
        self.path, self.count, self.first = path, 0, None

    def seen(self, doc_id: str, corpus: dict) -> None:
        if doc_id in corpus:
            self.count += 1
            self.first = doc_id if self.first is None else self.first

    def warn(self, stacklevel: int = 3) -> None:
        if self.count:
            warnings.warn(f"{self.path}: {self.count} repeated document ids, the last row of each kept as BEIR "
                          f"does (first: {self.first!r})", stacklevel=stacklevel)


def load_beir(folder: str | Path, split: str = "test", name: str | None = None) -> BeirDataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder (expected a BEIR dataset: corpus.jsonl, queries.jsonl, qrels/)")
    corpus_path, queries_path = find_file(folder, "corpus.jsonl"), find_file(folder, "queries.jsonl")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    nested = sorted(p.parent.name for p in folder.glob("*/corpus.jsonl*"))
    if corpus_path is None and nested:  # a downloaded zip of several (cqadupstack) is named "cqadupstack/android"
        raise DatasetError(f"{name} holds one dataset per folder; name one: {', '.join(f'{name}/{n}' for n in nested)}"
                           if name else f"{folder} holds several datasets; pick one: {', '.join(nested)}")
    for path, label in ((corpus_path, "corpus.jsonl"), (queries_path, "queries.jsonl"), (qrels_path, f"qrels/{split}.tsv")):
        if path is None or not path.exists():
            splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
            hint = f" (its qrels splits: {', '.join(splits)})" if splits and label.startswith("qrels") else ""
            raise DatasetError(f"{folder} is not a BEIR dataset folder: {label} is missing{hint}")
    qrels = read_qrels(qrels_path)
    corpus: dict[str, dict[str, str]] = {}
    duplicates = Duplicates(corpus_path)
    for number, doc in read_jsonl(corpus_path):
        doc_id = field_of(doc, ("_id",), corpus_path, number)
        duplicates.seen(doc_id, corpus)
        corpus[doc_id] = {"title": valid_unicode(str(doc.get("title") or "")),
                          "text": valid_unicode(str(doc.get("text") or ""))}
    duplicates.warn()
    queries = {}
    for number, query in read_jsonl(queries_path):
        query_id = field_of(query, ("_id",), queries_path, number)
        if query_id in qrels:
            queries[query_id] = field_of(query, ("text",), queries_path, number)
    missing = [q for q in qrels if q not in queries]
    if len(missing) == len(qrels):
        raise DatasetError(f"{qrels_path}: none of its queries is in {queries_path.name} (first: {missing[0]!r})")
    if missing:  # judged but never asked: BEIR's loader drops them too
        warnings.warn(f"{qrels_path}: {len(missing)} judged queries are not in {queries_path.name}; dropped",
                      stacklevel=2)
        qrels = {q: docs for q, docs in qrels.items() if q in queries}
    info = _read_info(folder)
    return BeirDataset(corpus, queries, qrels, folder, name or str(info.get("name") or folder.name), info)


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR's qrels (tab-separated query-id, corpus-id, score, with or without a header) or TREC's (query-id,
    iteration, corpus-id, score, separated by tabs or spaces). A byte-order mark is skipped."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                row = next(csv.reader([line], delimiter="\t")) if "\t" in line else line.split()
                if not row or (number == 1 and row[0].lower() in ("query-id", "query_id", "qid")):
                    continue  # the header line
                if len(row) == 4:  # TREC qrels: query-id, iteration, corpus-id, score
                    row = [row[0], row[2], row[3]]
                if len(row) != 3:
                    raise DatasetError(f"{path}:{number}: expected 3 tab-separated columns (query-id, corpus-id, "
                                       "score) or TREC's 4")
                try:
                    qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
                except ValueError:
                    raise DatasetError(f"{path}:{number}: the score {row[2]!r} is not a number") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 (byte {error.start})") from None
    if not qrels:
        raise DatasetError(f"{path} holds no judgements")
    return qrels


def _read_info(folder: Path) -> dict[str, object]:
    """dataset.json (how the set was built: informative only), or {} when it is missing, unreadable or not an
    object."""
    path = folder / "dataset.json"
    try:
        info = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def write_beir(folder: str | Path, corpus: dict[str, dict[str, str]], queries: dict[str, str],
               qrels: dict[str, dict[str, dict[str, int]]], info: dict[str, object] | None = None) -> Path:
    """Write a dataset in the BEIR layout, rows in the given order; ``qrels`` maps split -> query -> {doc: grade}.

    ``info`` (how the set was built, its name, counts) goes to dataset.json beside the files. The folder is written
    under a temporary name and renamed into place, so an interrupted build never leaves a half-written dataset."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "qrels").mkdir(parents=True)
    with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc_id, doc in corpus.items():
            f.write(json.dumps({"_id": doc_id, "title": doc.get("title", ""), "text": doc["text"]},
                               ensure_ascii=False) + "\n")
    with open(tmp / "queries.jsonl", "w", encoding="utf-8") as f:
        for query_id, text in queries.items():
            f.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    for split, judged in qrels.items():
        with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["query-id", "corpus-id", "score"])
            for query_id, docs in judged.items():
                for doc_id, grade in docs.items():
                    writer.writerow([query_id, doc_id, grade])
    if info is not None:
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
