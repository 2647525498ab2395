"""Code retrieval sets read from their own layouts: CodeSearchNet (the original per-language zips) and CoIR (the
CoIR-Retrieval repos on the Hugging Face hub, or their BEIR-layout copies).

CodeSearchNet: each function of a split is one document and its docstring's first paragraph is the query; the
function's own code is the one relevant document, and the whole split is the corpus (the usual evaluation over
the test set). Python's ``code`` field holds the docstring, which would give the answer away: it is cut out of the
document, the rest of the code kept. The other languages' docstrings are comments outside ``code`` already.

CoIR: the corpus is every row of the corpus file (all partitions, as CoIR's own loader does); the queries are
those judged in the split's qrels."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from .beir import BeirDataset, DatasetError, Duplicates, field_of, find_file, load_beir, read_jsonl
from .docstrings import strip_function_source
from .mldr import error_reason, hub_errors

SPLITS = {"test": "test", "valid": "valid", "validation": "valid", "dev": "valid", "train": "train"}
SPLIT_FILE = re.compile(r"^(.+)_(train|valid|test)_\d+\.jsonl(\.gz)?$")  # {language}_{split}_{i}


# ---------------------------------------------------------------------------------------------- CodeSearchNet


def load_codesearchnet(folder: str | Path, language: str | None = None, split: str = "test") -> BeirDataset:
    """CodeSearchNet ``language``/``split`` (test, valid or validation, train) as a BeirDataset named
    ``codesearchnet-{language}``.

    ``folder`` is any of: the root holding ``{language}/final/jsonl/{split}/{language}_{split}_{i}.jsonl.gz`` (the
    zip unpacked), the ``{language}`` folder, its ``final/jsonl`` folder, or a folder of the split's .jsonl(.gz)
    files (files named ``{language}_{split}_{i}`` of other splits in it are left out). The files' ``{language}``
    prefix names the language: ``language`` None takes it (python where the files have none), another ``language``
    is an error. Files are read in natural name order, then line order. Doc id: the ``url`` (else
    ``path:func_name:line``); query id: ``q:`` + doc id.
    Rows with an empty docstring or code are skipped (``info["skipped"]``), as are repeated ids
    (``info["duplicates"]``)."""
    folder = Path(folder)
    if split not in SPLITS:
        raise DatasetError(f"unknown CodeSearchNet split {split!r}: use test, valid (or validation) or train")
    split = SPLITS[split]
    files = _codesearchnet_files(folder, language or "python", split)
    prefixes = sorted({m.group(1) for p in files if (m := SPLIT_FILE.match(p.name))})
    if language is None:
        if len(prefixes) > 1:
            raise DatasetError(f"{files[0].parent} holds files of several languages ({', '.join(prefixes)}); "
                               "pick one with --language")
        language = prefixes[0] if prefixes else "python"
    elif prefixes and prefixes != [language]:
        raise DatasetError(f"{files[0].parent} holds CodeSearchNet {', '.join(prefixes)} files "
                           f"({files[0].name}), not {language}: pass --language {prefixes[0]}")
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    skipped = duplicates = rows = 0
    for path in files:
        for number, row in read_jsonl(path):
            rows += 1
            code = field_of(row, ("code",), path, number)
            docstring = field_of(row, ("docstring",), path, number)
            if row.get("url"):
                doc_id = str(row["url"])
            else:
                doc_id = (f"{field_of(row, ('path',), path, number)}:{field_of(row, ('func_name',), path, number)}"
                          f":{number}")
            query = first_paragraph(docstring)
            if not query or not code.strip():
                skipped += 1
                continue
            if doc_id in corpus:
                duplicates += 1
                continue
            if str(row.get("language") or language).lower() == "python":
                code = strip_python_docstring(code, docstring)
            corpus[doc_id] = {"title": "", "text": code}
            queries[f"q:{doc_id}"] = query
            qrels[f"q:{doc_id}"] = {doc_id: 1}
    if not corpus:
        raise DatasetError(f"{files[0].parent}: no usable {split} row in {len(files)} file(s) ({rows} rows, "
                           f"{skipped} without docstring or code)")
    info = {"source": "CodeSearchNet", "language": language, "split": split, "folder": str(files[0].parent),
            "files": [p.name for p in files], "rows": rows, "skipped": skipped, "duplicates": duplicates}
    return BeirDataset(corpus, queries, qrels, files[0].parent, f"codesearchnet-{language}", info)


def _codesearchnet_files(folder: Path, language: str, split: str) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder (expected CodeSearchNet: "
                           f"{language}/final/jsonl/{split}/{language}_{split}_*.jsonl.gz)")
    candidates = (folder / language / "final" / "jsonl" / split, folder / "final" / "jsonl" / split,
                  folder / split, folder)
    for candidate in candidates:
        files = [p for p in candidate.glob("*.jsonl*") if p.name.endswith((".jsonl", ".jsonl.gz"))]
        if not files:
            continue
        named = {p: m.group(2) for p in files if (m := SPLIT_FILE.match(p.name))}
        if named:  # files named {language}_{split}_{i}: keep the split's own
            files = [p for p in files if named.get(p) == split]
            if not files:
                raise DatasetError(f"{candidate} holds no CodeSearchNet {split} file (its splits: "
                                   f"{', '.join(sorted(set(named.values())))})")
        return sorted(files, key=_natural_key)
    languages = sorted(p.name for p in folder.iterdir() if (p / "final" / "jsonl").is_dir())
    hint = f"; it holds: {', '.join(languages)}" if languages else ""
    raise DatasetError(f"{folder}: no CodeSearchNet {language} {split} files: expected "
                       f"{language}/final/jsonl/{split}/{language}_{split}_*.jsonl.gz under it (CodeSearchNet's "
                       f"{language}.zip unpacked), the {language} folder, or a folder of the split's .jsonl.gz "
                       f"files{hint}")


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def first_paragraph(docstring: str) -> str:
    """The docstring up to its first blank line, whitespace collapsed (CodeSearchNet's query text)."""
    return " ".join(re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0].split())


