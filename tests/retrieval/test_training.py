"""Fine-tuning (retrieval/training): the differentiable forward equals inference, the losses equal their references,
the cached loss equals the plain one, resuming equals not stopping, saved models reload with identical outputs, and
training does what it is for (MLM loss falls; a contrastive run ranks better). Tiny random ModernBERTs with the real
tokenizer; MiniLM where real weights matter."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from modernretrieval.errors import SettingsError
from retrieval import BiEncoder, ColBERT
from retrieval.heads.layers import pool_packed
from retrieval.training import Trainer, TrainSettings, losses
from retrieval.training.data import Example, load_examples, load_texts, mine_negatives
from retrieval.training.trainer import parameter_groups

from support import copy_tokenizer, hf_model
from support import PYLATE_MODEL, dense_model_folder

WORDS = "parse token index query vector file path open read write sort merge list dict json http socket".split()


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Queries that name three words; the positive document repeats them among others (a learnable task)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        key = rng.sample(WORDS, 3)
        noise = [rng.choice(WORDS) for _ in range(rng.randint(5, 40))]
        negative = rng.sample([w for w in WORDS if w not in key], 3)
        pairs.append({"query": " ".join(key), "positive": " ".join(noise[:3] + key + noise[3:] + key),
                      "negatives": [" ".join(noise + negative)]})
    return pairs


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory, tokenizer_dir):
    return dense_model_folder(tmp_path_factory.mktemp("dense") / "model")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in synthetic_pairs(128)))
    return path


def close(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, atol: float = 1e-5) -> bool:
    return np.allclose(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32), atol=atol)


# ----- the differentiable forward
@pytest.mark.parametrize("mode", ["mean", "cls", "lasttoken", "max", "mean_sqrt_len_tokens"])
def test_packed_pooling_equals_per_text_pooling(mode):
    g = torch.Generator().manual_seed(0)
    states = [torch.randn(n, 8, generator=g) for n in (1, 5, 12)]
    cu = torch.tensor([0, 1, 6, 18])
    expected = {"mean": lambda s: s.mean(0), "cls": lambda s: s[0], "lasttoken": lambda s: s[-1],
                "max": lambda s: s.max(0).values, "mean_sqrt_len_tokens": lambda s: s.sum(0) / math.sqrt(len(s))}[mode]
    assert close(pool_packed(torch.cat(states), cu, [mode]), torch.stack([expected(s) for s in states]), 1e-6)


def test_dense_forward_equals_encode_and_has_gradients(dense_folder, minilm_folder):
    texts = ["short", "a longer text about parsing json files " * 20, "def f(x):\n    return x"]
    for folder in (dense_folder, minilm_folder):
        model = BiEncoder.from_pretrained(folder)
        vectors = model.forward(model.tokenize(texts))
        assert close(vectors.detach(), model.encode(texts), 1e-5)
        vectors.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.model.parameters())


def test_colbert_forward_equals_encode():
    if not (PYLATE_MODEL / "modules.json").exists():
        pytest.skip(f"the PyLate fixture is not at {PYLATE_MODEL} (../shared is missing)")
    model = ColBERT.from_pretrained(PYLATE_MODEL)
    texts = ["what is late interaction?", "ColBERT keeps one vector per token, punctuation dropped."]
    for is_query, encode in ((True, model.encode_queries), (False, model.encode_documents)):
        trained = model.forward(model.tokenize(texts, is_query), is_query)
        for a, b in zip(trained, encode(texts)):
            assert a.shape == b.shape and close(a.detach(), b, 1e-5)


# ----- losses against references
def test_info_nce_equals_sentence_transformers_mnrl_formula():
    from sentence_transformers import util

    g = torch.Generator().manual_seed(1)
    q, d = torch.randn(4, 16, generator=g), torch.randn(7, 16, generator=g)  # 4 positives + 3 hard negatives
    reference = F.cross_entropy(util.cos_sim(q, d) * 20.0, torch.arange(4))
    assert torch.allclose(losses.info_nce(q, d, 0.05), reference, atol=1e-6)


def test_maxsim_scores_and_distillation_against_numpy():
    g = torch.Generator().manual_seed(2)
    queries = [F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(2)]
    documents = [F.normalize(torch.randn(n, 8, generator=g), dim=-1) for n in (3, 9, 1)]
    scores = losses.maxsim_scores(queries, documents)
    expected = [[(q.numpy() @ d.numpy().T).max(axis=1).sum() for d in documents] for q in queries]
    assert close(scores, expected, 1e-5)
    student, teacher = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    p = torch.softmax(teacher, -1).numpy()
    kl = (p * (np.log(p) - torch.log_softmax(student, -1).numpy())).sum(axis=1).mean()
    assert abs(losses.kl_distillation(student, teacher).item() - kl) < 1e-5


def test_masking_rate_split_and_determinism():
    rows = [[50281] + list(range(100, 100 + n)) + [50282] for n in (500, 700, 800)]
    masked, labels = losses.mask_tokens(rows, 50284, {50281, 50282}, 50368, torch.Generator().manual_seed(0))
    flat = [t for r in rows for t in r]
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - 0.3) < 0.03
    assert all(labels[i] == flat[i] for i in torch.nonzero(chosen).flatten().tolist())
    specials = [i for i, t in enumerate(flat) if t in (50281, 50282)]
    assert not chosen[specials].any()
    out = [t for r in masked for t in r]
    as_mask = sum(1 for i in torch.nonzero(chosen).flatten().tolist() if out[i] == 50284) / chosen.sum().item()
    kept = sum(1 for i in torch.nonzero(chosen).flatten().tolist() if out[i] == flat[i]) / chosen.sum().item()
    assert 0.75 < as_mask < 0.85 and 0.05 < kept < 0.16
    again, _ = losses.mask_tokens(rows, 50284, {50281, 50282}, 50368, torch.Generator().manual_seed(0))
    assert again == masked


def test_cached_loss_gives_the_gradients_of_the_plain_loss(dense_folder, pairs_file, tmp_path):
    grads = {}
    for loss in ("contrastive", "cached"):
        settings = TrainSettings("dense", str(dense_folder), str(pairs_file), str(tmp_path / loss), loss=loss,
                                 batch_size=8, mini_batch_size=3, max_steps=1)
        trainer = Trainer(settings, show_progress=False)
        model = trainer.load(dense_folder)
        value, _ = trainer.loss(model, trainer.batch(0), 0, 0)
        if value.requires_grad:
            value.backward()
        grads[loss] = (value.item(), [p.grad.clone() for p in model.backbone.model.parameters()])
    assert abs(grads["contrastive"][0] - grads["cached"][0]) < 1e-5
    for a, b in zip(grads["contrastive"][1], grads["cached"][1]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_cached_loss_redraws_the_dropout_masks_of_its_first_pass(minilm_folder, pairs_file, tmp_path):
    """MiniLM in training mode drops out (p=0.1): each chunk's second pass (with a graph) must draw the masks of its
    first (without), or the cached gradients belong to other embeddings than the loss."""
    settings = TrainSettings("dense", str(minilm_folder), str(pairs_file), str(tmp_path / "out"), loss="cached",
                             batch_size=4, mini_batch_size=2, max_steps=1)
    trainer = Trainer(settings, show_progress=False)
    model = trainer.load(minilm_folder)
    model.train()
    outputs = []
    forward = model.forward

    def recording(ids, is_query):
        outputs.append(forward(ids, is_query))
        return outputs[-1]

    model.forward = recording
    trainer.loss(model, trainer.batch(0), 0, 0)
    first, second = outputs[: len(outputs) // 2], outputs[len(outputs) // 2:]
    assert len(first) == len(second) == 6  # 2 chunks of queries, 4 of documents (positives, negatives)
    assert all(torch.equal(a, b.detach()) for a, b in zip(first, second))
    again = forward(model.tokenize([e.query for e in trainer.batch(0)][:2], True), True)
    assert not torch.equal(first[0], again.detach())  # dropout is on: an unseeded pass differs


def test_documents_get_the_document_prompt_and_queries_the_query_prompt(tmp_path, tokenizer_dir, pairs_file):
    folder = dense_model_folder(tmp_path / "prompted")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "search_query: ", "document": "search_document: "}}))
    settings = TrainSettings("dense", str(folder), str(pairs_file), str(tmp_path / "out"), batch_size=2, max_steps=1)
    trainer = Trainer(settings, show_progress=False)
    model = trainer.load(folder)
    seen = []
    forward = model.forward
    model.forward = lambda ids, is_query=False: seen.append(ids) or forward(ids, is_query)
    batch = trainer.batch(0)
    trainer.loss(model, batch, 0, 0)
    queries = [e.query for e in batch]
    documents = [e.positive for e in batch] + [e.negatives[0] for e in batch]
    assert seen == [model.tokenize(queries, is_query=True) + model.tokenize(documents, is_query=False)]
    assert seen[0][2] == model.tokenize(["search_document: " + documents[0]], prompt="")[0]


# ----- the optimizer
def test_weight_decay_spares_norms_and_biases(pairs_file, tmp_path):
    settings = TrainSettings("dense", "unused", str(pairs_file), str(tmp_path / "out"), learning_rate=0.1,
                             weight_decay=0.5)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    embedding, linear, norm = model
    decay, no_decay = parameter_groups(model, 0.5)
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(embedding.weight), id(linear.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(linear.bias), id(norm.weight), id(norm.bias)}

    optimizer = Trainer(settings, show_progress=False).optimizer(model)
    with torch.no_grad():
        norm.weight.fill_(2.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    for name in ("1.bias", "2.weight", "2.bias"):
        assert torch.equal(after[name], before[name]), name
    for name in ("0.weight", "1.weight"):
        assert torch.allclose(after[name], before[name] * (1 - 0.1 * 0.5)), name


# ----- the loop
def with_dropout(folder: Path, copy: Path) -> Path:
    """A copy of a ModernBERT folder whose config drops out (0.1 everywhere): training then draws random numbers."""
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    dropouts = {"embedding_dropout": 0.1, "attention_dropout": 0.1, "mlp_dropout": 0.1}
    (copy / "config.json").write_text(json.dumps({**config, **dropouts}))
    return copy


def test_training_leaves_the_callers_random_streams_as_they_were(dense_folder, pairs_file, tmp_path):
    """Dropout and the cached loss draw from the run's own streams; python's, numpy's and torch's global ones are
    untouched (through a cached loss, a checkpoint and the evaluations)."""
    model = with_dropout(dense_folder, tmp_path / "model")
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    before = random.getstate(), np.random.get_state(), torch.get_rng_state()
    settings = TrainSettings("dense", str(model), str(pairs_file), str(tmp_path / "out"), loss="cached",
                             batch_size=4, mini_batch_size=2, max_steps=2, save_every=1, seed=7)
    Trainer(settings, show_progress=False).train()
    after = random.getstate(), np.random.get_state(), torch.get_rng_state()
    assert after[0] == before[0]
    assert all(np.array_equal(a, b) for a, b in zip(after[1], before[1]))
    assert torch.equal(after[2], before[2])


def test_a_checkpoint_is_json_and_safetensors_and_resuming_unpickles_nothing(dense_folder, pairs_file, tmp_path,
                                                                             monkeypatch):
    """With dropout on, so that the run's random stream must be restored too for the resumed run to end with the
    weights of the uninterrupted one."""
    import pickle

    from safetensors.torch import load_file

    model = with_dropout(dense_folder, tmp_path / "model")

    def settings(output: Path) -> TrainSettings:
        return TrainSettings("dense", str(model), str(pairs_file), str(output), batch_size=4, max_steps=3,
                             save_every=1, learning_rate=1e-3)

    Trainer(settings(tmp_path / "straight"), show_progress=False).train()

    def stop_at_2(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(settings(tmp_path / "out"), show_progress=False, on_step=stop_at_2).train()
    folder = tmp_path / "out" / "checkpoints" / "step-0000002"
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["settings"]["seed"] == 0 and len(state["optimizer"]["param_groups"]) == 2
    tensors = load_file(str(folder / "trainer_state.safetensors"))
    assert "rng.cpu" in tensors and any(name.endswith(".exp_avg") for name in tensors)
    assert not [p for p in folder.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]

    def refuse(*args, **kwargs):
        raise AssertionError("resuming unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert Trainer(settings(tmp_path / "out"), show_progress=False).train().steps == 3
    logged = [json.loads(line)["step"] for line in (tmp_path / "out" / "training_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
    a = BiEncoder.from_pretrained(tmp_path / "straight").backbone.model.state_dict()
    b = BiEncoder.from_pretrained(tmp_path / "out").backbone.model.state_dict()
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)


def test_resuming_from_a_checkpoint_gives_the_weights_of_an_uninterrupted_run(dense_folder, pairs_file, tmp_path):
    def settings(output):
        return TrainSettings("dense", str(dense_folder), str(pairs_file), str(output), batch_size=8, max_steps=6,
                             save_every=2, learning_rate=1e-3, seed=3)

    Trainer(settings(tmp_path / "straight"), show_progress=False).train()

    class Killed(Exception):
        pass

    def die_at_5(step: int) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        Trainer(settings(tmp_path / "resumed"), show_progress=False, on_step=die_at_5).train()
    assert (tmp_path / "resumed" / "checkpoints" / "step-0000004" / "trainer_state.json").exists()
    result = Trainer(settings(tmp_path / "resumed"), show_progress=False).train()
    assert result.steps == 6
    log = (tmp_path / "resumed" / "training_log.jsonl").read_text()
    logged = [json.loads(line)["step"] for line in log.splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]  # step 5, run twice, is logged once
    a, b = BiEncoder.from_pretrained(tmp_path / "straight"), BiEncoder.from_pretrained(tmp_path / "resumed")
    for (name, x), (_, y) in zip(a.backbone.model.state_dict().items(), b.backbone.model.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name
    start = BiEncoder.from_pretrained(dense_folder).backbone.model.state_dict()
    assert any(not torch.allclose(start[k], v) for k, v in a.backbone.model.state_dict().items())
    assert not (tmp_path / "resumed" / "checkpoints").exists()


def test_contrastive_training_improves_ranking_and_reloads_identically(dense_folder, pairs_file, tmp_path):
    """The saved folder loads in BiEncoder and in sentence-transformers with the same vectors, and ranks the
    held-out synthetic pairs better than the untrained model."""
    from sentence_transformers import SentenceTransformer

    held_out = synthetic_pairs(40, seed=99)

    def accuracy(model: BiEncoder) -> float:
        q = model.encode_queries([p["query"] for p in held_out])
        d = model.encode_documents([p["positive"] for p in held_out])
        return float(((q @ d.T).argmax(axis=1) == np.arange(len(held_out))).mean())

    settings = TrainSettings("dense", str(dense_folder), str(pairs_file), str(tmp_path / "out"), batch_size=16,
                             epochs=4, learning_rate=1e-3, temperature=0.05)
    result = Trainer(settings, show_progress=False).train()
    trained = BiEncoder.from_pretrained(tmp_path / "out")
    before, after = accuracy(BiEncoder.from_pretrained(dense_folder)), accuracy(trained)
    print(f"held-out top-1 accuracy {before:.3f} -> {after:.3f}")
    assert after >= before + 0.15  # measured 0.30 -> 0.50
    texts = [p["positive"] for p in held_out[:5]]
    st = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert close(st.encode(texts, convert_to_numpy=True), trained.encode(texts), 1e-5)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "contrastive" in card and str(dense_folder) in card
    assert len((tmp_path / "out" / "training_log.jsonl").read_text().splitlines()) == result.steps


def test_colbert_from_base_trains_saves_and_reloads(dense_folder, pairs_file, tmp_path):
    """A new ColBERT on a base model trains, and its PyLate folder loads in our head and in sentence-transformers'
    MultiVectorEncoder with the same token vectors."""
    from sentence_transformers import MultiVectorEncoder

    settings = TrainSettings("colbert", str(dense_folder), str(pairs_file), str(tmp_path / "colbert"), batch_size=8,
                             max_steps=3, learning_rate=1e-3)
    result = Trainer(settings, show_progress=False).train()
    assert math.isfinite(result.final_loss)
    config = json.loads((tmp_path / "colbert" / "config_sentence_transformers.json").read_text())
    assert config["query_prefix"] == "[unused0]" and config["similarity_fn_name"] == "MaxSim"
    trained, untrained = ColBERT.from_pretrained(tmp_path / "colbert"), ColBERT.from_base(dense_folder)
    assert trained.dim == 128
    reference = MultiVectorEncoder(str(tmp_path / "colbert"), device="cpu")
    texts = ["parse json file, then sort the list", "open socket http"]
    for ours, theirs, before in zip(trained.encode_documents(texts), reference.encode_document(texts),
                                    untrained.encode_documents(texts)):
        theirs = np.asarray(theirs)
        assert ours.shape == theirs.shape and (ours * theirs).sum(axis=1).min() >= 0.9999
        assert (ours * before).sum(axis=1).min() < 0.999  # training moved the vectors
    for ours, theirs in zip(trained.encode_queries(texts), reference.encode_query(texts)):
        assert ours.shape == np.asarray(theirs).shape and (ours * np.asarray(theirs)).sum(axis=1).min() >= 0.9999


def test_colbert_distillation_runs_on_teacher_scores(dense_folder, tmp_path):
    rng = random.Random(0)
    path = tmp_path / "teacher.jsonl"
    rows = [{"query": " ".join(rng.sample(WORDS, 3)), "documents": [" ".join(rng.sample(WORDS, 6)) for _ in range(4)],
             "scores": [rng.random() for _ in range(4)]} for _ in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = TrainSettings("colbert", str(dense_folder), str(path), str(tmp_path / "out"), loss="distillation",
                             batch_size=4, max_steps=2)
    assert math.isfinite(Trainer(settings, show_progress=False).train().final_loss)


def test_mlm_lowers_held_out_loss(tmp_path, tokenizer_dir):
    folder = tmp_path / "mlm"
    hf_model("tiny").save_pretrained(folder)
    copy_tokenizer(folder)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) + ("." if rng.random() < 0.1 else "") for _ in range(rng.randint(10, 60)))
             for _ in range(400)]
    (tmp_path / "texts.txt").write_text("\n".join(texts))
    settings = TrainSettings("mlm", str(folder), str(tmp_path / "texts.txt"), str(tmp_path / "out"), batch_size=32,
                             max_steps=25, learning_rate=3e-3, eval_fraction=0.1)
    result = Trainer(settings, show_progress=False).train()
    before, after = result.evaluations[0]["mlm_loss"], result.evaluations[-1]["mlm_loss"]
    print(f"held-out MLM loss {before:.3f} -> {after:.3f}")
    assert after < before - 1.0
    import encoder

    assert encoder.from_pretrained(tmp_path / "out").head is not None


def test_mined_negatives_are_the_best_ranked_non_positives(dense_folder):
    model = BiEncoder.from_pretrained(dense_folder)
    examples = [Example(p["query"], p["positive"]) for p in synthetic_pairs(12, seed=5)]
    corpus = [e.positive for e in examples] + [p["negatives"][0] for p in synthetic_pairs(20, seed=6)]
    mined = mine_negatives(examples, model, count=2, corpus=corpus, skip=1)
    q, d = model.encode_queries([e.query for e in examples]), model.encode_documents(corpus)
    for example, row, scores in zip(mined, examples, q @ d.T):
        ranked = [corpus[j] for j in np.argsort(-scores, kind="stable") if corpus[j] != row.positive]
        assert example.positive == row.positive and example.negatives == ranked[1:3]


# ----- evaluation
def small_beir(folder, pairs: list[dict]):
    """A BEIR folder (corpus, queries, qrels/dev.tsv) of the pairs: query i's relevant document is d{i}."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": p["positive"]}) + "\n"
                                                 for i, p in enumerate(pairs)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": p["query"]}) + "\n"
                                                  for i, p in enumerate(pairs)))
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(len(pairs))))
    return folder


