"""``mret train``: fine-tune a bi-encoder or a ColBERT (contrastive, cached contrastive, distillation), or adapt a
ModernBERT to a domain with masked-language modelling.

Why our own loop rather than sentence-transformers' trainers: their collators pad every batch, while our encoder
runs all texts of a step as one packed sequence (no compute on padding: the speed-up is largest on mixed lengths,
see bench/train_throughput.py), and the loop is short enough to make resuming exact: every random choice (the order
of examples, the MLM masks) is a function of (seed, step), so a run resumed from a checkpoint draws what the
uninterrupted run drew, and with the optimizer and scheduler states restored it ends with the same weights.

A step is ``accumulation`` micro-batches of ``batch_size`` examples each; AdamW (fused on CUDA), linear warmup then
linear decay, gradient clipping; bf16 autocast on CUDA by default. Checkpoints (``OUTPUT/checkpoints/step-N``: the
model in its own format + trainer.pt) every ``save_every`` steps, written beside and renamed into place; the run
resumes from the latest one found. The final model goes to OUTPUT in the sentence-transformers (dense), PyLate
(colbert) or Hugging Face (mlm) layout, with README.md (a model card) and training_log.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from modernretrieval.errors import SettingsError

from ..heads.colbert import ColBERT
from ..heads.dense import BiEncoder
from . import losses
from .data import Example, load_examples, load_texts, mine_negatives

Task = Literal["dense", "colbert", "mlm"]
LOSSES = {"dense": ("contrastive", "cached", "distillation"), "colbert": ("contrastive", "cached", "distillation"),
          "mlm": ("mlm",)}


@dataclass
class TrainSettings:
    task: Task
    model: str  # a folder or hub id: a trained head, or a base checkpoint (a new head is put on it)
    data: str  # .jsonl, a BEIR folder (qrels/<split>.tsv), or text for MLM
    output: str
    loss: str = "contrastive"  # contrastive | cached (GradCache: large batches in small memory) | distillation | mlm
    split: str = "train"
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 32
    mini_batch_size: int = 8  # the cached loss's chunk size
    accumulation: int = 1
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    temperature: float | None = None  # default: 0.05 dense, 1.0 colbert (PyLate)
    negatives: int = 1  # hard negatives per query, when the data has them (or mine_negatives finds them)
    mine_negatives: bool = False  # mine them with our index before training (BEIR data: over the whole corpus)
    mine_with: str | None = None  # the dense model that mines (default: the model trained, when dense)
    mine_skip: int = 0  # best-ranked non-positives skipped before taking negatives
    max_length: int | None = None  # document tokens (dense: max_length; colbert: document_length)
    query_length: int | None = None  # colbert
    colbert_dim: int = 128  # projection size of a new ColBERT head
    mlm_probability: float = 0.3
    seed: int = 0
    save_every: int = 0  # 0: no intermediate checkpoints
    eval_data: str | None = None  # a BEIR folder, scored with our eval harness
    eval_split: str = "dev"
    eval_every: int = 0  # 0: only before and after training
    eval_fraction: float = 0.05  # MLM: texts held out for the loss
    bf16: bool | None = None  # None: on CUDA
    device: str = "cpu"

    def check(self) -> None:
        if self.task not in LOSSES:
            raise SettingsError(f"the task must be dense, colbert or mlm, got {self.task!r}")
        if self.task == "mlm":
            self.loss = "mlm"
        if self.loss not in LOSSES[self.task]:
            raise SettingsError(f"--loss {self.loss} does not apply to {self.task}; use one of {', '.join(LOSSES[self.task])}")
        for name in ("batch_size", "mini_batch_size", "accumulation"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 < self.mlm_probability < 1:
            raise SettingsError("--mlm-probability must be between 0 and 1")
        if self.learning_rate <= 0 or (self.max_steps is not None and self.max_steps < 1) or self.epochs <= 0:
            raise SettingsError("--learning-rate, --epochs and --max-steps must be positive")


@dataclass
class TrainResult:
    output: Path
    steps: int
    final_loss: float
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


class Trainer:
    def __init__(self, settings: TrainSettings, show_progress: bool | None = None,
                 on_step: Callable[[int], None] | None = None):
        settings.check()
        self.settings, self.show_progress, self.on_step = settings, show_progress, on_step
        self.output = Path(settings.output)
        self.device = torch.device(settings.device)
        self.autocast = settings.bf16 if settings.bf16 is not None else self.device.type == "cuda"
        if settings.task == "mlm":
            texts = load_texts(settings.data)
            held = max(1, int(len(texts) * settings.eval_fraction)) if len(texts) > 1 else 0
            order = np.random.default_rng(settings.seed).permutation(len(texts))
            self.eval_texts = [texts[i] for i in order[:held]]
            self.items: list[Any] = [texts[i] for i in order[held:]]
        else:
            self.items = load_examples(settings.data, settings.split)
            if settings.loss == "distillation" and not self.items[0].documents:
                raise SettingsError("--loss distillation needs teacher scores: jsonl with \"documents\" and \"scores\"")
            if settings.loss != "distillation" and self.items[0].documents:
                raise SettingsError("this data has teacher scores: train it with --loss distillation")
            if settings.mine_negatives:
                self.items = self._mined(self.items)
        self._orders: dict[int, np.ndarray] = {}
        per_step = settings.batch_size * settings.accumulation
        self.total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * len(self.items) / per_step))
        self.eval_dataset = None
        if settings.eval_data and settings.task != "mlm":
            from eval.datasets.beir import load_beir

            self.eval_dataset = load_beir(settings.eval_data, settings.eval_split)

    def _mined(self, examples: list[Example]) -> list[Example]:
        s = self.settings
        if s.loss == "distillation":
            raise SettingsError("--mine-negatives is for contrastive losses")
        if s.task != "dense" and not s.mine_with:
            raise SettingsError("a colbert run mines with a dense model: pass --mine-with MODEL")
        miner = BiEncoder.from_base(s.mine_with or s.model, device=self.device)
        corpus = None
        if Path(s.data).is_dir():
            from eval.datasets.beir import load_beir

            dataset = load_beir(s.data, s.split)
            corpus = dataset.document_texts(list(dataset.corpus))
        return mine_negatives(examples, miner, s.negatives, corpus, s.mine_skip, self.show_progress)

    # ----- the model
    def load(self, source: str | Path) -> BiEncoder | ColBERT | Any:
        """The task's model from a folder: a trained head as it is, a base checkpoint with a new head."""
        s = self.settings
        if s.task == "mlm":
            import encoder

            model = encoder.from_pretrained(source, device=self.device)
            if model.head is None:
                raise SettingsError(f"{source} has no MLM head weights: MLM training needs a ModernBertForMaskedLM")
            return model
        folder = Path(source)
        if s.task == "dense":
            model = BiEncoder.from_base(source, device=self.device)
            if s.max_length:
                model.max_length = s.max_length
            return model
        is_colbert = (folder / "modules.json").exists() and not (folder / "1_Pooling").exists() and any(
            folder.glob("*_Dense"))
        model = ColBERT.from_pretrained(source, device=self.device) if is_colbert else ColBERT.from_base(
            source, s.colbert_dim, device=self.device)
        model.document_length = s.max_length or model.document_length
        model.query_length = s.query_length or model.query_length
        return model

    def modules(self, model: Any) -> list[torch.nn.Module]:
        if self.settings.task == "mlm":
            return [model]
        return [model.backbone.model, *model.dense]

    def save(self, model: Any, folder: Path) -> None:
        if self.settings.task == "mlm":
            model.save_pretrained(folder)
        else:
            model.save(folder)

    # ----- the loop
    def train(self) -> TrainResult:
        s = self.settings
        random.seed(s.seed)
        np.random.seed(s.seed)
        torch.manual_seed(s.seed)
        checkpoint = self.latest_checkpoint()
        model = self.load(checkpoint or s.model)
        parameters = [p for m in self.modules(model) for p in m.parameters()]
        for module in self.modules(model):
            module.train()
        optimizer = torch.optim.AdamW(parameters, lr=s.learning_rate, weight_decay=s.weight_decay,
                                      fused=self.device.type == "cuda" or None)
        warmup = int(s.warmup_ratio * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
            (step + 1) / max(1, warmup), max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))))
        start, evaluations = 0, []
        if checkpoint is not None:
            state = torch.load(checkpoint / "trainer.pt", weights_only=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start, evaluations = state["step"], state["evaluations"]
            torch.set_rng_state(state["rng"])  # dropout (BERT backbones) draws on it
        elif self.output.exists() and {p.name for p in self.output.iterdir()} - {"training_log.jsonl", "checkpoints"}:
            raise SettingsError(f"{self.output} is not empty and holds no checkpoint to resume; choose another --output")
        self.output.mkdir(parents=True, exist_ok=True)
        self._trim_log(start)
        if start == 0:
            evaluations.append({"step": 0, **self.evaluate(model)})
        log = (self.output / "training_log.jsonl").open("a")
        started, tokens, loss_value = time.perf_counter(), 0, float("nan")
        from tqdm.auto import tqdm

        bar = tqdm(range(start, self.total_steps), initial=start, total=self.total_steps, desc=f"train {s.task}",
                   disable=None if self.show_progress is None else not self.show_progress)
        for step in bar:
            step_loss = 0.0
            for micro in range(s.accumulation):
                batch = self.batch(step * s.accumulation + micro)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    loss, batch_tokens = self.loss(model, batch, step, micro)
                if loss.requires_grad:  # the cached loss has already run its backward passes
                    (loss / s.accumulation).backward()
                step_loss += loss.item() / s.accumulation
                tokens += batch_tokens
            torch.nn.utils.clip_grad_norm_(parameters, s.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = step_loss
            elapsed = time.perf_counter() - started
            record = {"step": step + 1, "loss": round(step_loss, 6), "lr": scheduler.get_last_lr()[0],
                      "tokens_per_second": round(tokens / elapsed, 1)}
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens / elapsed:,.0f}")
            if s.eval_every and (step + 1) % s.eval_every == 0 and step + 1 < self.total_steps:
                evaluations.append({"step": step + 1, **self.evaluate(model)})
                record["eval"] = evaluations[-1]
            log.write(json.dumps(record) + "\n")
            log.flush()
            if s.save_every and (step + 1) % s.save_every == 0 and step + 1 < self.total_steps:
                self.checkpoint(model, optimizer, scheduler, step + 1, evaluations)
            if self.on_step is not None:
                self.on_step(step + 1)
        bar.close()
        log.close()
        evaluations.append({"step": self.total_steps, **self.evaluate(model)})
        for module in self.modules(model):
            module.eval()
        self.save(model, self.output)
        result = TrainResult(self.output, self.total_steps, loss_value, evaluations, time.perf_counter() - started,
                             tokens)
        (self.output / "README.md").write_text(model_card(s, result, len(self.items)))
        shutil.rmtree(self.output / "checkpoints", ignore_errors=True)
        return result

    def batch(self, index: int) -> list[Any]:
        """Micro-batch ``index``: the examples of an epoch are shuffled by (seed, epoch), and batches run through
        them in order (an epoch's last batch is topped up from the next epoch)."""
        size, n = self.settings.batch_size, len(self.items)
        positions = range(index * size, (index + 1) * size)
        return [self.items[self._order(p // n)[p % n]] for p in positions]

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.settings.seed, epoch]).permutation(len(self.items))
        return self._orders[epoch]

    # ----- losses
    def loss(self, model: Any, batch: list[Any], step: int, micro: int) -> tuple[torch.Tensor, int]:
        s = self.settings
        if s.task == "mlm":
            return self.mlm_loss(model, batch, torch.Generator().manual_seed(hash((s.seed, step, micro)) % 2**63))
        queries = [e.query for e in batch]
        if s.loss == "distillation":
            width = min(len(e.documents) for e in batch)
            documents = [d for e in batch for d in e.documents[:width]]
            teacher = torch.tensor([e.scores[:width] for e in batch], device=self.device)
        else:
            documents = [e.positive for e in batch] + [n for e in batch for n in e.negatives[: s.negatives]]
        q_ids, d_ids = self.tokenize(model, queries, True), self.tokenize(model, documents, False)
        tokens = sum(map(len, q_ids)) + sum(map(len, d_ids))
        if s.loss == "cached":
            return self.cached_contrastive(model, q_ids, d_ids), tokens
        q, d = self.embed(model, q_ids, d_ids)
        if s.loss == "distillation":
            return losses.kl_distillation(self.own_scores(q, d, width), teacher), tokens
        return self.contrastive(q, d), tokens

    def tokenize(self, model: Any, texts: list[str], is_query: bool) -> list[list[int]]:
        if isinstance(model, BiEncoder):
            return model.tokenize(texts, model.query_prompt if is_query else model.document_prompt)
        return model.tokenize(texts, is_query)

    def embed(self, model: Any, q_ids: list[list[int]], d_ids: list[list[int]]) -> tuple[Any, Any]:
        if isinstance(model, BiEncoder):  # queries and documents in one packed pass
            vectors = model.forward(q_ids + d_ids)
            return vectors[: len(q_ids)], vectors[len(q_ids):]
        return model.forward(q_ids, True), model.forward(d_ids, False)

    def contrastive(self, q: Any, d: Any) -> torch.Tensor:
        temperature = self.settings.temperature
        if isinstance(q, torch.Tensor):
            return losses.info_nce(q, d, temperature or 0.05)
        return losses.colbert_contrastive(q, d, temperature or 1.0)

    def own_scores(self, q: Any, d: Any, width: int) -> torch.Tensor:
        """(queries, width): each query against its own teacher-scored documents."""
        if isinstance(q, torch.Tensor):
            return (q[:, None, :] * d.view(len(q), width, -1)).sum(-1)
        return torch.stack([losses.maxsim_scores([qi], d[i * width:(i + 1) * width])[0] for i, qi in enumerate(q)])

    def cached_contrastive(self, model: Any, q_ids: list[list[int]], d_ids: list[list[int]]) -> torch.Tensor:
        """GradCache: embed everything without a graph in chunks of ``mini_batch_size``, take the loss and its
        gradient with respect to the embeddings, then re-embed chunk by chunk with a graph and backpropagate those
        gradients. Memory is that of one chunk; the result equals the plain loss on the whole batch."""
        chunk = self.settings.mini_batch_size
        dense = isinstance(model, BiEncoder)

        def embed(ids: list[list[int]], is_query: bool) -> list[torch.Tensor]:
            out = model.forward(ids) if dense else model.forward(ids, is_query)
            return list(out) if dense else out

        cached: dict[bool, list[torch.Tensor]] = {True: [], False: []}
        rng: dict[tuple[bool, int], torch.Tensor] = {}  # each chunk's second pass draws the same dropout masks
        with torch.no_grad():
            for is_query, ids in ((True, q_ids), (False, d_ids)):
                for a in range(0, len(ids), chunk):
                    rng[is_query, a] = torch.get_rng_state()
                    cached[is_query] += [t.detach().requires_grad_() for t in embed(ids[a:a + chunk], is_query)]
        after = torch.get_rng_state()
        with torch.enable_grad():
            q, d = cached[True], cached[False]
            loss = self.contrastive(torch.stack(q), torch.stack(d)) if dense else self.contrastive(q, d)
            loss.backward()
        for is_query, ids in ((True, q_ids), (False, d_ids)):
            for a in range(0, len(ids), chunk):
                torch.set_rng_state(rng[is_query, a])
                out = embed(ids[a:a + chunk], is_query)
                grads = [t.grad for t in cached[is_query][a:a + chunk]]
                surrogate = sum((o * g).sum() for o, g in zip(out, grads))
                (surrogate / self.settings.accumulation).backward()
        torch.set_rng_state(after)
        return loss.detach()

    def mlm_loss(self, model: Any, texts: list[str], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        tokenizer = model.tokenizer
        ids = tokenizer.encode(texts, self.settings.max_length)
        special = {t for t in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) if t is not None}
        corrupted, labels = losses.mask_tokens(ids, tokenizer.mask_token_id, special, model.config.vocab_size,
                                               generator, self.settings.mlm_probability)
        from encoder.packing import pack

        input_ids, cu_seqlens = pack(corrupted, self.device)
        hidden = model(input_ids, cu_seqlens)
        labels = labels.to(self.device)
        chosen = labels != -100
        if not chosen.any():
            return hidden.sum() * 0.0, int(len(input_ids))
        logits = model.mlm_logits(hidden[chosen])
        return torch.nn.functional.cross_entropy(logits.float(), labels[chosen]), int(len(input_ids))

    # ----- evaluation
    def evaluate(self, model: Any) -> dict[str, float]:
        """nDCG@10 / Recall@100 on the eval dataset with our harness (exact search), or held-out MLM loss."""
        modules = self.modules(model)
        for module in modules:
            module.eval()
        try:
            if self.settings.task == "mlm":
                return {"mlm_loss": self.heldout_mlm_loss(model)} if self.eval_texts else {}
            if self.eval_dataset is None:
                return {}
            return evaluate_head(model, self.eval_dataset)
        finally:
            for module in modules:
                module.train()

    def heldout_mlm_loss(self, model: Any) -> float:
        """Mean masked-token loss on the held-out texts, with the same masks every time (seeded)."""
        total, count = 0.0, 0
        size = self.settings.batch_size
        with torch.no_grad():
            for a in range(0, len(self.eval_texts), size):
                generator = torch.Generator().manual_seed(self.settings.seed + a)
                loss, _ = self.mlm_loss(model, self.eval_texts[a:a + size], generator)
                n = len(self.eval_texts[a:a + size])
                total, count = total + loss.item() * n, count + n
        return round(total / count, 6)

    # ----- checkpoints
    def checkpoint(self, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
                   evaluations: list[dict[str, Any]]) -> None:
        """OUTPUT/checkpoints/step-N, complete or absent: written as .tmp, then renamed; older ones removed."""
        root = self.output / "checkpoints"
        final, tmp = root / f"step-{step:07d}", root / f".step-{step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.save(model, tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "evaluations": evaluations, "settings": asdict(self.settings), "rng": torch.get_rng_state()},
                   tmp / "trainer.pt")
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        os.replace(tmp, final)
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def _trim_log(self, step: int) -> None:
        """The log keeps the steps up to the checkpoint resumed from (a killed run's later steps are run again)."""
        path = self.output / "training_log.jsonl"
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    def latest_checkpoint(self) -> Path | None:
        root = self.output / "checkpoints"
        found = sorted(p for p in root.glob("step-*") if (p / "trainer.pt").exists()) if root.exists() else []
        return found[-1] if found else None


def evaluate_head(model: BiEncoder | ColBERT, dataset: Any) -> dict[str, float]:
    """Exact search (dense: cosine; colbert: exhaustive MaxSim) over the dataset, scored by pytrec_eval."""
    from eval.encode import encode_beir
    from eval.metrics import evaluate, exact_search
    from eval.runner import exhaustive_maxsim

    kind = "dense" if isinstance(model, BiEncoder) else "colbert"
    encoded = encode_beir(dataset, model, kind, cache_dir=None, show_progress=False)
    if kind == "dense":
        run = exact_search(encoded.queries, encoded.docs, encoded.doc_ids, encoded.query_ids, 101)
    else:
        run = exhaustive_maxsim(encoded, 101, False)
    metrics = evaluate(run, dataset.qrels)
    return {k: round(v, 4) for k, v in metrics.items() if k in ("ndcg@10", "recall@100")}


def model_card(settings: TrainSettings, result: TrainResult, n_examples: int) -> str:
    """README.md for the saved model: what it was trained from, on what, how, and what it scored."""
    fmt = {"dense": "sentence-transformers", "colbert": "PyLate (ColBERT)", "mlm": "Hugging Face (ModernBertForMaskedLM)"}
    rows = "\n".join(f"| {e['step']} | " + " | ".join(f"{k} {v}" for k, v in e.items() if k != "step") + " |"
                     for e in result.evaluations if len(e) > 1)
    hyper = {k: v for k, v in asdict(settings).items() if k not in ("model", "data", "output", "eval_data")}
    return f"""---
base_model: {settings.model}
library_name: modernretrieval
tags: [{settings.task}, {settings.loss}, modernretrieval]
---

# {Path(settings.output).name}

Fine-tuned with `mret train {settings.task}` (modernretrieval) from **{settings.model}**; saved in the
{fmt[settings.task]} layout.

- Data: `{settings.data}` ({n_examples:,} {"texts" if settings.task == "mlm" else "examples"}, split `{settings.split}`)
- Loss: {settings.loss}
- Steps: {result.steps:,}; tokens seen: {result.tokens:,}; {result.seconds:,.0f} s; final training loss {result.final_loss:.4f}
- Evaluation data: {settings.eval_data or "held-out texts" if settings.task == "mlm" else settings.eval_data or "none"}

## Evaluation during training

| step | metrics |
|---:|---|
{rows or "| - | none |"}

## Hyperparameters

```json
{json.dumps(hyper, indent=2)}
```
"""
