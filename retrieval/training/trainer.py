"""``mret train``: fine-tune a bi-encoder or a ColBERT (contrastive, cached contrastive, distillation), or adapt a
ModernBERT to a domain with masked-language modelling.

Why our own loop rather than sentence-transformers' trainers: their collators pad every batch, while our encoder
runs all texts of a step as one packed sequence (no compute on padding: the speed-up is largest on mixed lengths,
see bench/train_throughput.py), and the loop is short enough to make resuming exact: every random choice (the order
of examples, the MLM masks, the cached loss's dropout seeds) is a function of (seed, step), dropout draws from the
run's own random stream (saved with each checkpoint), so a run resumed from a checkpoint draws what the
uninterrupted run drew, and with the optimizer and scheduler states restored it ends with the same weights. The
caller's global random streams (python, numpy, torch) are left as they were.

The heads are used through the ``Head`` interface only (tokenize, forward, scores), and evaluated by the function
the caller hands in (the CLI gives the harness's ``eval.runner.evaluate_head``): training sits beside the
evaluation harness, not above it.

A step is ``accumulation`` micro-batches of ``batch_size`` examples each; AdamW (fused on CUDA; no weight decay on
biases and normalization weights), linear warmup then linear decay, gradient clipping; bf16 autocast on CUDA by
default. Checkpoints (``OUTPUT/checkpoints/step-N``: the model in its own format, ``trainer_state.json`` and
``trainer_state.safetensors``; nothing pickled) every ``save_every`` steps, written beside and renamed into place;
the run resumes from the latest one found. The final model goes to OUTPUT in the sentence-transformers (dense),
PyLate (colbert) or Hugging Face (mlm) layout, with README.md (a model card) and training_log.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoder.checkpoint import resolve as resolve_checkpoint
from eval.datasets.beir import BeirDataset
from modernretrieval.files import atomic_write
from modernretrieval.errors import SettingsError

from ..heads import BiEncoder, ColBERT, Head
from ..heads.colbert import PRETRAINED_FILES
from ..heads.formats import is_colbert_folder
from ..heads.loading import set_document_length
from . import losses
from .data import Example, batches, load_examples, load_texts, mine_negatives

Task = Literal["dense", "colbert", "mlm"]
LOSSES = {"dense": ("contrastive", "cached", "distillation"), "colbert": ("contrastive", "cached", "distillation"),
          "mlm": ("mlm",)}
DEFAULT_TEMPERATURE = {"dense": 0.05, "colbert": 1.0}  # MNRL's scale 20 on cosines; PyLate's default on MaxSim
DISTILLATION_TEMPERATURE = 1.0  # dense: sentence-transformers' DistillKLDivLoss default (5.0.1 on)
# the settings a resumed run must share with the run that wrote its checkpoint (the others, device, bf16, save and
# eval cadence, may change between the two)
RESUME_SETTINGS = ("task", "model", "data", "split", "loss", "batch_size", "accumulation", "seed", "max_steps", "epochs",
                   "negatives", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm", "temperature",
                   "mine_negatives", "mine_with", "mine_skip", "max_length", "query_length", "colbert_dim",
                   "mlm_probability", "eval_fraction")
FLAGS = {"task": "the task", "learning_rate": "--lr", "colbert_dim": "--dim"}  # the rest: --field-name
NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"  # a checkpoint's trainer state

Evaluator = Callable[[Head, BeirDataset], dict[str, float]]


@dataclass
class TrainSettings:
    task: Task
    model: str  # a folder or hub id: a trained head, or a base checkpoint (a new head is put on it)
    data: str  # .jsonl, a BEIR folder (qrels/<split>.tsv), or text for MLM
    output: str
    loss: str | None = None  # contrastive (the default) | cached (GradCache) | distillation; mlm: the mlm task's only
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
    temperature: float | None = None  # default: 0.05 dense, 1.0 colbert (PyLate); dense distillation 1.0
    negatives: int = 1  # hard negatives per query, when the data has them (or mine_negatives finds them)
    mine_negatives: bool = False  # mine them with our index before training (BEIR data: over the whole corpus)
    mine_with: str | None = None  # the dense model that mines (default: the model trained, when dense)
    mine_skip: int = 0  # best-ranked non-positives skipped before taking negatives
    max_length: int | None = None  # document tokens (dense: max_length; colbert: document_length); 0: the maximum
    query_length: int | None = None  # colbert
    colbert_dim: int = 128  # projection size of a new ColBERT head
    mlm_probability: float = 0.3
    seed: int = 0
    save_every: int = 0  # 0: no intermediate checkpoints
    eval_data: str | None = None  # a BEIR folder, scored by the Trainer's evaluator
    eval_split: str = "dev"
    eval_every: int = 0  # 0: only before and after training
    eval_fraction: float = 0.05  # MLM: texts held out for the loss
    bf16: bool | None = None  # None: on CUDA
    device: str = "cpu"

    def check(self) -> None:
        if self.task not in LOSSES:
            raise SettingsError(f"the task must be dense, colbert or mlm, got {self.task!r}")
        if self.loss is None:
            self.loss = "mlm" if self.task == "mlm" else "contrastive"
        elif self.task == "mlm" and self.loss != "mlm":
            raise SettingsError(f"--loss {self.loss} does not apply to mlm (it trains with the masked-language-modelling "
                                "loss); leave --loss out")
        if self.loss not in LOSSES[self.task]:
            raise SettingsError(f"--loss {self.loss} does not apply to {self.task}; use one of {', '.join(LOSSES[self.task])}")
        for name in ("batch_size", "mini_batch_size", "accumulation"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 < self.mlm_probability < 1:
            raise SettingsError("--mlm-probability must be between 0 and 1")
        if self.learning_rate <= 0 or (self.max_steps is not None and self.max_steps < 1) or self.epochs <= 0:
            raise SettingsError("--lr, --epochs and --max-steps must be positive")
        if self.temperature is not None:
            if not 0 < self.temperature < math.inf:
                raise SettingsError(f"--temperature must be a positive number, got {self.temperature}")
            if self.task == "mlm":
                raise SettingsError("--temperature does not apply to mlm")
            if self.task == "colbert" and self.loss == "distillation":
                raise SettingsError("--temperature does not apply to colbert --loss distillation (PyLate's Distillation "
                                    "has none: it min-max normalizes the student's scores); leave it out")
        for name in ("negatives", "mine_skip", "seed", "save_every", "eval_every"):
            if getattr(self, name) < 0:
                raise SettingsError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio <= 1:
            raise SettingsError(f"--warmup-ratio must be between 0 and 1, got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0 or not 0 <= self.eval_fraction < 1:
            raise SettingsError("weight_decay must be 0 or more, max_grad_norm positive, eval_fraction in [0, 1)")
        if self.max_length is not None and self.max_length != 0 and self.max_length < 8:
            raise SettingsError(f"--max-length must be 0 (the model's maximum) or at least 8, got {self.max_length}")


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
                 on_step: Callable[[int], None] | None = None, evaluator: Evaluator | None = None):
        """``evaluator`` scores a head on ``settings.eval_data`` (e.g. ``eval.runner.evaluate_head``: nDCG@10 and
        Recall@100 by exact search). It is handed in because the harness sits beside training, not below it; eval
        data without one is refused here rather than discovered, unevaluated, at the end of a run."""
        settings.check()
        self.settings, self.show_progress, self.on_step = settings, show_progress, on_step
        self.output = Path(settings.output)
        self.device = torch.device(settings.device)
        self.autocast = settings.bf16 if settings.bf16 is not None else self.device.type == "cuda"
        self.evaluator = evaluator
        if settings.eval_data and settings.task != "mlm" and evaluator is None:
            raise SettingsError("eval_data is set but the Trainer has no evaluator to score it: pass "
                                "Trainer(settings, evaluator=...) (the harness's is eval.runner.evaluate_head), or "
                                "leave eval_data unset")
        self.check_output()  # before the data is read, negatives mined or a model loaded
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
        if settings.batch_size > len(self.items):
            raise SettingsError(f"--batch-size {settings.batch_size} is larger than the data ({len(self.items)} "
                                f"{'texts' if settings.task == 'mlm' else 'examples'}), and a batch holds each at most "
                                f"once: lower it to {len(self.items)} or less")
        self._stream: Iterator[list[int]] | None = None
        self._streamed = 0  # batches drawn from the stream
        self._recent: dict[int, list[int]] = {}  # the latest of them, by number
        per_step = settings.batch_size * settings.accumulation
        self.total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * len(self.items) / per_step))
        self.eval_dataset: BeirDataset | None = None
        if settings.eval_data and settings.task != "mlm":
            from eval.datasets.beir import load_beir

            self.eval_dataset = load_beir(settings.eval_data, settings.eval_split)

    def check_output(self) -> None:
        """OUTPUT is a folder that is absent, empty, or holds a checkpoint of a run with these settings."""
        if self.output.exists() and not self.output.is_dir():
            raise SettingsError(f"--output {self.output} is a file; pass a folder")
        checkpoint = self.latest_checkpoint()
        if checkpoint is not None:
            saved = json.loads((checkpoint / STATE_JSON).read_text()).get("settings", {})
            now = asdict(self.settings)
            changed = [f"{FLAGS.get(name, '--' + name.replace('_', '-'))} ({saved[name]!r} then, {now[name]!r} now)"
                       for name in RESUME_SETTINGS if name in saved and saved[name] != now[name]]
            if changed:
                raise SettingsError(f"{self.output} holds a checkpoint of a run with other settings: "
                                    f"{', '.join(changed)}; rerun with that run's settings to resume it, or pass a new "
                                    "--output to start over")
        elif self.output.exists() and {p.name for p in self.output.iterdir()} - {"training_log.jsonl", "checkpoints"}:
            raise SettingsError(f"{self.output} is not empty and holds no checkpoint to resume; choose another --output")

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
    def load(self, source: str | Path) -> Any:
        """The task's model from a folder: a trained head as it is, a base checkpoint with a new head (an
        ``encoder.Encoder`` with its MLM head for mlm)."""
        s = self.settings
        if s.task == "mlm":
            import encoder

            model = encoder.from_pretrained(source, device=self.device)
            if model.head is None:
                raise SettingsError(f"{source} has no MLM head weights: MLM training needs a ModernBertForMaskedLM")
            if s.max_length:  # 0: the model's maximum
                limit = min([model.config.max_position_embeddings] + (
                    [model.tokenizer.model_max_length] if model.tokenizer is not None else []))
                if s.max_length > limit:
                    raise SettingsError(f"--max-length must be between 8 and {limit} for this model, got {s.max_length}")
            return model
        if s.task == "dense":
            head: Head = BiEncoder.from_base(source, device=self.device)
        else:  # the name resolved first: a hub id or a ~/path is a ColBERT too
            folder = resolve_checkpoint(source, extra_files=PRETRAINED_FILES)
            head = ColBERT.from_pretrained(folder, device=self.device) if is_colbert_folder(folder) else (
                ColBERT.from_base(folder, s.colbert_dim, device=self.device))
            head.query_length = s.query_length or head.query_length
        if s.max_length is not None:  # refused above the backbone's maximum (0: that maximum)
            set_document_length(head, s.max_length)
        return head

    def save(self, model: Any, folder: Path) -> None:
        if self.settings.task == "mlm":
            model.save_pretrained(folder)
        else:
            model.save(folder)

    def optimizer(self, model: nn.Module) -> torch.optim.AdamW:
        return torch.optim.AdamW(parameter_groups(model, self.settings.weight_decay), lr=self.settings.learning_rate,
                                 fused=self.device.type == "cuda" or None)

    # ----- the loop
    def train(self) -> TrainResult:
        """Run (or resume) the training. Dropout draws from the run's own random stream, seeded from the settings
        (or restored from the checkpoint): the caller's random streams are as they were when this returns."""
        with own_random_stream(self.device, self.settings.seed):
            return self._train()

    def _train(self) -> TrainResult:
        s = self.settings
        checkpoint = self.latest_checkpoint()
        model = self.load(checkpoint or s.model)
        model.train()
        optimizer = self.optimizer(model)
        warmup = int(s.warmup_ratio * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
            (step + 1) / max(1, warmup), max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))))
        start, evaluations, before = 0, [], {"tokens": 0, "seconds": 0.0}  # before: the totals of the runs resumed
        if checkpoint is not None:
            start, evaluations, before = self.restore(checkpoint, optimizer, scheduler)
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
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
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
                totals = {"tokens": before["tokens"] + tokens, "seconds": before["seconds"] + elapsed}
                self.checkpoint(model, optimizer, scheduler, step + 1, evaluations, totals)
            if self.on_step is not None:
                self.on_step(step + 1)
        bar.close()
        log.close()
        evaluations.append({"step": self.total_steps, **self.evaluate(model)})
        model.eval()
        self.save(model, self.output)
        result = TrainResult(self.output, self.total_steps, loss_value, evaluations,
                             before["seconds"] + time.perf_counter() - started, before["tokens"] + tokens)
        (self.output / "README.md").write_text(model_card(s, result, len(self.items)))
        shutil.rmtree(self.output / "checkpoints", ignore_errors=True)
        return result

    def batch(self, index: int) -> list[Any]:
        """Micro-batch ``index`` of ``data.batches``: the examples of an epoch shuffled by (seed, epoch), taken in
        order, an example deferred while one of its texts (query, positive, the negatives used) is in the batch
        already; an epoch's last batch is topped up from the next epoch. Distillation and MLM have no in-batch
        negatives: there only the same example is kept out of a batch twice. A function of (seed, index): the
        stream is replayed from its start when an earlier batch is asked for (a resumed run replays it once)."""
        if index not in self._recent:
            if self._stream is None or index < self._streamed:
                self._stream, self._streamed, self._recent = batches(
                    len(self.items), self.settings.batch_size, self.settings.seed, self._keys), 0, {}
            while self._streamed <= index:
                self._recent[self._streamed] = next(self._stream)
                self._recent.pop(self._streamed - 64, None)
                self._streamed += 1
        return [self.items[i] for i in self._recent[index]]

    def _keys(self, index: int) -> tuple[Any, ...]:
        """What may not appear twice in a batch: an example's texts for the contrastive losses, else the example."""
        if self.settings.loss in ("contrastive", "cached"):
            e = self.items[index]
            return (e.query, e.positive, *e.negatives[: self.settings.negatives])
        return (index,)

    # ----- losses
    def loss(self, model: Any, batch: list[Any], step: int, micro: int) -> tuple[torch.Tensor, int]:
        """The micro-batch's loss and its token count. ``model`` is a ``Head`` (an ``encoder.Encoder`` for mlm)."""
        s = self.settings
        generator = torch.Generator().manual_seed(hash((s.seed, step, micro)) % 2**63)  # a function of the step
        if s.task == "mlm":
            return self.mlm_loss(model, batch, generator)
        queries = [e.query for e in batch]
        if s.loss == "distillation":  # rows of different widths are padded to the widest, and the padding masked
            widths = [len(e.documents) for e in batch]
            width = max(widths)
            documents = [d for e in batch for d in e.documents]
            teacher = torch.tensor([e.scores + [0.0] * (width - len(e.scores)) for e in batch], device=self.device)
            mask = None if min(widths) == width else torch.tensor(
                [[j < w for j in range(width)] for w in widths], device=self.device)
        else:
            documents = [e.positive for e in batch] + [n for e in batch for n in e.negatives[: s.negatives]]
        q_ids, d_ids = model.tokenize(queries, True), model.tokenize(documents, False)
        tokens = sum(map(len, q_ids)) + sum(map(len, d_ids))
        if s.loss == "cached":
            return self.cached_contrastive(model, q_ids, d_ids, generator), tokens
        q, d = model.forward_pair(q_ids, d_ids)
        if s.loss == "distillation":
            student = paired_scores(model, q, d, widths)
            if s.task == "colbert":  # PyLate's Distillation
                return losses.colbert_distillation(student, teacher, mask), tokens
            return losses.kl_distillation(student, teacher, self.temperature, mask), tokens  # DistillKLDivLoss
        return self.contrastive(model, q, d), tokens

    @property
    def temperature(self) -> float:
        """--temperature, else the reference's default: 0.05 dense (MNRL's scale 20), 1.0 colbert (PyLate's
        Contrastive), 1.0 dense distillation (DistillKLDivLoss). Colbert distillation has none."""
        s = self.settings
        if s.temperature is not None:
            return s.temperature
        return DISTILLATION_TEMPERATURE if s.loss == "distillation" else DEFAULT_TEMPERATURE[s.task]

    def contrastive(self, model: Head, q: Any, d: Any) -> torch.Tensor:
        """Cross-entropy over the head's own scores (cosine or MaxSim) divided by the temperature."""
        return losses.contrastive(model.scores(q, d), self.temperature)

    def cached_contrastive(self, model: Head, q_ids: list[list[int]], d_ids: list[list[int]],
                           generator: torch.Generator) -> torch.Tensor:
        """GradCache: embed everything without a graph in chunks of ``mini_batch_size``, take the loss and its
        gradient with respect to the embeddings, then re-embed chunk by chunk with a graph and backpropagate those
        gradients. Memory is that of one chunk; the result equals the plain loss on the whole batch.

        Each chunk runs in a random stream of its own, seeded from ``generator`` in both passes, so that its second
        pass draws the dropout masks of its first."""
        size = self.settings.mini_batch_size
        chunks = [(is_query, ids[a:a + size]) for is_query, ids in ((True, q_ids), (False, d_ids))
                  for a in range(0, len(ids), size)]
        seeds = torch.randint(2**62, (len(chunks),), generator=generator).tolist()

        def embed(number: int) -> Sequence[torch.Tensor]:
            is_query, ids = chunks[number]
            with own_random_stream(self.device, seeds[number]):
                return model.forward(ids, is_query)

        with torch.no_grad():
            cached = [[t.detach().requires_grad_() for t in embed(number)] for number in range(len(chunks))]
        queries = [t for (is_query, _), rows in zip(chunks, cached) if is_query for t in rows]
        documents = [t for (is_query, _), rows in zip(chunks, cached) if not is_query for t in rows]
        with torch.enable_grad():
            loss = self.contrastive(model, queries, documents)
            loss.backward()
        for number, rows in enumerate(cached):
            surrogate = sum((out * row.grad).sum() for out, row in zip(embed(number), rows))
            (surrogate / self.settings.accumulation).backward()
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
        """The evaluator's metrics on the eval dataset, or the held-out MLM loss."""
        model.eval()
        try:
            if self.settings.task == "mlm":
                return {"mlm_loss": self.heldout_mlm_loss(model)} if self.eval_texts else {}
            if self.eval_dataset is None or self.evaluator is None:
                return {}
            return self.evaluator(model, self.eval_dataset)
        finally:
            model.train()

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
                   evaluations: list[dict[str, Any]], totals: dict[str, float] | None = None) -> None:
        """OUTPUT/checkpoints/step-N, complete or absent: written as .tmp, then renamed; older ones removed. The
        trainer's state is JSON plus tensors in safetensors (the optimizer's moments, the random streams), so that
        resuming unpickles nothing."""
        root = self.output / "checkpoints"
        final, tmp = root / f"step-{step:07d}", root / f".step-{step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.save(model, tmp)
        tensors, optimizer_state = split_tensors(optimizer.state_dict())
        tensors["rng.cpu"] = torch.get_rng_state()
        for index in cuda_devices(self.device):
            tensors[f"rng.cuda.{index}"] = torch.cuda.get_rng_state(index)
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps({
            "step": step, "evaluations": evaluations, "settings": asdict(self.settings),
            "totals": totals or {"tokens": 0, "seconds": 0.0},  # tokens and seconds of the run so far
            "scheduler": scheduler.state_dict(), "optimizer": optimizer_state}, indent=2) + "\n")
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        os.replace(tmp, final)
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, folder: Path, optimizer: torch.optim.Optimizer,
                scheduler: Any) -> tuple[int, list[dict[str, Any]], dict[str, float]]:
        """The optimizer, scheduler and random streams as ``checkpoint`` saved them; (step, evaluations so far,
        tokens and seconds so far)."""
        state = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
        optimizer.load_state_dict(join_tensors(state["optimizer"], tensors, optimizer.state_dict()["param_groups"]))
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.cpu"])  # dropout (BERT backbones) draws on it
        for index in cuda_devices(self.device):
            if f"rng.cuda.{index}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{index}"], index)
        totals = state.get("totals") or {}
        return state["step"], state["evaluations"], {"tokens": int(totals.get("tokens", 0)),
                                                     "seconds": float(totals.get("seconds", 0.0))}

    def _trim_log(self, step: int) -> None:
        """The log keeps the steps up to the checkpoint resumed from (a killed run's later steps are run again). A line
        that does not parse (a run killed in the middle of writing it) is dropped."""
        path = self.output / "training_log.jsonl"
        if path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                    kept.append(line)
            atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))

    def latest_checkpoint(self) -> Path | None:
        root = self.output / "checkpoints"
        found = sorted(p for p in root.glob("step-*") if (p / STATE_JSON).exists()) if root.exists() else []
        return found[-1] if found else None


