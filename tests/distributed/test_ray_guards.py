"""What goes wrong on Ray fails fast and as one line, and what Ray reads is what one process reads:

- a cluster address where nothing answers fails in seconds (Ray itself retries ~13 minutes); ``--ray local``
  starts its own cluster whatever RAY_ADDRESS says;
- more shards than the cluster has CPUs still search (the searchers hold no CPU); ``--shards`` is checked against
  the documents before anything is encoded; a shard that does not open, or a model that does not exist, is the
  project's own one-line error, raised on the driver, not Ray's traceback;
- texts read by Ray Data (``mret embed --ray``) equal ``read_texts``' (the single-process path), with or without a
  title column, and a folder given as a URI is listed (``file://`` here, ``s3://`` the same way);
- a sharded build that fails leaves no manifest, so half an index never opens as whole;
- the temporary folder of a killed colbert ``write_output`` is swept by the next one.

Most run without a cluster (Ray's entry points stubbed where a test must not start one); three use the folder's
shared cluster."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from test_sharded_index import dense_data

from encoder.errors import ModelLoadError
from indexes import IndexInputError
from indexes.sharded import MANIFEST, ShardedIndex, build_sharded, shard_name
from modernretrieval.errors import ModernRetrievalError, SettingsError

pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install -e ".[distributed]"')
pa = pytest.importorskip("pyarrow")
import pyarrow.json as pajson  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402

from retrieval.distributed import HeadSpec, RayShardedIndex, RayUnavailableError, connect  # noqa: E402
from retrieval.distributed import cluster as cluster_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_init(monkeypatch):
    """Ray as if not initialized in this process, with ``ray.init`` recording its arguments instead of starting or
    joining anything (the folder's shared cluster, if up, is left alone)."""
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: calls.append(
        {"args": args, "RAY_ADDRESS": os.environ.get("RAY_ADDRESS"), **kwargs}))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    return calls


# -- joining a cluster --------------------------------------------------------------------------------------------

def test_an_address_where_nothing_answers_fails_in_seconds_with_one_line(fake_init):
    port = closed_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", f"localhost:{port}"):
        started = time.perf_counter()
        with pytest.raises(RayUnavailableError) as error:
            connect(address)
        message = str(error.value)
        assert time.perf_counter() - started < 10
        assert "\n" not in message and "nothing answers" in message and f":{port}" in message, message
    assert fake_init == []  # Ray was never asked to join it


def test_an_address_given_is_joined_even_where_ray_address_names_another(fake_init, monkeypatch):
    """Ray takes RAY_ADDRESS before its argument: `--ray HOST:PORT` would join (or wait ~13 minutes for) another
    cluster. "auto" is RAY_ADDRESS's, probed as well."""
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port()}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        connect(address)
    (call,) = fake_init
    assert call["address"] == address and call["RAY_ADDRESS"] == address
    assert os.environ["RAY_ADDRESS"] != address  # restored
    with pytest.raises(RayUnavailableError, match="nothing answers"):
        connect("auto")
    assert len(fake_init) == 1


def test_addresses_are_parsed_for_the_probe():
    assert cluster_module.host_port("HEAD:6379") == ("HEAD", 6379)
    assert cluster_module.host_port("ray://10.0.0.1:10001") == ("10.0.0.1", 10001)
    assert cluster_module.host_port("[::1]:6379") == ("::1", 6379)
    assert cluster_module.host_port("auto") is None and cluster_module.host_port("HEAD") is None


def test_local_starts_its_own_cluster_whatever_ray_address_says(fake_init, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port()}")
    cluster = connect("local", num_cpus=2)
    (call,) = fake_init
    assert call["address"] == "local" and call["num_cpus"] == 2  # "local": a new cluster, never RAY_ADDRESS's
    assert call["_node_ip_address"] == "127.0.0.1" and cluster.cpus == 2


