"""The evaluation runner on real data: SciFact subsets (60 test queries and their relevant documents, with 100 other
documents for the dense runs and 300 for the ColBERT and PLAID one, written in the BEIR layout) with
all-MiniLM-L6-v2, checked against independent computations: the run file scored directly by pytrec_eval, exact
search over independently encoded vectors, exhaustive MaxSim in numpy. The full SciFact runs (minutes on 2 cores)
are in the README. Then the command line's answers to user mistakes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
from typer.testing import CliRunner

from eval.datasets.beir import write_beir
from eval.metrics import evaluate, exact_search
from eval.runner import EvalSettings, run_eval
from retrieval.cli import app

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"  # git-ignored; the subset and its embeddings are reused between local runs
runner = CliRunner()


@pytest.fixture(scope="module")
def subset(scifact_small_subset):
    """The dense runs' data (the session's small subset, which tests/eval/test_scifact.py encodes with both
    encoders): the checks below compare computations over the same texts, which needs no large corpus."""
    return scifact_small_subset


def scored_run_file(path: Path, qrels) -> float:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        query_id, q0, doc_id, rank, score, _ = line.split()
        run.setdefault(query_id, {})[doc_id] = float(score)
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([per_query.get(q, {}).get("ndcg_cut_10", 0.0) for q in qrels]))


@pytest.fixture(scope="module")
def dense_runs(subset, minilm_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {index: run_eval(subset, EvalSettings(str(minilm_folder), "dense", index), out / index, CACHE, False)
            | {"output": out / index} for index in ("flat", "hnsw")}


def test_dense_flat_equals_exact_search_on_independent_vectors(subset, dense_runs, scifact_small_dense,
                                                              scifact_small_reference):
    """The runner (cache, index, search, metrics, files) against exact search over sentence-transformers' vectors
    of the same texts: an independent encoder and search."""
    flat = dense_runs["flat"]
    assert flat["embeddings_cache"] == str(scifact_small_dense.path)  # the session's encoding, read from the cache
    doc_ids, query_ids = list(subset.corpus), list(subset.queries)
    documents, queries = scifact_small_reference
    run = exact_search(queries, documents, doc_ids, query_ids, k=100)
    expected = evaluate(run, subset.qrels)
    for key in ("ndcg@10", "recall@100", "mrr@10", "map"):
        assert flat[key] == pytest.approx(expected[key], abs=1e-4), key
    assert flat["num_queries"] == 60
    assert scored_run_file(flat["output"] / "run.trec", subset.qrels) == pytest.approx(flat["ndcg@10"], abs=1e-9)
    saved = json.loads((flat["output"] / "metrics.json").read_text())
    assert saved["ndcg@10"] == flat["ndcg@10"] and saved["index"]["kind"] == "flat"
    assert {"versions", "device", "timings", "settings", "model"} <= set(saved)
    assert saved["tokens_per_s"] is None or saved["tokens_per_s"] > 0


def test_hnsw_within_half_a_point_of_flat(dense_runs):
    assert abs(dense_runs["hnsw"]["ndcg@10"] - dense_runs["flat"]["ndcg@10"]) <= 0.005
    assert dense_runs["hnsw"]["index"]["kind"] == "hnsw"


def test_colbert_exhaustive_equals_numpy_maxsim_and_plaid_is_close(scifact_subset, scifact_subset_tokens,
                                                                   minilm_folder, tmp_path):
    """The runner's index, search and metrics against MaxSim in numpy over the same token vectors (the session's
    encoding of the subset, which the runner reads from the cache; that the cached encoding equals the head's own
    is tests/eval/test_encode_cache.py's job)."""
    settings = dict(model=str(minilm_folder), kind="colbert", token_embeddings=True)
    subset = scifact_subset  # the multi-vector tests' subset: PLAID's tolerance below is set for its size
    exhaustive = run_eval(subset, EvalSettings(index="flat", **settings), tmp_path / "flat", CACHE, False)
    plaid = run_eval(subset, EvalSettings(index="plaid", **settings), tmp_path / "plaid", CACHE, False)

    tokens = scifact_subset_tokens
    assert exhaustive["embeddings_cache"] == str(tokens.path)  # the same vectors, not encoded twice
    run = {}
    for i, query_id in enumerate(tokens.query_ids):
        scores = np.maximum.reduceat(tokens.query(i) @ tokens.docs.T, tokens.doc_offsets[:-1], axis=1).sum(axis=0)
        top = np.argsort(-scores)[:100]
        run[query_id] = {tokens.doc_ids[j]: float(scores[j]) for j in top}
    expected = evaluate(run, subset.qrels)
    assert exhaustive["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-4)
    assert exhaustive["recall@100"] == pytest.approx(expected["recall@100"], abs=1e-4)
    # PLAID at 2 bits on ~90k tokens: the full-SciFact run (README) is within 0.005; on 60 queries one swapped
    # document moves nDCG@10 by up to ~0.015, so the subset gets that much room
    assert abs(plaid["ndcg@10"] - exhaustive["ndcg@10"]) <= 0.015
    assert plaid["index"]["kind"] == "plaid" and plaid["index"]["stats"]["bytes_per_token"] > 0


def test_an_interrupted_index_build_is_rebuilt(subset, dense_runs, minilm_folder, tmp_path):
    """The index cache is reused only when complete: an index missing documents is built again."""
    from indexes import FaissIndex

    folder = Path(dense_runs["flat"]["index"]["folder"])
    index = FaissIndex.open(folder)
    index.remove(list(subset.corpus)[:5])
    index.close()
    again = run_eval(subset, EvalSettings(str(minilm_folder), "dense", "flat"), tmp_path, CACHE, False)
    # exact: the rebuilt index holds the same cached vectors, added in the same order, searched by the same code
    assert again["ndcg@10"] == dense_runs["flat"]["ndcg@10"]
    assert len(FaissIndex.open(folder)) == len(subset.corpus)


@pytest.mark.parametrize("setup,args,message", [
    (None, ["folder", "--dataset", "/nonexistent/x"], "is not a folder"),
    ("bad-json", ["folder"], "corpus.jsonl:2: not valid JSON"),
    ("no-split", ["folder", "--split", "dev"], "qrels/dev.tsv is missing (its qrels splits: test)"),
    ("ok", ["folder", "--index", "plaid"], "--index plaid does not apply to --kind dense"),
    ("ok", ["folder", "--kind", "colbert", "--index", "hnsw"], "does not apply to --kind colbert"),
    ("ok", ["folder", "--nbits", "3"], "--nbits must be 1, 2 or 4"),
    ("ok", ["folder", "--max-length", "100000"], "--max-length must be between 8 and 512"),
    ("ok", ["folder", "--model", "/nonexistent/model"], "error:"),
])
def test_mistakes_end_in_one_clear_line(tmp_path, minilm_folder, setup, args, message):
    folder = tmp_path / "data"
    if setup:
        write_beir(folder, {"d1": {"title": "", "text": "a document"}}, {"q1": "a query"}, {"test": {"q1": {"d1": 1}}})
    if setup == "bad-json":
        with open(folder / "corpus.jsonl", "a") as f:
            f.write("{broken\n")
    if "--dataset" not in args:
        args = args[:1] + ["--dataset", str(folder)] + args[1:]
    if "--model" not in args:
        args = args + ["--model", str(minilm_folder)]
    result = runner.invoke(app, ["eval", *args, "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def read_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        query_id, _, doc_id, _, score, _ = line.split()
        run.setdefault(query_id, {})[doc_id] = float(score)
    return run


def test_lexical_mode_is_bm25_over_the_store_and_hybrid_fuses_it_with_the_model(subset, dense_runs, minilm_folder,
                                                                                 tmp_path):
    """--mode lexical: no model, the store's BM25 (title and text as one field) with Pyserini's k1, the published
    BM25 figures beside it; --mode hybrid: the flat run fused with that BM25 run (retrieval.fusion's default)."""
    from indexes import Document, DocumentStore
    from retrieval.fusion import fuse

    lexical = run_eval(subset, EvalSettings("unused-model", mode="lexical"), tmp_path / "lexical", CACHE, False)
    assert lexical["settings"]["model"] == "bm25" and lexical["num_queries"] == 60
    from eval.published import published_scores

    assert [p["value"] for p in published_scores("bm25", "scifact", "lexical")] == [0.679, 0.665]  # flat, multifield
    store = DocumentStore(tmp_path / "reference.sqlite")
    doc_ids = list(subset.corpus)
    store.put([Document(i, text=t) for i, t in zip(doc_ids, subset.document_texts(doc_ids))])
    expected = {q: dict(store.lexical_search(subset.queries[q], 101))
                for q in subset.queries}
    assert lexical["ndcg@10"] == pytest.approx(evaluate(expected, subset.qrels)["ndcg@10"], abs=1e-9)
    assert lexical["ndcg@10"] > 0.5  # BM25 is strong on SciFact (0.689 on the whole set)

    hybrid = run_eval(subset, EvalSettings(str(minilm_folder), "dense", "flat", mode="hybrid"), tmp_path / "hybrid",
                      CACHE, False)
    semantic = read_run(dense_runs["flat"]["output"] / "run.trec")
    fused = {q: dict(fuse(sorted(semantic[q].items(), key=lambda item: -item[1]),
                          sorted(expected[q].items(), key=lambda item: -item[1]), 101)) for q in subset.queries}
    assert hybrid["ndcg@10"] == pytest.approx(evaluate(fused, subset.qrels)["ndcg@10"], abs=1e-6)
    assert hybrid["ndcg@10"] > max(lexical["ndcg@10"], dense_runs["flat"]["ndcg@10"]) - 0.02
    with pytest.raises(Exception, match="--mode must be one of"):
        run_eval(subset, EvalSettings(str(minilm_folder), mode="fuzzy"), tmp_path / "bad", CACHE, False)


def test_own_ids_are_dropped_as_beir_does_with_a_warning_or_kept(tmp_path):
    """A query whose own id is in the corpus and judged relevant (a duplicate-question set judged on itself): by
    default dropped from its results as BEIR does (q1 scores 0) with one warning counting such queries;
    --keep-own-ids scores it, and run.trec holds it. BM25 (--mode lexical): no model."""
    folder = tmp_path / "data"
    write_beir(folder, {"q1": {"title": "", "text": "how do the tides work"},
                        "d1": {"title": "", "text": "the moon pulls the oceans"},
                        "d2": {"title": "", "text": "volcano lava erupts"}},
               {"q1": "how do the tides work", "q2": "volcano lava"}, {"test": {"q1": {"q1": 1}, "q2": {"d2": 1}}})

    def mret_eval(output: str, *extra: str):
        args = ["eval", "folder", "--dataset", str(folder), "--mode", "lexical", "--cache-dir",
                str(tmp_path / "cache"), "--output", str(tmp_path / output), *extra]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        own = [str(w.message) for w in caught if "own id" in str(w.message)]
        run = (tmp_path / output / "run.trec").read_text().splitlines()
        return json.loads((tmp_path / output / "metrics.json").read_text()), own, run

    metrics, own, run = mret_eval("dropped")
    assert own == ["1 of 2 queries have their own id judged relevant, but a query's own id is dropped from its "
                   "results as BEIR does, so these judgements cannot be retrieved (first: 'q1'; --keep-own-ids "
                   "scores them)"]
    assert metrics["ndcg@10"] == 0.5 and not metrics["settings"]["keep_own_ids"]
    assert not any(line.split()[:3] == ["q1", "Q0", "q1"] for line in run)
    metrics, own, run = mret_eval("kept", "--keep-own-ids")
    assert own == [] and metrics["ndcg@10"] == 1.0 and metrics["settings"]["keep_own_ids"]
    assert run[0].split()[:4] == ["q1", "Q0", "q1", "1"]