def strip_python_docstring(code: str, docstring: str = "") -> str:
    """``code`` without the docstring of its function (``docstrings.strip_function_source``: parsed dedented; when
    it does not parse, the first triple-quoted literal holding the start of ``docstring``)."""
    return strip_function_source(code, docstring)


# ---------------------------------------------------------------------------------------------------- CoIR


def load_coir(folder: str | Path, split: str = "test") -> BeirDataset:
    """A CoIR task as a BeirDataset named ``coir-{folder name}``, from one of two layouts:

    * BEIR (corpus.jsonl, queries.jsonl, qrels/{split}.tsv): read by :func:`eval.datasets.beir.load_beir`;
    * the hub's pair of repos, each a snapshot in a subfolder of ``folder``: ``queries-corpus/`` and ``qrels/``
      (as :func:`download_coir` writes them), or ``{task}-queries-corpus/`` and ``{task}-qrels/``. The first holds
      ``data/corpus-*.parquet`` and ``data/queries-*.parquet`` (columns ``_id``, ``text``, ``title``, ...); the
      second the split's judgements as ``{split}.jsonl``, ``default/{split}/*.parquet`` or
      ``data/{split}-*.parquet`` (columns ``query-id`` or ``query_id``, ``corpus-id`` or ``corpus_id``,
      ``score``). Reading parquet needs pyarrow."""
    folder = Path(folder)
    name = folder.name if folder.name.startswith("coir-") else f"coir-{folder.name}"
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder (expected a CoIR task: queries-corpus/ and qrels/, or "
                           "corpus.jsonl, queries.jsonl and qrels/)")
    if find_file(folder, "corpus.jsonl"):
        return load_beir(folder, split, name=name)
    queries_corpus, qrels_folder = _coir_pair(folder)
    splits = [split] + [s for s, alias in SPLITS.items() if alias == SPLITS.get(split) and s != split]
    qrels_files = _coir_qrels_files(qrels_folder, splits)
    qrels: dict[str, dict[str, int]] = {}
    for path in qrels_files:
        for where, row in _rows(path):
            query_id = _value(row, ("query-id", "query_id"), where)
            doc_id = _value(row, ("corpus-id", "corpus_id"), where)
            score = _value(row, ("score",), where)
            try:
                qrels.setdefault(query_id, {})[doc_id] = int(float(score))
            except ValueError:
                raise DatasetError(f"{where}: the score {score!r} is not a number") from None
    if not qrels:
        raise DatasetError(f"{', '.join(str(p) for p in qrels_files)}: no judgements")

    corpus: dict[str, dict[str, str]] = {}
    corpus_files = _coir_part(queries_corpus, "corpus")
    duplicates = Duplicates(corpus_files[0].parent)
    for path in corpus_files:
        for where, row in _rows(path):
            doc_id = _value(row, ("_id",), where)
            duplicates.seen(doc_id, corpus)
            corpus[doc_id] = {"title": str(row.get("title") or ""), "text": str(row.get("text") or "")}
    duplicates.warn()
    queries: dict[str, str] = {}
    queries_files = _coir_part(queries_corpus, "queries")
    for path in queries_files:
        for where, row in _rows(path):
            query_id = _value(row, ("_id",), where)
            if query_id in qrels:
                queries[query_id] = _value(row, ("text",), where)
    missing = [q for q in qrels if q not in queries]
    if len(missing) == len(qrels):
        raise DatasetError(f"{qrels_files[0]}: none of its queries is in {queries_files[0].name} "
                           f"(first: {missing[0]!r})")
    if missing:
        warnings.warn(f"{qrels_files[0]}: {len(missing)} judged queries are not in the queries; dropped",
                      stacklevel=2)
        qrels = {q: docs for q, docs in qrels.items() if q in queries}
    unknown = {d for docs in qrels.values() for d in docs if d not in corpus}
    if unknown:
        warnings.warn(f"{qrels_files[0]}: {len(unknown)} judged documents are not in the corpus "
                      f"(first: {min(unknown)!r})", stacklevel=2)
    info = {"source": "CoIR-Retrieval", "split": split, "folder": str(folder),
            "files": [str(p.relative_to(folder)) for p in (*qrels_files, *_coir_part(queries_corpus, "corpus"),
                                                          *queries_files)]}
    return BeirDataset(corpus, queries, qrels, folder, name, info)


