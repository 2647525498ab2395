"""BEIR downloads for real (pooch and requests over HTTP), from a server on 127.0.0.1 serving zips in the official
layout (a top folder named after the dataset holding corpus.jsonl, queries.jsonl and qrels/test.tsv): download,
md5 check, unzip, cache, and a second run that asks the server nothing; damaged, cut-off, escaping and missing
archives and an unreachable server, each a one-line DatasetError that leaves nothing in the cache. Then
``mret eval beir`` on a downloaded dataset. Nothing here reaches beyond 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.datasets.beir import DatasetError, load_beir
from eval.datasets.download import fetch_beir
from retrieval.cli import app

CORPUS = [
    {"_id": "d1", "title": "Photosynthesis", "text": "Plants turn light, water and carbon dioxide into sugar."},
    {"_id": "d2", "title": "Volcanoes", "text": "Magma rises through the crust and erupts as lava."},
    {"_id": "d3", "title": "Tides", "text": "The moon's gravity pulls the oceans, raising tides twice a day."},
    {"_id": "d4", "title": "", "text": "Vaccines train the immune system to recognise a pathogen."},
]
QUERIES = [{"_id": "q1", "text": "how do plants make sugar from light"},
           {"_id": "q2", "text": "why are there two tides each day"},
           {"_id": "q3", "text": "unjudged query"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\n"


def beir_zip(name: str, extra: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{name}/corpus.jsonl", "".join(json.dumps(d) + "\n" for d in CORPUS))
        zf.writestr(f"{name}/queries.jsonl", "".join(json.dumps(q) + "\n" for q in QUERIES))
        zf.writestr(f"{name}/qrels/test.tsv", QRELS)
        for path, content in (extra or {}).items():
            zf.writestr(path, content)
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; yields (www folder, base address, list of requested paths). A file with a
    sibling NAME.truncate is cut off halfway, after a Content-Length that announces all of it."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            if self.headers.get("Range"):  # the client sees a dropped connection, and its test fails
                raise AssertionError("a download must restart whole, never ask for a byte range")
            served = root / self.path.lstrip("/")
            if served.with_name(served.name + ".truncate").exists():  # announce the whole file, send half, hang up
                data = served.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def publish(root: Path, name: str, data: bytes) -> str:
    (root / f"{name}.zip").write_bytes(data)
    return hashlib.md5(data).hexdigest()


def test_download_checks_unzips_and_caches(server, tmp_path):
    root, base, requests = server
    md5 = publish(root, "tiny", beir_zip("tiny"))
    folder = fetch_beir("tiny", tmp_path / "cache", url=base + "/{name}.zip", md5=md5)
    assert folder == tmp_path / "cache" / "datasets" / "beir" / "tiny"
    data = load_beir(folder)
    assert list(data.corpus) == ["d1", "d2", "d3", "d4"] and list(data.queries) == ["q1", "q2"]
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}} and data.name == "tiny"
    record = json.loads((folder / "download.json").read_text())
    assert record["md5"] == md5 and record["md5_checked"] and record["bytes"] == (root / "tiny.zip").stat().st_size
    assert requests == ["/tiny.zip"]
    (root / "tiny.zip").unlink()  # the second run must not need the server
    assert fetch_beir("tiny", tmp_path / "cache", url=base + "/{name}.zip", md5=md5) == folder
    assert requests == ["/tiny.zip"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny"]  # no temporary files left


def test_a_damaged_download_is_refused_and_not_cached(server, tmp_path):
    root, base, _ = server
    publish(root, "tiny", beir_zip("tiny"))
    with pytest.raises(DatasetError, match="does not match the published"):
        fetch_beir("tiny", tmp_path / "cache", url=base + "/{name}.zip", md5="0" * 32)
    assert list((tmp_path / "cache" / "datasets" / "beir").iterdir()) == []


def test_published_md5_is_checked_by_name(server, tmp_path):
    """scifact has a published md5: a zip that is not the official one is refused without being told the sum."""
    root, base, _ = server
    publish(root, "scifact", beir_zip("scifact"))
    with pytest.raises(DatasetError, match="5f7d1de60b170fc8027bb7898e2efca1"):
        fetch_beir("scifact", tmp_path / "cache", url=base + "/{name}.zip")


def test_missing_dataset_and_unreachable_server(server, tmp_path):
    _, base, _ = server
    with pytest.raises(DatasetError, match="HTTP 404"):
        fetch_beir("nope", tmp_path / "cache", url=base + "/{name}.zip")
    # the socket's own reason, not requests' wrapping of urllib3's wrapping of it
    with pytest.raises(DatasetError, match=r"^cannot download http://127.0.0.1:9/tiny.zip \(\[Errno 111\] Connection "
                                           r"refused\); offline\? pass a local folder with --dataset$"):
        fetch_beir("tiny", tmp_path / "cache", url="http://127.0.0.1:9/{name}.zip", timeout=5)
    assert list((tmp_path / "cache" / "datasets" / "beir").iterdir()) == []


def test_offline_is_one_line_from_the_command_line(tmp_path, monkeypatch):
    """mret eval beir with no network: exit code 2 and the reason on one line, no traceback (the dataset is
    fetched before the model is loaded, so no model is needed)."""
    monkeypatch.setenv("MRET_BEIR_URL", "http://127.0.0.1:9/{name}.zip")
    result = CliRunner().invoke(app, ["eval", "beir", "--dataset", "tiny", "--model", "unused",
                                      "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "offline? pass a local folder with --dataset" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args,message", [(["--depth", "50"], "--depth must be at least 100"),
                                          (["--kind", "colbert", "--index", "hnsw"], "does not apply to --kind colbert")])
def test_a_settings_mistake_fails_before_the_download(tmp_path, monkeypatch, args, message):
    """Settings are checked before the dataset is read or fetched: the download (here one that could not happen)
    is never tried for a run that would stop on its settings."""
    monkeypatch.setenv("MRET_BEIR_URL", "http://127.0.0.1:9/{name}.zip")
    result = CliRunner().invoke(app, ["eval", "beir", "--dataset", "tiny", "--model", "unused", *args,
                                      "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "offline" not in result.output and not (tmp_path / "c").exists()


def test_a_cut_off_download_is_refused_then_restarts_whole(server, tmp_path):
    """Without a published md5 only the Content-Length can tell that the body stopped short; nothing is cached,
    and the next run downloads the whole file again (no byte ranges: see the download module on resuming)."""
    root, base, requests = server
    data = beir_zip("tiny")
    publish(root, "tiny", data)
    (root / "tiny.zip.truncate").touch()
    with pytest.raises(DatasetError, match="the download stopped early"):
        fetch_beir("tiny", tmp_path / "cache", url=base + "/{name}.zip")
    assert list((tmp_path / "cache" / "datasets" / "beir").iterdir()) == []
    (root / "tiny.zip.truncate").unlink()
    folder = fetch_beir("tiny", tmp_path / "cache", url=base + "/{name}.zip")
    assert requests == ["/tiny.zip", "/tiny.zip"]
    record = json.loads((folder / "download.json").read_text())  # no published sum: both recorded, none checked
    assert not record["md5_checked"] and record["bytes"] == len(data)
    assert record["md5"] == hashlib.md5(data).hexdigest() and record["sha256"] == hashlib.sha256(data).hexdigest()


def test_archive_members_cannot_leave_the_cache(server, tmp_path):
    root, base, _ = server
    md5 = publish(root, "evil", beir_zip("evil", {"../../escaped.txt": "x"}))
    with pytest.raises(DatasetError, match="outside its folder"):
        fetch_beir("evil", tmp_path / "cache", url=base + "/{name}.zip", md5=md5)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_mret_eval_downloads_then_reuses_everything(server, tmp_path, minilm_folder, monkeypatch):
    root, base, requests = server
    publish(root, "tiny", beir_zip("tiny"))
    monkeypatch.setenv("MRET_BEIR_URL", base + "/{name}.zip")
    runner = CliRunner()
    args = ["eval", "beir", "--dataset", "tiny", "--model", str(minilm_folder), "--cache-dir", str(tmp_path / "c"),
            "--output", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_queries"] == 2 and metrics["dataset"]["name"] == "tiny"
    assert all(0 <= metrics[k] <= 1 for k in ("ndcg@10", "recall@100", "mrr@10", "map"))
    assert metrics["ndcg@10"] == 1.0  # each query's one relevant passage is unmistakable for MiniLM
    run = [line.split() for line in (tmp_path / "out" / "run.trec").read_text().splitlines()]
    assert {r[0] for r in run} == {"q1", "q2"} and all(r[1] == "Q0" and len(r) == 6 for r in run)
    assert [r[2] for r in run if r[0] == "q1"][0] == "d1" and [r[3] for r in run if r[0] == "q1"] == ["1", "2", "3", "4"]

    embeddings = list((tmp_path / "c" / "embeddings").glob("*.npz"))
    assert len(embeddings) == 1 and len(requests) == 1
    mtime = embeddings[0].stat().st_mtime_ns
    result = runner.invoke(app, args)  # again: nothing downloaded, nothing encoded
    assert result.exit_code == 0, result.output
    assert len(requests) == 1 and embeddings[0].stat().st_mtime_ns == mtime
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["ndcg@10"] == metrics["ndcg@10"]


def cqadupstack_zip(forums: list[str]) -> bytes:
    """BEIR's cqadupstack.zip layout: one dataset per forum under the top folder (each forum's ids its own here)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for forum in forums:
            corpus = [{**d, "_id": f"{forum}-{d['_id']}"} for d in CORPUS]
            zf.writestr(f"cqadupstack/{forum}/corpus.jsonl", "".join(json.dumps(d) + "\n" for d in corpus))
            zf.writestr(f"cqadupstack/{forum}/queries.jsonl", "".join(json.dumps(q) + "\n" for q in QUERIES))
            zf.writestr(f"cqadupstack/{forum}/qrels/test.tsv", QRELS.replace("\td", f"\t{forum}-d"))
    return buffer.getvalue()