def test_the_extra_installs_what_the_documented_addresses_need():
    """`ray://HEAD:10001` (documented in --help and the README) is Ray Client: ray[client]."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["distributed"]
    (ray_requirement,) = [r for r in extra if r.startswith("ray[")]
    assert {"data", "client"} <= set(ray_requirement.split("[")[1].split("]")[0].split(","))


# -- shards: resources, counts, errors ----------------------------------------------------------------------------

def test_shards_are_checked_against_the_documents_before_anything_runs(monkeypatch):
    from eval.datasets.beir import BeirDataset
    from retrieval.distributed import beir

    def never(*args, **kwargs):
        raise AssertionError("the cluster was joined before --shards was checked")

    monkeypatch.setattr(beir, "connect", never)
    monkeypatch.setattr(beir, "encode_parts", never)
    data = BeirDataset(corpus={f"d{i}": {"title": "", "text": "x"} for i in range(3)}, queries={"q": "x"},
                       qrels={"q": {"d0": 1}}, name="tiny")
    with pytest.raises(SettingsError, match="--shards 5 for 3 documents"):
        beir.beir_run_on_ray(data, HeadSpec("/nonexistent/model", "dense"), Path("unused"), shards=5)

    from retrieval.distributed.shards import check_shards

    check_shards(3, 3)
    for shards, documents in ((4, 3), (0, 3)):
        with pytest.raises(SettingsError, match=f"--shards {shards} for {documents} documents"):
            check_shards(shards, documents)


def test_actors_that_hold_cpus_for_good_are_refused_when_the_cluster_has_too_few():
    from retrieval.distributed.cluster import check_cpus

    check_cpus(8, 0, 2)  # searchers hold none: any number starts
    check_cpus(2, 1, 2)
    with pytest.raises(SettingsError, match="3 shard searchers of 1 CPU each need 3 CPUs; the Ray cluster has 2"):
        check_cpus(3, 1, 2, "shard searcher")


def test_more_shards_than_cpus_search_and_a_shard_that_does_not_open_is_one_line(ray_cluster, tmp_path):
    ids, vectors, queries = dense_data(n=30, n_queries=4)
    shards = ray_cluster.cpus + 1  # 3 on the folder's 2-CPU cluster: one searcher per CPU would wait forever
    with build_sharded(tmp_path / "s", "faiss", ids, vectors, shards, kind="flat") as local:
        want = local.search(queries, k=5)
    index = RayShardedIndex(tmp_path / "s")
    found: dict = {}
    search = threading.Thread(target=lambda: found.update(hits=index.search(queries, k=5)), daemon=True)
    search.start()
    search.join(90)
    index.close()  # ends a search still waiting for its actors (its ray.get then raises in the thread)
    search.join(30)
    assert found.get("hits") == want

    import shutil

    shutil.rmtree(tmp_path / "s" / shard_name(1))  # the manifest names a shard that is gone
    with pytest.raises(IndexInputError) as error:
        RayShardedIndex(tmp_path / "s")
    assert not isinstance(error.value, ray.exceptions.RayError)  # the shard's own error, not Ray's wrapper
    assert "\n" not in str(error.value) and "no index at" in str(error.value) and shard_name(1) in str(error.value)


def test_the_cause_of_a_ray_error_that_is_the_users_comes_out_as_itself():
    from retrieval.distributed.cluster import user_errors

    wrapped = ray.exceptions.RayTaskError("encode_chunk", "Traceback (most recent call last):\n  ...\n",
                                          ModelLoadError("no such model folder: /x")).as_instanceof_cause()
    assert isinstance(wrapped, ModelLoadError) and "\n" in str(wrapped)  # what Ray raises: a traceback
    with pytest.raises(ModelLoadError) as error:
        with user_errors():
            raise wrapped
    assert str(error.value) == "no such model folder: /x"
    annotated = ModelLoadError("no such model folder: /x\nFailed to apply UDF transform after 1/1 attempts (total "
                               "backoff 0.0s).\nTo change retry attempts, ...")  # as Ray Data leaves a map's error
    with pytest.raises(ModelLoadError) as error:
        with user_errors():
            raise ray.exceptions.RayTaskError("f", "tb", annotated).as_instanceof_cause()
    assert str(error.value) == "no such model folder: /x"
    with pytest.raises(ray.exceptions.RayTaskError):  # a bug stays as it is
        with user_errors():
            raise ray.exceptions.RayTaskError("f", "tb", KeyError("k")).as_instanceof_cause()


def test_a_model_that_does_not_exist_fails_on_the_driver_before_anything_starts(tmp_path, monkeypatch):
    from retrieval.distributed import blocks, encode
    from retrieval.distributed.files import Corpus, embed_corpus

    def never(*args, **kwargs):
        raise AssertionError("an actor pool was started for a model that does not exist")

    for module in (blocks, encode):
        monkeypatch.setattr(module, "connect", never)
    corpus = Corpus([], [np.array([5, 3])], None, ["in.jsonl"])
    for model in ("/nonexistent/model", "./typo", "no-slash-name"):
        with pytest.raises(ModelLoadError, match="no such model folder"):
            embed_corpus(HeadSpec(model, "dense"), corpus, tmp_path / "parts")
        with pytest.raises(ModelLoadError, match="no such model folder"):
            encode.encode_parts(HeadSpec(model, "dense"), tmp_path / "parts2", ["a text"])
    assert not (tmp_path / "parts").exists() and not (tmp_path / "parts2").exists()
    with pytest.raises(SettingsError):
        HeadSpec(str(tmp_path), "dense", pool_factor=2).check()  # pooling is for colbert
    HeadSpec(str(tmp_path), "dense").check()  # a folder: the actors read it
    HeadSpec("org/model", "dense").check()  # a hub id: the actors download it, not the driver


# -- reading files --------------------------------------------------------------------------------------------------

EDGES = [
    {"id": "a", "title": "A title", "text": "  text with edges \t"},
    {"id": "b", "title": None, "text": "\u00a0no title\n"},
    {"id": "c", "text": "  missing title  "},
    {"id": "d", "title": "", "text": "plain"},
    {"id": "e", "title": " spaced title ", "text": " x "},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepared(table) -> list[str]:
    from retrieval.distributed.files import _prepare

    return _prepare(table, "test").column("text").to_pylist()


def test_texts_on_ray_are_read_texts_with_or_without_a_title_column(tmp_path):
    """``_prepare`` (run by Ray Data's tasks on each block as pyarrow reads it) against ``read_texts``."""
    from retrieval.cli.embed import read_texts

    with_titles = write_jsonl(tmp_path / "titles.jsonl", EDGES)
    no_titles = write_jsonl(tmp_path / "plain.jsonl", [{"id": r["id"], "text": r["text"]} for r in EDGES])
    for path in (with_titles, no_titles):
        assert prepared(pajson.read_json(path)) == read_texts(path), path.name
    assert prepared(pa.table({"text": [r["text"] for r in EDGES]})) == read_texts(no_titles)  # a parquet's table
    assert prepared(pa.table({"text": ["x", None]})) == ["x", None]  # a missing text stays missing (then refused)


def test_a_uri_folder_is_listed_in_name_order(tmp_path):
    from retrieval.distributed.files import CorpusFilesError, corpus_files

    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("part-1.parquet", "part-0.parquet"):
        pq.write_table(pa.table({"text": ["x"]}), folder / name)
    (folder / "README.md").write_text("not a corpus file")
    uri = folder.as_uri()
    want = [f"{uri}/part-0.parquet", f"{uri}/part-1.parquet"]
    assert corpus_files([uri + "/"]) == ("parquet", want)
    assert corpus_files([uri]) == ("parquet", want)
    assert corpus_files([want[1]]) == ("parquet", [want[1]])  # a file's URI: as it is
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusFilesError, match="holds no .parquet or .jsonl file"):
        corpus_files([(tmp_path / "empty").as_uri()])
    with pytest.raises(CorpusFilesError, match="does not exist"):
        corpus_files([(tmp_path / "nowhere").as_uri()])


