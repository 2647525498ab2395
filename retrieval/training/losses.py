"""Training losses, as plain functions of embeddings (so that the cached variant can call them on detached copies).

Layout shared by the contrastive losses: ``queries`` are B rows; ``documents`` are B positives (row i answers query
i) followed by any hard negatives; every other document in the batch is a negative for each query (in-batch
negatives, as sentence-transformers' MultipleNegativesRankingLoss).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..scoring import maxsim_scores

__all__ = ["colbert_contrastive", "colbert_distillation", "contrastive", "info_nce", "kl_distillation", "mask_tokens",
           "maxsim_scores"]


def contrastive(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy over (n_queries, n_documents) scores / temperature, document i being query i's positive: the
    in-batch-negatives loss whatever the head's scores are (cosine, MaxSim)."""
    return F.cross_entropy(scores / temperature, torch.arange(len(scores), device=scores.device))


def info_nce(queries: torch.Tensor, documents: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Cross-entropy over cosine similarities / temperature (MNRL's scale 20 is temperature 0.05)."""
    return contrastive(F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T, temperature)


def colbert_contrastive(queries: Sequence[torch.Tensor], documents: Sequence[torch.Tensor],
                        temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy over MaxSim scores (PyLate's Contrastive loss; its default temperature is 1)."""
    return contrastive(maxsim_scores(queries, documents), temperature)


def kl_distillation(student_scores: torch.Tensor, teacher_scores: torch.Tensor, temperature: float = 1.0,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) over each query's own documents (rows: queries, columns: that query's documents):
    sentence-transformers' DistillKLDivLoss (5.0.1 and later, default temperature 1; 6.x with one temperature)::

        student = log_softmax(student_scores / T); teacher = softmax(labels / T)
        loss = KLDivLoss(reduction="batchmean")(student, teacher) * T**2

    ``mask`` (rows, columns) marks the real documents of rows padded to the widest one: padding takes no share of
    either distribution, and batchmean still divides by the number of rows."""
    student = _log_softmax(student_scores.float() / temperature, mask)
    teacher = _log_softmax(teacher_scores.float() / temperature, mask)
    return _kl_batchmean(student, teacher, mask) * temperature**2


def colbert_distillation(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                         mask: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
    """PyLate's Distillation loss (pylate/losses/distillation.py, PyLate 1.x; no temperature): the student's MaxSim
    scores min-max normalized per query over its documents (``normalize_scores=True``, its default), then::

        scores = (scores - min) / (max - min + 1e-8)
        loss = KLDivLoss(reduction="batchmean", log_target=True)(log_softmax(scores), log_softmax(labels))

    ``mask`` as in ``kl_distillation``: padding counts in neither the min, the max nor either distribution."""
    student = student_scores.float()
    if normalize:
        valid = torch.ones_like(student, dtype=torch.bool) if mask is None else mask
        high = student.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)
        low = student.masked_fill(~valid, float("inf")).amin(dim=-1, keepdim=True)
        student = (student - low) / (high - low + 1e-8)
    return _kl_batchmean(_log_softmax(student, mask), _log_softmax(teacher_scores.float(), mask), mask)


def _log_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return F.log_softmax(scores if mask is None else scores.masked_fill(~mask, float("-inf")), dim=-1)


def _kl_batchmean(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``F.kl_div(student, teacher, reduction="batchmean", log_target=True)`` (both are log-probabilities), summed
    over the unmasked entries only (a padded entry, -inf in both, would give nan)."""
    if mask is None:
        return F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    teacher, student = teacher.masked_fill(~mask, 0.0), student.masked_fill(~mask, 0.0)
    terms = torch.exp(teacher) * (teacher - student)
    return torch.where(mask, terms, torch.zeros_like(terms)).sum() / len(terms)


def mask_tokens(token_ids: list[list[int]], mask_id: int, special_ids: set[int], vocab_size: int,
                generator: torch.Generator, probability: float = 0.3) -> tuple[list[list[int]], torch.Tensor]:
    """BERT's masking at ModernBERT's rate (30%): of the chosen tokens 80% become [MASK], 10% a random token, 10%
    stay. Returns the corrupted ids and the packed labels (-100 where nothing is predicted). Special tokens are never
    chosen; ``generator`` makes the masks a function of the step (resumable runs draw the same masks)."""
    flat = torch.tensor([t for row in token_ids for t in row])
    special = torch.tensor([t in special_ids for t in flat.tolist()])
    chosen = (torch.rand(len(flat), generator=generator) < probability) & ~special
    labels = torch.where(chosen, flat, torch.full_like(flat, -100))
    action = torch.rand(len(flat), generator=generator)
    random_tokens = torch.randint(0, vocab_size, (len(flat),), generator=generator)
    corrupted = torch.where(chosen & (action < 0.8), torch.full_like(flat, mask_id), flat)
    corrupted = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, corrupted)
    out, start = [], 0
    for row in token_ids:
        out.append(corrupted[start: start + len(row)].tolist())
        start += len(row)
    return out, labels
