"""The one interface every head offers, so that no code outside ``retrieval.heads`` asks which head it holds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from encoder.tokenizer import Tokenizer

from ..kinds import KINDS, Kind  # noqa: F401  (the heads' kinds, defined where the command line can read them)


@runtime_checkable
class Head(Protocol):
    """A retrieval model: texts in, vectors out, and the rules to compare them.

    ``encode_*`` return one (dim,) row per text stacked as an (n, dim) array for a dense head, and one
    (n_tokens, dim) array per text for a multi-vector head; ``similarity`` takes what they return."""

    kind: Kind
    tokenizer: Tokenizer

    @property
    def dim(self) -> int: ...

    @property
    def document_length(self) -> int:
        """Tokens a document may take, special tokens, prompt and marker included (settable)."""

    @property
    def max_document_length(self) -> int:
        """The most ``document_length`` may be: the backbone's position limit."""

    @property
    def document_overhead(self) -> int:
        """Tokens every document costs besides its text ([CLS], [SEP], prompt or marker)."""

    def tokenize(self, texts: Sequence[str], is_query: bool) -> list[list[int]]: ...

    def forward(self, token_ids: Sequence[Sequence[int]], is_query: bool) -> torch.Tensor | list[torch.Tensor]:
        """Differentiable (training): token ids from ``tokenize`` to vectors, all texts in one packed pass."""

    def encode_queries(self, texts: Sequence[str], show_progress: bool | None = None) -> Any: ...

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None) -> Any: ...

    def similarity(self, queries: Any, documents: Any) -> np.ndarray:
        """(n_queries, n_documents) scores: cosine for dense heads, MaxSim for multi-vector heads."""

    def scores(self, queries: Any, documents: Any) -> torch.Tensor:
        """``similarity`` on ``forward``'s outputs, differentiable: what training losses score with, so that a
        trainer never needs to know which head it holds."""

    def forward_pair(self, query_ids: Sequence[Sequence[int]],
                     document_ids: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        """``forward`` on queries and on documents, as fast as the head allows (a dense head reads both alike: one
        packed pass)."""

    def paired_scores(self, queries: Any, documents: Any, width: int) -> torch.Tensor:
        """(n_queries, width), differentiable: query i against documents i*width .. (i+1)*width-1 only (the lists
        a teacher scored, for distillation)."""

    def settings(self) -> dict[str, Any]:
        """What decides the vectors besides the weights (lengths, dimensions): part of cache keys and reports."""

    def save(self, folder: str | Path) -> None: ...
