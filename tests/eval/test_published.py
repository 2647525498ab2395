"""Published numbers beside ours: matched on the split, labelled where they are not like with like (a fine-tuned
model's number beside its base checkpoint, another mode or index), every entry reachable by a loader's dataset
name; the split recorded in metrics.json and in the default output folder; --depth below 100 refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.datasets.beir import write_beir
from eval.published import _table, published_scores
from eval.runner import EvalSettings
from modernretrieval.errors import SettingsError
from retrieval.cli import app

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MODERNBERT = "answerdotai/ModernBERT-base"
FINE_TUNED = "fine-tuned by the paper's recipe; this run's model is the base checkpoint"


def test_published_numbers_are_matched_on_the_split():
    assert all(entry["split"] for entry in _table()["scores"])
    assert [p["value"] for p in published_scores(MINILM, "scifact", "dense", "test")] == [0.6451, 0.925]
    assert published_scores(MINILM, "scifact", "dense", "dev") == []
    assert published_scores("bm25", "scifact", "lexical", "train") == []


def test_fine_tuned_figures_beside_the_base_checkpoint_are_labelled_so():
    entries = published_scores(MODERNBERT, "mldr-en", "dense", "test", "semantic", "flat")
    assert [e["value"] for e in entries] == [0.274]
    assert not entries[0]["comparable"] and entries[0]["note"] == FINE_TUNED
    exact = published_scores(MINILM, "scifact", "dense", "test", "semantic", "flat")
    assert all(e["comparable"] and "note" not in e for e in exact)


@pytest.mark.parametrize("model,kind,mode,index,published", [
    (MINILM, "dense", "semantic", "hnsw", "published with index flat (exact search), this run hnsw"),
    (MINILM, "dense", "hybrid", "flat", "published semantic, this run hybrid"),
    ("bm25", "lexical", "hybrid", None, "published lexical, this run hybrid"),
])
def test_another_mode_or_index_is_a_different_setting(model, kind, mode, index, published):
    entries = published_scores(model, "scifact", kind, "test", mode, index)
    assert entries and all(not e["comparable"] and e["note"] == f"different setting: {published}" for e in entries)


def test_every_entry_is_named_as_a_loader_names_its_dataset(tmp_path):
    """No average ("beir") and no bare "codesearchnet": the CoIR task is coir-codesearchnet, as load_coir names it."""
    from eval.datasets.codesearchnet import load_coir

    names = {entry["dataset"] for entry in _table()["scores"]}
    assert names == {"scifact", "mldr-en", "coir-codesearchnet"}
    folder = write_beir(tmp_path / "codesearchnet", {"c1": {"title": "", "text": "def f(): pass"}}, {"q1": "f"},
                        {"test": {"q1": {"c1": 1}}})
    data = load_coir(folder)
    assert [e["value"] for e in published_scores(MODERNBERT, data.name, "dense")] == [0.564]


def test_the_report_shows_the_label(capsys, monkeypatch):
    from retrieval.cli.eval import print_report

    monkeypatch.setenv("COLUMNS", "400")
    record = {"settings": {"model": MODERNBERT, "kind": "dense", "index": "flat"},
              "dataset": {"name": "mldr-en", "documents": 5}, "num_queries": 2,
              "ndcg@10": 0.1, "recall@100": 0.2, "mrr@10": 0.3, "map": 0.4,
              "published": published_scores(MODERNBERT, "mldr-en", "dense", "test", "semantic", "flat"),
              "timings": {"search_ms_per_query": 1.0}}
    print_report(record, Path("out"))
    out = " ".join(capsys.readouterr().out.split())
    assert f"{FINE_TUNED} -- ModernBERT paper" in out and "0.2740" in out


def test_the_split_is_recorded_and_names_the_default_output(tmp_path, monkeypatch):
    """A dev run and a test run of the same set go to two folders; metrics.json says which split it scored."""
    folder = write_beir(tmp_path / "data", {"d1": {"title": "", "text": "the moon pulls the oceans"},
                                            "d2": {"title": "", "text": "volcano lava erupts"}},
                        {"q1": "tides moon", "q2": "volcano lava"},
                        {"test": {"q1": {"d1": 1}}, "dev": {"q2": {"d2": 1}}})
    monkeypatch.chdir(tmp_path)
    for split in ("test", "dev"):
        result = CliRunner().invoke(app, ["eval", "folder", "--dataset", str(folder), "--mode", "lexical",
                                          "--split", split, "--cache-dir", str(tmp_path / "cache")])
        assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["data-dev-bm25", "data-test-bm25"]
    for split in ("test", "dev"):
        metrics = json.loads((tmp_path / "runs" / f"data-{split}-bm25" / "metrics.json").read_text())
        assert metrics["settings"]["split"] == split and metrics["dataset"]["split"] == split
        assert metrics["num_queries"] == 1


def test_a_depth_below_100_is_refused():
    """Recall@100 and MAP on a shallower run would be recall@depth and MAP@depth under the wrong name."""
    with pytest.raises(SettingsError, match=r"^--depth must be at least 100 \(Recall@100 and MAP are measured on "
                                            r"the top 100\), got 50$"):
        EvalSettings("m", depth=50).check()
    EvalSettings("m", depth=100, mode="lexical").check()
