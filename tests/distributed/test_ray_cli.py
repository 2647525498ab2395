"""The command line's --ray: `mret index --ray local` encodes on Ray actors and makes the index a local run makes
(the same chunks, the same search results), and `mret eval --ray local --shards 2` scores exactly what the
single-node runner scores; mistakes are one line and exit code 2. A tiny random ModernBERT as the model."""

from __future__ import annotations

import json  # also the indexed tree: the standard library's json package

import pytest
from support import TOKENIZER_DIR, copy_package, dense_model_folder
from typer.testing import CliRunner

pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[distributed]"')
pytestmark = pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").exists(), reason="../shared is missing")

from retrieval.cli import build_app  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return dense_model_folder(tmp_path_factory.mktemp("ray-cli") / "model")


def mret(*args: str) -> str:
    result = CliRunner().invoke(build_app(), [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_index_on_ray_equals_a_local_index(ray_cluster, model, tmp_path):
    copy_package(json, tmp_path / "tree" / "json")
    for name in ("local", "ray"):
        extra = ["--ray", "local"] if name == "ray" else []
        mret("index", tmp_path / "tree", "--index-dir", tmp_path / name, "--model", model, "--max-length", "128",
             "--device", "cpu", "--dtype", "float32", *extra)
    for query in ("decode a JSON document", "encoder for python objects", "scanner"):
        local = json.loads(mret("search", query, "--json", "--index-dir", tmp_path / "local", "--mode", "semantic"))
        remote = json.loads(mret("search", query, "--json", "--index-dir", tmp_path / "ray", "--mode", "semantic"))
        assert [(h["path"], h["start_line"]) for h in remote] == [(h["path"], h["start_line"]) for h in local]
        assert all(abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(remote, local))


def test_eval_on_ray_scores_what_the_single_node_runner_scores(ray_cluster, model, tmp_path):
    from eval.datasets.beir import write_beir

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    corpus = {f"d{i}": {"title": "", "text": " ".join(words[(i + j) % len(words)] for j in range(3 + i % 5))}
              for i in range(40)}
    queries = {f"q{i}": " ".join(words[i % len(words): i % len(words) + 2]) for i in range(12)}
    qrels = {q: {f"d{(3 * i) % 40}": 1} for i, q in enumerate(queries)}
    write_beir(tmp_path / "data", corpus, queries, {"test": qrels})
    common = ["eval", "folder", "--dataset", tmp_path / "data", "--model", model, "--cache-dir", tmp_path / "cache",
              "--device", "cpu"]
    mret(*common, "--output", tmp_path / "single")
    mret(*common, "--output", tmp_path / "ray", "--ray", "local", "--shards", "2")
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    ray = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    for key in ("ndcg@10", "recall@100", "mrr@10", "map"):
        assert ray[key] == pytest.approx(single[key], abs=1e-9), key
    assert ray["ray"]["shards"] == 2 and ray["ray"]["encoding"]["workers"] >= 1
    assert (tmp_path / "ray" / "run.trec").read_text().count("\n") > 0

    wrong = CliRunner().invoke(build_app(), [str(a) for a in common] + ["--ray", "local", "--mode", "hybrid"])
    assert wrong.exit_code == 2 and "error:" in wrong.output and "--ray runs --mode semantic" in wrong.output
    assert "Traceback" not in wrong.output


def trec_rows(path) -> list[tuple[str, str, int, float]]:
    """run.trec's rows as (query, document, rank, score); the tag (last column) names the runner."""
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(q, d, int(rank), float(score)) for q, _, d, rank, score, _ in rows]


def test_eval_on_ray_keeps_depth_documents_without_own_ids_as_the_single_node_runner(ray_cluster, model, tmp_path):
    """More documents than --depth, and queries whose ids are documents of the corpus (as in Quora, ArguAna): the
    Ray run keeps the top --depth once a query's own id is dropped, as the single-node runner does, so MAP (which
    counts every document of the run) and run.trec are the same. With keep_own_ids (``mret eval --keep-own-ids``,
    which the command line still refuses with --ray) ``ray_eval`` keeps them as the single node does."""
    from eval.datasets.beir import load_beir, write_beir
    from eval.runner import EvalSettings
    from retrieval.cli.distributed import ray_eval

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    # more documents than --depth (the run keeps depth once own ids are dropped), each text its own (number i):
    # documents tied on their score could be cut at the 100th place differently by one index and by two shards
    corpus = {f"d{i}": {"title": "", "text": " ".join(words[(i + j) % len(words)] for j in range(3 + i % 5)) + f" {i}"}
              for i in range(120)}
    queries = {**{f"q{i}": " ".join(words[i % len(words): i % len(words) + 2]) for i in range(8)},
               **{f"d{i}": corpus[f"d{i}"]["text"] for i in (2, 7, 19, 30)}}  # own id: the best match
    qrels = {q: {f"d{(3 * i) % 40}": 1, f"d{(7 * i + 5) % 40}": 1} for i, q in enumerate(queries)}
    qrels["d7"]["d7"] = 1  # judged on its own id: scored with keep_own_ids only
    write_beir(tmp_path / "data", corpus, queries, {"test": qrels})
    common = ["eval", "folder", "--dataset", tmp_path / "data", "--model", model, "--cache-dir", tmp_path / "cache",
              "--device", "cpu", "--depth", "100"]
    for keep in (False, True):
        name = "keep" if keep else "drop"
        mret(*common, *(["--keep-own-ids"] if keep else []), "--output", tmp_path / f"single-{name}")
        if keep:
            settings = EvalSettings(str(model), "dense", "flat", depth=100, device="cpu", keep_own_ids=True)
            ray_eval(load_beir(tmp_path / "data"), settings, tmp_path / "ray-keep", tmp_path / "cache", "local", 2)
        else:
            mret(*common, "--output", tmp_path / "ray-drop", "--ray", "local", "--shards", "2")
        single = json.loads((tmp_path / f"single-{name}" / "metrics.json").read_text())
        ray = json.loads((tmp_path / f"ray-{name}" / "metrics.json").read_text())
        for key in ("ndcg@10", "recall@100", "mrr@10", "map"):
            assert ray[key] == pytest.approx(single[key], abs=1e-9), (name, key)
        want, got = trec_rows(tmp_path / f"single-{name}" / "run.trec"), trec_rows(tmp_path / f"ray-{name}" / "run.trec")
        assert [row[:3] for row in got] == [row[:3] for row in want], name
        assert all(abs(a[3] - b[3]) <= 1e-5 for a, b in zip(got, want))
        assert {q: sum(row[0] == q for row in got) for q in queries} == dict.fromkeys(queries, 100)
        own = {(q, d) for q, d, _, _ in got if q == d}
        assert own == ({(q, q) for q in ("d2", "d7", "d19", "d30")} if keep else set()), name
