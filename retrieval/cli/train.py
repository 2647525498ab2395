"""``mret train dense|colbert|mlm``: the command-line face of ``retrieval.training.Trainer``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .console import err


class Task(str, Enum):
    dense = "dense"
    colbert = "colbert"
    mlm = "mlm"


def train_command(
    task: Task = typer.Argument(..., help="dense (bi-encoder), colbert (multi-vector) or mlm (domain adaptation)."),
    model: str = typer.Option(..., "--model", "-m", help="A trained head or a base checkpoint (folder or hub id)."),
    data: Path = typer.Option(..., "--data", "-d", help=(
        "jsonl of {query, positive, negatives} or {query, documents, scores}; a BEIR folder (qrels/<split>.tsv); "
        "for mlm: .txt (a text per line), .jsonl of {text}, or a BEIR folder's corpus.")),
    output: Path = typer.Option(..., "--output", "-o", help="Where the model goes (rerun to resume a killed run)."),
    loss: Optional[str] = typer.Option(None, "--loss", help=(
        "contrastive (default), cached (GradCache) or distillation; not for mlm.")),
    split: str = typer.Option("train", "--split", help="qrels split of a BEIR folder."),
    epochs: float = typer.Option(1.0, "--epochs"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Overrides --epochs."),
    batch_size: int = typer.Option(32, "--batch-size", help="At most the number of examples (no text twice in one)."),
    mini_batch_size: int = typer.Option(8, "--mini-batch-size", help="Chunk size of the cached loss."),
    accumulation: int = typer.Option(1, "--accumulation", help="Micro-batches per optimizer step."),
    learning_rate: float = typer.Option(2e-5, "--lr"),
    warmup_ratio: float = typer.Option(0.1, "--warmup-ratio"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=(
        "Default 0.05 dense, 1.0 colbert; dense distillation 1.0; none for colbert distillation.")),
    negatives: int = typer.Option(1, "--negatives", help="Hard negatives per query (when the data has them)."),
    mine: bool = typer.Option(False, "--mine-negatives", help=(
        "Mine --negatives hard negatives per query with our index (over the corpus of a BEIR folder).")),
    mine_with: Optional[str] = typer.Option(None, "--mine-with", help="Dense model that mines (default: --model)."),
    mine_skip: int = typer.Option(0, "--mine-skip", help="Best-ranked non-positives to skip when mining."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Document tokens (0: the model's maximum)."),
    dim: int = typer.Option(128, "--dim", help="Projection size of a new ColBERT head (on a base model)."),
    seed: int = typer.Option(0, "--seed"),
    save_every: int = typer.Option(0, "--save-every", help="Checkpoint every N steps (0: none)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="A BEIR folder to score during training."),
    eval_split: str = typer.Option("dev", "--eval-split"),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate every N steps (always before and after)."),
    device: str = typer.Option("cpu", "--device"),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: on CUDA)."),
) -> None:
    """Fine-tune a retriever, or adapt a ModernBERT to a domain with masked-language modelling."""
    from ..training.trainer import Trainer, TrainSettings

    settings = TrainSettings(
        task.value, model, str(data), str(output), loss, split,
        epochs, max_steps, batch_size, mini_batch_size, accumulation, learning_rate, warmup_ratio,
        temperature=temperature, negatives=negatives, mine_negatives=mine, mine_with=mine_with, mine_skip=mine_skip,
        max_length=max_length, colbert_dim=dim, seed=seed, save_every=save_every,
        eval_data=str(eval_data) if eval_data else None, eval_split=eval_split, eval_every=eval_every,
        bf16=bf16, device=device)
    evaluator = None
    if eval_data:  # the composition root hands the harness's evaluation to the trainer, which cannot import it
        from eval.runner import evaluate_head

        evaluator = evaluate_head
    result = Trainer(settings, evaluator=evaluator).train()
    err.print(f"saved {result.output} after {result.steps:,} steps ({result.seconds:,.0f} s, "
              f"{result.tokens / max(result.seconds, 1e-9):,.0f} tokens/s), final loss {result.final_loss:.4f}",
              highlight=False)
    for evaluation in result.evaluations:
        err.print(f"  step {evaluation['step']:>6}: " + ", ".join(
            f"{k} {v}" for k, v in evaluation.items() if k != "step"), highlight=False)
