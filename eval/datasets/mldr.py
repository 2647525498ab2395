"""MLDR (Shitao/MLDR on the Hugging Face hub: multilingual long-document retrieval) read from its own layout.

The hub repo holds one folder per language, ``mldr-v1.0-{lang}/``, with ``corpus.jsonl.gz`` (lines
``{"docid", "text"}``) and ``train/dev/test.jsonl.gz`` (lines ``{"query_id", "query", "positive_passages":
[{"docid", "text"}, ...], "negative_passages": [...]}``). Each query's positive passages are its relevant documents
(relevance 1); the negative passages are not judgements and are ignored. Documents keep their full text (they are
long: truncation is the encoder's business) and have no title."""

from __future__ import annotations

from pathlib import Path

from .beir import BeirDataset, DatasetError, Duplicates, field_of, find_file, read_jsonl

MLDR_REPO = "Shitao/MLDR"
SPLIT_ALIASES = {"valid": "dev", "validation": "dev"}


def mldr_folder_name(lang: str) -> str:
    return f"mldr-v1.0-{lang}"


def load_mldr(folder: str | Path, lang: str | None = None, split: str = "test") -> BeirDataset:
    """MLDR ``lang``/``split`` as a BeirDataset named ``mldr-{lang}``.

    ``folder`` is the repo root (holding ``mldr-v1.0-{lang}/``) or that language folder itself; the files may be
    gzipped or not. The language of a folder named ``mldr-v1.0-{lang}`` is its own: ``lang`` None takes it, another
    ``lang`` is an error; elsewhere ``lang`` defaults to en. Queries without a positive passage are dropped (counted
    in ``info["skipped"]``); a positive docid that is not in the corpus is an error."""
    folder = Path(folder)
    split = SPLIT_ALIASES.get(split, split)
    named = folder.name.removeprefix(mldr_folder_name("")) if folder.name.startswith(mldr_folder_name("")) else None
    if named and lang is not None and lang != named:
        raise DatasetError(f"{folder} holds MLDR {named!r}, not {lang!r}: drop --language, or pass --language {named}")
    lang = named or lang or "en"
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder (expected MLDR: {mldr_folder_name(lang)}/corpus.jsonl.gz "
                           f"and {split}.jsonl.gz)")
    nested = folder / mldr_folder_name(lang)
    lang_folder = nested if nested.is_dir() else folder
    corpus_path = find_file(lang_folder, "corpus.jsonl")
    split_path = find_file(lang_folder, f"{split}.jsonl")
    if corpus_path is None or split_path is None:
        missing = " and ".join(name for name, path in (("corpus.jsonl.gz", corpus_path),
                                                       (f"{split}.jsonl.gz", split_path)) if path is None)
        others = sorted(p.name for p in folder.glob("mldr-v1.0-*") if p.is_dir())
        splits = sorted({p.name.split(".")[0] for p in lang_folder.glob("*.jsonl*")} - {"corpus"})
        hint = (f"; its splits: {', '.join(splits)}" if splits and corpus_path is not None
                else f"; its languages: {', '.join(o.removeprefix('mldr-v1.0-') for o in others)}" if others else "")
        raise DatasetError(f"{lang_folder} is not an MLDR folder for {lang!r}: {missing} missing (expected "
                           f"corpus.jsonl.gz and {split}.jsonl.gz, .jsonl also read, in {folder} or in its "
                           f"{mldr_folder_name(lang)}/{hint})")

    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    first_seen: dict[str, tuple[str, int]] = {}  # positive docid -> (query id, line) where first judged
    skipped = 0
    for number, row in read_jsonl(split_path):
        query_id = field_of(row, ("query_id",), split_path, number)
        text = field_of(row, ("query",), split_path, number)
        positives = row.get("positive_passages")
        if not isinstance(positives, list):
            raise DatasetError(f"{split_path}:{number}: no 'positive_passages' list")
        docids = []
        for passage in positives:
            if not isinstance(passage, dict) or passage.get("docid") is None:
                raise DatasetError(f"{split_path}:{number}: a positive passage without a 'docid'")
            docids.append(str(passage["docid"]))
        if not docids or not text.strip():
            skipped += 1
            continue
        queries.setdefault(query_id, text)
        judged = qrels.setdefault(query_id, {})
        for docid in docids:
            judged[docid] = 1
            first_seen.setdefault(docid, (query_id, number))
    if not qrels:
        raise DatasetError(f"{split_path} holds no query with a positive passage")

    corpus: dict[str, dict[str, str]] = {}
    duplicates = Duplicates(corpus_path)
    for number, row in read_jsonl(corpus_path):
        docid = field_of(row, ("docid",), corpus_path, number)
        duplicates.seen(docid, corpus)
        corpus[docid] = {"title": "", "text": field_of(row, ("text",), corpus_path, number)}
    duplicates.warn()
    for docid, (query_id, number) in first_seen.items():
        if docid not in corpus:
            absent = sum(d not in corpus for d in first_seen)
            raise DatasetError(f"{split_path}:{number}: positive docid {docid!r} of query {query_id!r} is not in "
                               f"{corpus_path.name} ({absent} positive docids missing in all)")
    info = {"source": MLDR_REPO, "lang": lang, "split": split, "folder": str(lang_folder),
            "documents": len(corpus), "queries": len(queries), "skipped": skipped}
    return BeirDataset(corpus, queries, qrels, lang_folder, f"mldr-{lang}", info)


def download_mldr(cache_dir: str | Path, lang: str = "en", revision: str | None = None) -> Path:
    """Fetch MLDR ``lang`` (corpus, dev and test) into the Hugging Face cache under ``cache_dir``; the language
    folder, ready for :func:`load_mldr`. Every file comes from the same commit of the repo."""
    from huggingface_hub import hf_hub_download

    if not lang or "/" in lang or lang.startswith("."):
        raise DatasetError(f"{lang!r} is not an MLDR language code (e.g. en, de, zh)")
    folder = None
    for name in ("corpus.jsonl.gz", "dev.jsonl.gz", "test.jsonl.gz"):
        try:
            path = Path(hf_hub_download(repo_id=MLDR_REPO, repo_type="dataset",
                                        filename=f"{mldr_folder_name(lang)}/{name}", cache_dir=cache_dir,
                                        revision=revision))
        except hub_errors() as error:
            raise DatasetError(f"cannot download {MLDR_REPO} ({error_reason(error)}); "
                               "pass a local folder with --dataset") from None
        folder = path.parent
        commit = folder.parent.name  # .../snapshots/{commit}/mldr-v1.0-{lang}/{name}
        if revision is None and len(commit) == 40:
            revision = commit  # the next files from this very commit
    assert folder is not None
    return folder


def hub_errors() -> tuple[type[BaseException], ...]:
    """What a hub download raises when the network, the repo or the cache fails (varies with the hub version)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub.utils import HfHubHTTPError, HFValidationError

        errors += [HfHubHTTPError, HFValidationError]
    except ImportError:
        pass
    for module, name in (("requests", "RequestException"), ("httpx", "HTTPError"), ("huggingface_hub.errors",
                                                                                     "HTTPError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def error_reason(error: BaseException) -> str:
    """The first line of an error's message (hub errors run to several lines)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
