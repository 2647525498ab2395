"""Datasets fetched on first use and kept in a local cache: the public BEIR zips, checked against the md5 sums that
BEIR publishes, unpacked safely, and moved into place only when whole (an interrupted download leaves nothing that
a later run would mistake for a dataset)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

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
CHUNK = 1 << 20


def cache_root() -> Path:
    """$MRET_CACHE_DIR, else $XDG_CACHE_HOME/modernretrieval, else ~/.cache/modernretrieval."""
    if os.environ.get("MRET_CACHE_DIR"):
        return Path(os.environ["MRET_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "modernretrieval"


def fetch_beir(name: str, cache_dir: Path | None = None, url: str | None = None, md5: str | None = None,
               show_progress: bool | None = None, timeout: float = 60) -> Path:
    """The folder of BEIR dataset ``name`` (e.g. "scifact"), downloaded and unpacked on first use.

    ``url`` defaults to $MRET_BEIR_URL or the public BEIR address (``{name}`` is filled in); ``md5`` to BEIR's
    published sum (a dataset without one is accepted and its sha256 recorded). The folder holds download.json
    (address, sums, size, date)."""
    if not name or "/" in name or name.startswith("."):
        raise DatasetError(f"{name!r} is not a BEIR dataset name (give a name like scifact, or a local folder)")
    root = Path(cache_dir or cache_root()) / "datasets" / "beir"
    folder = root / name
    if find_file(folder, "corpus.jsonl"):
        return folder
    url = (url or os.environ.get("MRET_BEIR_URL") or BEIR_URL).format(name=name)
    expected = md5 or BEIR_MD5.get(name)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f".{name}.{os.getpid()}.zip.part"
    unpacked = root / f".{name}.{os.getpid()}.unpacked"
    try:
        size, sums = _download(url, archive, show_progress, timeout)
        if expected and sums["md5"] != expected:
            raise DatasetError(f"{url}: md5 {sums['md5']} does not match the published {expected}: "
                               "the download is damaged or the file changed (nothing was cached)")
        dataset = _unpack(archive, unpacked, url, name)
        (dataset / "download.json").write_text(json.dumps(
            {"url": url, **sums, "md5_checked": bool(expected), "bytes": size,
             "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
        if folder.exists():  # a folder without corpus.jsonl: left by hand or by an older layout
            shutil.rmtree(folder)
        os.replace(dataset, folder)
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)
    return folder


def _download(url: str, target: Path, show_progress: bool | None, timeout: float) -> tuple[int, dict[str, str]]:
    from tqdm.auto import tqdm

    md5, sha256 = hashlib.md5(), hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            disable = None if show_progress is None else not show_progress
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {url.rsplit('/', 1)[-1]}",
                      disable=disable) as bar:
                while block := response.read(CHUNK):
                    out.write(block)
                    md5.update(block)
                    sha256.update(block)
                    bar.update(len(block))
            size = out.tell()
    except urllib.error.HTTPError as error:
        raise DatasetError(f"cannot download {url}: HTTP {error.code} {error.reason}"
                           + (" (no such dataset?)" if error.code == 404 else "")) from None
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        raise DatasetError(f"cannot download {url} ({reason}); offline? pass a local folder with --dataset") from None
    if total is not None and size != total:
        raise DatasetError(f"{url}: the download stopped after {size} of {total} bytes")
    return size, {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


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
