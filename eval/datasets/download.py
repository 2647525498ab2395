"""Datasets fetched on first use and kept in a local cache: the public BEIR zips, checked against the md5 sums that
BEIR publishes, unpacked safely, and moved into place only when whole (an interrupted download leaves nothing that
a later run would mistake for a dataset).

What is whose, and why:

- The transfer and the checksum are pooch's (``pooch.retrieve`` with ``HTTPDownloader``): it streams into a
  temporary file beside the target, checks the md5 and only then moves the file into place; requests under it
  (with urllib3 2) refuses a body shorter than its Content-Length, and a cut-off zip could not pass for a whole
  one anyway (its directory is at its end).
- Unpacking stays ours. ``pooch.Unzip`` extracts straight into its final folder (an interrupted extraction is
  later taken for a finished one when every member name exists) and leaves path safety to ``zipfile``, which
  silently rewrites a member such as ``../../x`` to ``x`` instead of refusing the archive. We check every member
  first, unpack into a staging folder and rename the dataset folder into the cache when it is complete.
- The source stays BEIR's own zips, not the hub's BeIR/* datasets (through huggingface_hub): BEIR publishes md5
  sums for exactly these zips (the files its published scores were computed on), while the hub copies have no
  published sum, keep the qrels in separate ``-qrels`` repositories, and hf_hub_download checks a file's size, not
  its content.
- Not resumable: an interrupted download starts over. pooch cannot resume (it always writes a fresh temporary
  file), and neither did our urllib code before it. The largest BEIR zips are about a gigabyte, fetched once per
  cache; the md5 covers only the whole file, so a resumed file would still be checked only at the end, and a
  server that changed the file between attempts would make a spliced one. A restart costs time, never a wrong
  dataset.
- The cache is the dataset folder itself: once it holds corpus.jsonl (or, for cqadupstack, its forums' folders
  do), no request is made.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modernretrieval.files import cache_root

from .beir import DatasetError, find_file

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# md5 of each zip, from the dataset table of BEIR's README (github.com/beir-cellar/beir)
BEIR_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4", "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d", "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114", "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99", "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78", "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c", "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03", "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}
# zips that hold one dataset per folder: cqadupstack's forums, named "cqadupstack/android" as BEIR's examples name
# them (the published CQADupStack score is the mean over these twelve)
BEIR_PARTS = {"cqadupstack": ("android", "english", "gaming", "gis", "mathematica", "physics", "programmers",
                              "stats", "tex", "unix", "webmasters", "wordpress")}
CHUNK = 1 << 20


def fetch_beir(name: str, cache_dir: Path | None = None, url: str | None = None, md5: str | None = None,
               show_progress: bool | None = None, timeout: float = 60) -> Path:
    """The folder of BEIR dataset ``name`` (e.g. "scifact"), downloaded and unpacked on first use; "zip/part"
    (BEIR_PARTS: "cqadupstack/android") is one dataset folder of a zip that holds several, the zip fetched whole.

    ``url`` defaults to $MRET_BEIR_URL or the public BEIR address (``{name}`` is filled in); ``md5`` to BEIR's
    published sum (a dataset without one is accepted and its sha256 recorded). The folder holds download.json
    (address, sums, size, date). Everything in flight lies in one staging folder, removed whatever happens."""
    given = name
    name, slash, part = given.partition("/")
    if not name or name.startswith(".") or (slash and part not in BEIR_PARTS.get(name, ())):
        raise DatasetError(_bad_name(given))
    root = Path(cache_dir or cache_root()) / "datasets" / "beir"
    folder = root / name
    if _holds_dataset(folder):  # a zip of several datasets (cqadupstack) is cached whole, one folder per part
        return _part(folder, name, part) if part else folder
    url = (url or os.environ.get("MRET_BEIR_URL") or BEIR_URL).format(name=name)
    expected = md5 or BEIR_MD5.get(name)
    staging = root / f".{name}.{os.getpid()}.partial"
    try:
        archive = _download(url, staging / f"{name}.zip", expected, show_progress, timeout)
        sums = _sums(archive)
        dataset = _unpack(archive, staging / "unpacked", url, name)
        (dataset / "download.json").write_text(json.dumps(
            {"url": url, **sums, "md5_checked": bool(expected), "bytes": archive.stat().st_size,
             "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
        if folder.exists():  # a folder without corpus.jsonl: left by hand or by an older layout
            shutil.rmtree(folder)
        os.replace(dataset, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _part(folder, name, part) if part else folder


def _bad_name(given: str) -> str:
    """Why ``given`` is refused before any download, on one line (listing a zip's parts where it has them)."""
    name, slash, part = given.partition("/")
    if slash and name in BEIR_PARTS:
        return (f"{part!r} is not a {name} dataset; name one of: "
                f"{', '.join(f'{name}/{p}' for p in BEIR_PARTS[name])}")
    if slash and name and not name.startswith("."):
        return (f"{given} is not a BEIR dataset name: only {', '.join(BEIR_PARTS)} is named by its parts "
                "(cqadupstack/android)")
    return f"{given!r} is not a BEIR dataset name (give a name like scifact, or a local folder)"


def _holds_dataset(folder: Path) -> bool:
    """The cache's test: an unpacked dataset (corpus.jsonl), or a zip's folder of them (cqadupstack's forums)."""
    return bool(find_file(folder, "corpus.jsonl") or any(folder.glob("*/corpus.jsonl*")))


def _part(folder: Path, name: str, part: str) -> Path:
    """The dataset folder ``part`` of the unpacked zip ``folder``; a one-line DatasetError naming those it holds."""
    if find_file(folder / part, "corpus.jsonl"):
        return folder / part
    held = sorted(p.parent.name for p in folder.glob("*/corpus.jsonl*"))
    raise DatasetError(f"{folder} holds no {name}/{part}; it holds: {', '.join(f'{name}/{p}' for p in held)}")


def _download(url: str, target: Path, md5: str | None, show_progress: bool | None, timeout: float) -> Path:
    """``url`` into ``target`` through pooch, which moves it there only once its md5 matches ``md5`` (when
    given). Every way a download fails becomes a one-line DatasetError."""
    try:
        import pooch
        import requests
    except ImportError as error:
        raise DatasetError(f"BEIR downloads need {error.name}: pip install 'modernretrieval[eval]'") from None
    from tqdm.auto import tqdm

    disable = None if show_progress is None else not show_progress
    # total=1 until pooch sets the Content-Length: its downloader tests the bar's truth before using it, and a tqdm
    # without a total is falsy (0) or raises (None)
    with tqdm(total=1, unit="B", unit_scale=True, desc=f"downloading {url.rsplit('/', 1)[-1]}",
              disable=disable) as bar, _quiet(pooch.get_logger()):
        downloader = pooch.HTTPDownloader(progressbar=bar, timeout=timeout, chunk_size=CHUNK)
        try:
            pooch.retrieve(url, known_hash=f"md5:{md5}" if md5 else None, fname=target.name, path=target.parent,
                           downloader=downloader)
        except requests.HTTPError as error:
            code, reason = error.response.status_code, error.response.reason
            raise DatasetError(f"cannot download {url}: HTTP {code} {reason}"
                               + (" (no such dataset?)" if code == 404 else "")) from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise DatasetError(f"cannot download {url} ({_innermost(error)}); offline? "
                               "pass a local folder with --dataset") from None
        except requests.RequestException as error:  # e.g. the body ended before its Content-Length
            raise DatasetError(f"cannot download {url}: the download stopped early ({_innermost(error)}); "
                               "nothing was cached, run again to restart it") from None
        except ValueError:  # pooch's md5 check (requests' own ValueErrors are RequestExceptions, caught above)
            raise DatasetError(f"{url}: the download's md5 does not match the published {md5}: the download is "
                               "damaged or the file changed (nothing was cached)") from None
    return target


def _sums(path: Path) -> dict[str, str]:
    from pooch import file_hash

    return {algorithm: file_hash(str(path), alg=algorithm) for algorithm in ("md5", "sha256")}


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """pooch's INFO lines name our staging path and, for a file without a known hash, tell the user to pass one to
    pooch.retrieve: neither means anything to a user of mret (download.json records the sums)."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _innermost(error: BaseException) -> str:
    """The message of the innermost cause: requests wraps urllib3, which wraps the socket's error."""
    while True:
        inner = error.args[0] if error.args and isinstance(error.args[0], BaseException) else None
        inner = inner or getattr(error, "reason", None)
        inner = inner if isinstance(inner, BaseException) else error.__cause__ or error.__context__
        if inner is None:
            return str(error)
        error = inner


def _unpack(archive: Path, target: Path, url: str, name: str) -> Path:
    """Unzip into ``target``, refusing paths that leave it. The dataset is the zip's top folder ``name``, or else
    the folder holding corpus.jsonl (cqadupstack's top folder holds one dataset per forum)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            root = target.resolve()
            for member in zf.infolist():
                destination = (target / member.filename).resolve()
                if destination != root and root not in destination.parents:
                    raise DatasetError(f"{url}: the archive holds a path outside its folder: {member.filename!r}")
            zf.extractall(target)
    except zipfile.BadZipFile:
        raise DatasetError(f"{url} is not a zip archive") from None
    found = sorted(p.parent for p in target.rglob("corpus.jsonl*"))
    if not found:
        raise DatasetError(f"{url}: the archive holds no corpus.jsonl (not a BEIR dataset)")
    return target / name if (target / name).is_dir() else found[0]