def test_cqadupstack_is_cached_whole_and_a_forum_is_named_by_its_folder(server, tmp_path):
    """The zip holds one folder per forum: it is downloaded once (the cache recognises the unpacked folders), and
    "cqadupstack/android" names one forum, as BEIR's users name it."""
    root, base, requests = server
    md5 = publish(root, "cqadupstack", cqadupstack_zip(["android", "gis"]))
    url, cache = base + "/{name}.zip", tmp_path / "cache"
    folder = fetch_beir("cqadupstack", cache, url=url, md5=md5)
    assert folder == cache / "datasets" / "beir" / "cqadupstack" and requests == ["/cqadupstack.zip"]
    (root / "cqadupstack.zip").unlink()  # every later run must not need the server
    assert fetch_beir("cqadupstack", cache, url=url, md5=md5) == folder
    android = fetch_beir("cqadupstack/android", cache, url=url, md5=md5)
    assert android == folder / "android"
    assert load_beir(android).qrels == {"q1": {"android-d1": 1}, "q2": {"android-d3": 2}}
    gis = fetch_beir("cqadupstack/gis", cache, url=url, md5=md5)
    assert list(load_beir(gis).corpus) == ["gis-d1", "gis-d2", "gis-d3", "gis-d4"]
    assert requests == ["/cqadupstack.zip"]
    with pytest.raises(DatasetError, match=r"holds no cqadupstack/stats; it holds: cqadupstack/android, "
                                           r"cqadupstack/gis$"):
        fetch_beir("cqadupstack/stats", cache, url=url, md5=md5)  # a real forum this zip lacks
    assert sorted(p.name for p in android.parent.parent.iterdir()) == ["cqadupstack"]  # no temporary files left


