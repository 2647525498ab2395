"""Training losses, as plain functions of embeddings (so that the cached variant can call them on detached copies).

Layout shared by the contrastive losses: ``queries`` are B rows; ``documents`` are B positives (row i answers query
i) followed by any hard negatives; every other document in the batch is a negative for each query (in-batch
negatives, as sentence-transformers' MultipleNegativesRankingLoss).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def info_nce(queries: torch.Tensor, documents: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Cross-entropy over cosine similarities / temperature (MNRL's scale 20 is temperature 0.05)."""
    scores = F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T / temperature
    return F.cross_entropy(scores, torch.arange(len(queries), device=scores.device))


def maxsim_scores(queries: Sequence[torch.Tensor], documents: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n_queries, n_documents) late-interaction scores: for each query token its best document token, summed.
    Documents are padded here (inside the loss, after the encoder) with -inf so padding never wins a max."""
    dim = queries[0].shape[1]
    longest = max(len(d) for d in documents)
    padded = queries[0].new_zeros(len(documents), longest, dim)
    valid = torch.zeros(len(documents), longest, dtype=torch.bool, device=padded.device)
    for i, d in enumerate(documents):
        padded[i, : len(d)] = d
        valid[i, : len(d)] = True
    rows = []
    for q in queries:
        sims = torch.einsum("qd,ntd->nqt", q, padded).masked_fill(~valid[:, None, :], float("-inf"))
        rows.append(sims.max(dim=2).values.sum(dim=1))
    return torch.stack(rows)


def colbert_contrastive(queries: Sequence[torch.Tensor], documents: Sequence[torch.Tensor],
                        temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy over MaxSim scores (PyLate's Contrastive loss; its default temperature is 1)."""
    scores = maxsim_scores(queries, documents) / temperature
    return F.cross_entropy(scores, torch.arange(len(queries), device=scores.device))


def kl_distillation(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) over each query's own documents (rows: queries, columns: that query's documents),
    both turned into distributions by a softmax: PyLate's Distillation loss."""
    teacher = F.log_softmax(teacher_scores / temperature, dim=-1)
    student = F.log_softmax(student_scores / temperature, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True)


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