def test_the_evaluator_handed_in_scores_the_head_before_and_after(dense_folder, pairs_file, tmp_path):
    eval_folder = small_beir(tmp_path / "beir", synthetic_pairs(6, seed=4))
    calls = []

    def evaluator(head, dataset):
        calls.append((head.kind, head.training, len(dataset.queries)))
        return {"calls": float(len(calls))}

    settings = TrainSettings("dense", str(dense_folder), str(pairs_file), str(tmp_path / "out"), batch_size=4,
                             max_steps=2, eval_data=str(eval_folder), eval_every=1)
    result = Trainer(settings, show_progress=False, evaluator=evaluator).train()
    assert calls == [("dense", False, 6)] * 3  # steps 0, 1 and 2 (the last); in eval mode
    assert result.evaluations == [{"step": 0, "calls": 1.0}, {"step": 1, "calls": 2.0}, {"step": 2, "calls": 3.0}]
    with pytest.raises(SettingsError, match="evaluator"):
        Trainer(settings, show_progress=False)


def test_train_command_evaluates_with_the_harness(dense_folder, pairs_file, tmp_path):
    """The CLI hands the harness's evaluate_head to the trainer: nDCG@10 and Recall@100 before and after."""
    from retrieval.cli import app

    eval_folder = small_beir(tmp_path / "beir", synthetic_pairs(6, seed=4))
    ok = CliRunner().invoke(app, ["train", "dense", "--model", str(dense_folder), "--data", str(pairs_file),
                                  "--output", str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "4",
                                  "--eval-data", str(eval_folder)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("ndcg@10") == 2 and ok.output.count("recall@100") == 2
    card = (tmp_path / "out" / "README.md").read_text()
    assert "ndcg@10" in card


# ----- data and command line
def test_data_formats_and_their_errors(tmp_path, scifact):
    from eval.datasets.beir import DatasetError

    examples = load_examples(scifact.folder, "train")
    assert len(examples) == 919 and all(e.positive for e in examples)
    good = tmp_path / "a.jsonl"
    good.write_text('{"anchor": "q", "positive": "p", "negative": "n"}\n')
    assert load_examples(good) == [Example("q", "p", ["n"])]
    for text, message in (('{"query": 1}\n', "query"), ('{"query": "q", "documents": ["a"], "scores": [1]}\n', "same length"),
                          ("not json\n", "not valid JSON")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(DatasetError, match=message):
            load_examples(bad)
    (tmp_path / "t.txt").write_text("one\n\ntwo\n")
    assert load_texts(tmp_path / "t.txt") == ["one", "two"]


def test_train_command_end_to_end_and_user_mistakes(dense_folder, pairs_file, tmp_path):
    from retrieval.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["train", "dense", "--model", str(dense_folder), "--data", str(pairs_file), "--output",
                             str(tmp_path / "out"), "--max-steps", "2", "--batch-size", "4"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "out" / "modules.json").exists()
    for args, message in ((["--loss", "mlm"], "does not apply"), (["--batch-size", "0"], "at least 1")):
        bad = runner.invoke(app, ["train", "dense", "--model", str(dense_folder), "--data", str(pairs_file),
                                  "--output", str(tmp_path / "bad"), *args])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output
    again = runner.invoke(app, ["train", "dense", "--model", str(dense_folder), "--data", str(pairs_file), "--output",
                                str(tmp_path / "out"), "--max-steps", "2"])
    assert again.exit_code == 2 and "not empty" in again.output
    missing = runner.invoke(app, ["train", "dense", "--model", str(dense_folder), "--data",
                                  str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