@pytest.mark.parametrize("name, message", [
    ("cqadupstack/cooking", "'cooking' is not a cqadupstack dataset; name one of: cqadupstack/android, "
                            "cqadupstack/english, cqadupstack/gaming, cqadupstack/gis, cqadupstack/mathematica, "
                            "cqadupstack/physics, cqadupstack/programmers, cqadupstack/stats, cqadupstack/tex, "
                            "cqadupstack/unix, cqadupstack/webmasters, cqadupstack/wordpress"),
    ("cqadupstack/android/x", "'android/x' is not a cqadupstack dataset"),
    ("scifact/android", "scifact/android is not a BEIR dataset name: only cqadupstack is named by its parts"),
    ("../scifact", "'../scifact' is not a BEIR dataset name"),
], ids=["unknown-forum", "nested", "not-a-zip-of-several", "dot-dot"])
def test_an_unknown_forum_is_refused_before_any_download(server, tmp_path, name, message):
    _, base, requests = server
    with pytest.raises(DatasetError) as raised:
        fetch_beir(name, tmp_path / "cache", url=base + "/{name}.zip")
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert requests == []


def test_mret_eval_a_cqadupstack_forum(server, tmp_path, monkeypatch):
    """On the command line (BM25: no model): a forum is evaluated, the zip fetched once; the zip's name alone or an
    unknown forum is one error line naming the forums."""
    import eval.datasets.download as download

    root, base, requests = server
    monkeypatch.setitem(download.BEIR_MD5, "cqadupstack", publish(root, "cqadupstack",
                                                                  cqadupstack_zip(["android", "gis"])))
    monkeypatch.setenv("MRET_BEIR_URL", base + "/{name}.zip")
    runner = CliRunner()

    def mret_eval(dataset: str):
        return runner.invoke(app, ["eval", "beir", "--dataset", dataset, "--mode", "lexical", "--cache-dir",
                                   str(tmp_path / "c"), "--output", str(tmp_path / "out")])

    for _ in range(2):
        result = mret_eval("cqadupstack/android")
        assert result.exit_code == 0, result.output
        metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert metrics["dataset"]["name"] == "cqadupstack/android" and metrics["num_queries"] == 2
        assert requests == ["/cqadupstack.zip"]
    for dataset, message in (("cqadupstack", "cqadupstack holds one dataset per folder; name one: "
                                             "cqadupstack/android, cqadupstack/gis"),
                             ("cqadupstack/cooking", "'cooking' is not a cqadupstack dataset; name one of: "
                                                     "cqadupstack/android, cqadupstack/english")):
        result = mret_eval(dataset)
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    assert requests == ["/cqadupstack.zip"]


def test_an_mldr_language_named_twice_differently_is_refused_before_the_download(tmp_path, monkeypatch):
    """`--dataset de --language en`: which language was meant is not guessed (the download took --language and the
    name the run was reported under too, so German was asked for and English fetched)."""
    import eval.datasets.mldr as mldr

    monkeypatch.setattr(mldr, "download_mldr", lambda *a, **k: pytest.fail("downloaded"))
    result = CliRunner().invoke(app, ["eval", "mldr", "--dataset", "de", "--language", "en", "--model", "unused",
                                      "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--language en disagrees" in result.output, result.output