def test_a_uri_folder_read_on_ray_gives_read_texts(ray_cluster, tmp_path):
    from retrieval.cli.embed import read_texts
    from retrieval.distributed.files import read_corpus

    folder = tmp_path / "corpus"
    folder.mkdir()
    first = write_jsonl(folder / "a.jsonl", [{"text": r["text"]} for r in EDGES[:3]])  # no title column
    second = write_jsonl(folder / "b.jsonl", [{"text": r["text"]} for r in EDGES[3:]])
    corpus = read_corpus([folder.as_uri()])
    texts = [t for block in ray.get(corpus.blocks) for t in block.column("text").to_pylist()]
    assert texts == read_texts(first) + read_texts(second)
    assert corpus.paths == [first.as_uri(), second.as_uri()]


# -- a sharded build that fails -------------------------------------------------------------------------------------

def test_a_failed_rebuild_leaves_no_manifest_so_half_an_index_never_opens(tmp_path):
    ids, vectors, queries = dense_data(n=60)
    path = tmp_path / "s"
    build_sharded(path, "faiss", ids, vectors, 3, kind="flat").close()
    other = [f"x{i}" for i in range(60)]
    broken = vectors.copy()
    broken[45] = np.nan  # in the last shard: the first two are rebuilt with the new documents, then it fails
    with pytest.raises(IndexInputError):
        build_sharded(path, "faiss", other, broken, 3, kind="flat")
    assert not (path / MANIFEST).exists()
    with pytest.raises(IndexInputError, match="not a sharded index .*did not finish"):
        ShardedIndex(path)
    with build_sharded(path, "faiss", other, vectors, 3, kind="flat") as index:  # the rerun finishes it
        assert len(index) == 60 and {h[0][0] for h in index.search(queries, k=1)} <= set(other)