def paired_scores(model: Head, queries: Any, documents: Any, widths: list[int]) -> torch.Tensor:
    """(rows, widest) scores of each query against its own ``widths[i]`` documents (laid out row after row), the
    narrower rows padded with 0 (the loss masks them)."""
    width = max(widths)
    if min(widths) == width:
        return model.paired_scores(queries, documents, width)
    rows, start = [], 0
    for i, w in enumerate(widths):
        row = model.paired_scores(queries[i:i + 1], documents[start:start + w], w)[0]
        rows.append(torch.nn.functional.pad(row, (0, width - w)))
        start += w
    return torch.stack(rows)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's two groups, as nanoGPT and transformers' Trainer make them: weight decay on matrices (linear and
    embedding weights), none on biases and normalization weights (decay would pull a norm's scale towards 0 and a
    bias towards no shift, which is not regularization). A parameter shared by two modules (tied weights) is
    listed once."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            (no_decay if parameter.ndim < 2 or isinstance(module, NORMS) else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cuda_devices(device: torch.device) -> list[int]:
    """The CUDA device whose random stream dropout draws on, if training runs on one."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextmanager
def own_random_stream(device: torch.device, seed: int) -> Iterator[None]:
    """Random draws inside the block (dropout) come from a stream seeded with ``seed``; torch's global streams (the
    CPU's, and ``device``'s when it is a GPU) are put back as they were when the block ends."""
    devices = cuda_devices(device)
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for index in devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def split_tensors(optimizer_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict`` as (tensors for safetensors, the rest for JSON): per-parameter tensors are
    named ``optimizer.<parameter index>.<key>``."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in optimizer_state["state"].items():
        plain[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[str(index)][key] = value
    return tensors, {"state": plain, "param_groups": optimizer_state["param_groups"]}


def join_tensors(plain: dict[str, Any], tensors: dict[str, torch.Tensor],
                 current_groups: list[dict[str, Any]]) -> dict[str, Any]:
    """``split_tensors`` undone. JSON has no tuples: a group setting that is a tuple in the optimizer as built
    (AdamW's betas) is made one again."""
    state: dict[int, dict[str, Any]] = {int(index): dict(values) for index, values in plain["state"].items()}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    groups = [{key: tuple(value) if isinstance(current.get(key), tuple) else value for key, value in saved.items()}
              for saved, current in zip(plain["param_groups"], current_groups)]
    return {"state": state, "param_groups": groups}


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