def _coir_pair(folder: Path) -> tuple[Path, Path]:
    if (folder / "queries-corpus").is_dir() and (folder / "qrels").is_dir():
        return folder / "queries-corpus", folder / "qrels"
    tasks = sorted(p.name.removesuffix("-queries-corpus") for p in folder.glob("*-queries-corpus") if p.is_dir())
    paired = [t for t in tasks if (folder / f"{t}-qrels").is_dir()]
    if len(paired) == 1:
        return folder / f"{paired[0]}-queries-corpus", folder / f"{paired[0]}-qrels"
    if len(paired) > 1:
        raise DatasetError(f"{folder} holds several CoIR tasks; pick one folder per task: {', '.join(paired)}")
    raise DatasetError(f"{folder} is not a CoIR task folder: expected the subfolders queries-corpus/ and qrels/ "
                       "(or {task}-queries-corpus/ and {task}-qrels/: snapshots of the CoIR-Retrieval repos), "
                       "or a BEIR layout (corpus.jsonl, queries.jsonl, qrels/)")


def _coir_part(folder: Path, part: str) -> list[Path]:
    files = sorted((folder / "data").glob(f"{part}-*.parquet"), key=_natural_key)
    if not files:
        raise DatasetError(f"{folder}: no data/{part}-*.parquet (not a snapshot of a CoIR queries-corpus repo)")
    return files


def _coir_qrels_files(folder: Path, splits: list[str]) -> list[Path]:
    for split in splits:
        if path := find_file(folder, f"{split}.jsonl"):
            return [path]
        for pattern in (f"default/{split}/*.parquet", f"data/{split}-*.parquet"):
            if files := sorted(folder.glob(pattern), key=_natural_key):
                return files
    present = sorted({p.name.split(".")[0] for p in folder.glob("*.jsonl*")}
                     | {p.name for p in folder.glob("default/*") if p.is_dir()}
                     | {p.name.split("-")[0] for p in folder.glob("data/*.parquet")})
    hint = f" (its splits: {', '.join(present)})" if present else ""
    raise DatasetError(f"{folder}: no qrels for split {splits[0]!r}: expected {splits[0]}.jsonl, "
                       f"default/{splits[0]}/*.parquet or data/{splits[0]}-*.parquet{hint}")


def _rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(``file:line`` or ``file: row n``, row) for each row of a .jsonl(.gz) or .parquet file."""
    if path.suffix != ".parquet":
        for number, row in read_jsonl(path):
            yield f"{path}:{number}", row
        return
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError("reading CoIR parquet files needs pyarrow: pip install 'modernretrieval[eval]'") from None
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield f"{path}: row {number}", row
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid and ArrowIOError derive from these
        raise DatasetError(f"{path}: cannot be read as parquet ({error_reason(error)})") from None


def _value(row: dict, keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        if row.get(key) is not None:
            return str(row[key])
    raise DatasetError(f"{where}: no {' or '.join(repr(k) for k in keys)} field")


def download_coir(task: str, cache_dir: str | Path) -> Path:
    """Snapshots of ``CoIR-Retrieval/{task}-queries-corpus`` and ``CoIR-Retrieval/{task}-qrels`` (data files
    only) into ``cache_dir/coir/{task}/queries-corpus`` and ``.../qrels``; the task folder, for :func:`load_coir`."""
    from huggingface_hub import snapshot_download

    if not task or "/" in task or task.startswith("."):
        raise DatasetError(f"{task!r} is not a CoIR task name (e.g. cosqa, apps, codesearchnet)")
    folder = Path(cache_dir) / "coir" / task
    for suffix, target in (("queries-corpus", "queries-corpus"), ("qrels", "qrels")):
        repo = f"CoIR-Retrieval/{task}-{suffix}"
        try:
            snapshot_download(repo_id=repo, repo_type="dataset", local_dir=folder / target,
                              allow_patterns=["*.parquet", "*.jsonl", "*.jsonl.gz"])
        except hub_errors() as error:
            raise DatasetError(f"cannot download {repo} ({error_reason(error)}); "
                               "pass a local folder with --dataset") from None
    return folder