def test_a_manifest_over_complete_shards_is_kept_at_the_start_of_a_build(tmp_path):
    from indexes.sharded import start_build

    ids, vectors, _ = dense_data(n=30)
    path = tmp_path / "s"
    build_sharded(path, "faiss", ids, vectors, 2, kind="flat").close()
    start_build(path, "faiss", [ids[:15], ids[15:]])  # the same shards: a rerun that keeps them all
    assert (path / MANIFEST).exists()
    start_build(path, "faiss", [ids[:10], ids[10:20], ids[20:]])  # other shards: gone before any is written
    assert not (path / MANIFEST).exists()


# -- the colbert output's temporary folder --------------------------------------------------------------------------

class TokenHead:
    """A head without a model: a text of n characters is n token vectors of 4 dimensions (its characters' codes)."""

    kind = "colbert"

    def tokenize(self, texts, is_query):
        return [list(text) for text in texts]

    def encode_documents(self, texts, show_progress=None):
        return [np.array([[ord(c), i, 1.0, 0.0] for i, c in enumerate(text)], dtype=np.float32) for text in texts]

    encode_queries = encode_documents


def test_a_killed_colbert_write_leaves_a_folder_the_next_write_removes(tmp_path):
    from retrieval.distributed.encode import EncodeReport
    from retrieval.distributed.files import FilesRun, write_output
    from retrieval.encoding import chunk_plan, encode_texts, texts_digest

    texts = ["alpha", "be", "gamma ray", "d"]
    encode_texts(TokenHead(), texts, False, chunk_texts=2, parts=tmp_path / "parts")
    lengths = np.array([len(t) for t in texts])
    digests = {n: texts_digest([texts[i] for i in chunk], False) for n, chunk in enumerate(chunk_plan(lengths, 2))}
    run = FilesRun(EncodeReport(2, 2, 0, 4, 1, 1, 0, 0.0), None, tmp_path / "parts", lengths, digests, False, 2)
    output = tmp_path / "out.npz"
    stale = tmp_path / ".out.npz.k1ll3d"  # the temporary folder (TemporaryDirectory's name) a kill left
    stale.mkdir()
    (stale / "embeddings.npy").write_bytes(b"\0" * 4096)
    unrelated = tmp_path / ".other.npz.k1ll3d"
    unrelated.mkdir()
    assert write_output(run, output, "colbert") == (sum(lengths), 4)
    assert not stale.exists() and unrelated.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.npz")] == []
    packed = np.load(output)
    assert list(packed["offsets"]) == [0, 5, 7, 16, 17]
    assert np.array_equal(packed["embeddings"][7:16], TokenHead().encode_documents(["gamma ray"])[0])


def test_errors_named_here_are_the_projects():
    assert issubclass(RayUnavailableError, ModernRetrievalError)
    from retrieval.distributed.encode import MissingPartError

    assert issubclass(MissingPartError, ModernRetrievalError) and issubclass(MissingPartError, RuntimeError)
