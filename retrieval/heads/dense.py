"""The single-vector bi-encoder: backbone -> pooling -> optional Dense layers -> optional Normalize.

Reads and writes the sentence-transformers folder format, so gte-modernbert-base, modernbert-embed-base,
all-MiniLM-L6-v2 and models saved here load in either library with the same vectors (a model that strips text edges,
saved by sentence-transformers up to 5.x, gives them in 6.x on stripped texts: see ``strips_text_edges``).

The model's ``similarity_fn_name`` (cosine, dot, euclidean, manhattan; cosine when unset, as sentence-transformers)
is kept: ``similarity`` scores with it, and vectors are never normalized beyond the model's own Normalize module (a
"dot" model's lengths are part of its scores). Indexes and ``mret eval`` score by cosine, so ``load_head`` warns when
it loads a model that is not (``warn_similarity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoder import checkpoint
from encoder.errors import ModelLoadError
from encoder.pretrained import check_dtype
from encoder.tokenizer import Tokenizer, check_texts
from modernretrieval.errors import SettingsError

from .backbones import load_backbone
from .base import Kind
from .formats import STFolder, strips_text_edges, write_folder
from .layers import Normalize, Pooling, pool_all

Output = Literal["numpy", "torch"]
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")  # sentence-transformers' similarity_fn_name values


class BiEncoder(nn.Module):
    """An ``nn.Module``: the backbone and each layer are submodules, so ``parameters()``, ``train()``/``eval()`` and
    ``to(device)`` reach them all. ``forward`` is the differentiable packed pass of training; ``encode*`` infer."""

    kind: Kind = "dense"

    def __init__(self, folder: Path, spec: STFolder, device: torch.device, dtype: torch.dtype,
                 truncate_dim: int | None = None):
        super().__init__()
        if spec.pooling is None:
            raise ModelLoadError(f"{folder} has no Pooling module: a multi-vector model? load it with ColBERT")
        self.folder, self.spec = folder, spec
        self.backbone = load_backbone(spec.transformer, device, dtype)
        self.pooling = spec.pooling
        if self.pooling.dimension is None:
            self.pooling.dimension = self.backbone.hidden_size
        self.dense = nn.ModuleList(spec.dense).to(device)
        self.normalizer = spec.normalize
        # sentence-transformers' length: max_seq_length, else the tokenizer's model_max_length, capped at the
        # backbone's positions (sentence-transformers caps only the latter; a longer max_seq_length fails there on a
        # BERT, and runs ModernBERT past the positions it was trained on)
        self.max_length = min(spec.max_seq_length or self.backbone.tokenizer.model_max_length, self.backbone.max_length)
        self.similarity_fn_name = spec.settings.get("similarity_fn_name") or "cosine"
        if self.similarity_fn_name not in SIMILARITIES:
            raise ModelLoadError(f"{folder}: similarity_fn_name {self.similarity_fn_name!r} is not one of "
                                 f"{', '.join(SIMILARITIES)}")
        self.truncate_dim = truncate_dim
        self.strip = strips_text_edges(spec.settings)  # as the sentence-transformers that saved it
        self.eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, truncate_dim: int | None = None,
                        revision: str | None = None) -> "BiEncoder":
        """A sentence-transformers folder or hub id (ModernBERT on our encoder; other backbones via transformers)."""
        device = torch.device(device)
        check_dtype(device, dtype)
        folder = checkpoint.resolve(name_or_path, revision, extra_files=["*.json", "*/*.json", "*/*.safetensors"])
        spec = STFolder.read(folder)
        if spec.pooling is not None and not spec.pooling.include_prompt:
            raise ModelLoadError("pooling with include_prompt=false is not supported yet")
        return cls(folder, spec, device, dtype, truncate_dim)

    @classmethod
    def from_base(cls, name_or_path: str | Path, pooling: str = "mean", device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, max_length: int | None = None,
                  revision: str | None = None) -> "BiEncoder":
        """A new bi-encoder to train on a plain Hugging Face checkpoint (e.g. answerdotai/ModernBERT-base):
        ``pooling`` then Normalize, as sentence-transformers builds one from a bare transformer."""
        device = torch.device(device)
        check_dtype(device, dtype)
        folder = checkpoint.resolve(name_or_path, revision)
        if (folder / "modules.json").exists():
            return cls.from_pretrained(folder, device, dtype)
        hidden = checkpoint.read_config(folder)["hidden_size"]
        spec = STFolder(transformer=folder, pooling=Pooling(hidden, [pooling]), normalize=Normalize(),
                        max_seq_length=max_length)
        return cls(folder, spec, device, dtype)

    @property
    def dim(self) -> int:
        full = self.dense[-1].out_features if len(self.dense) else self.backbone.hidden_size * len(self.pooling.modes)
        return min(full, self.truncate_dim or full)

    @property
    def device(self) -> torch.device:
        return self.backbone.model.device

    def encode(self, texts: Sequence[str], prompt_name: str | None = None, prompt: str | None = None,
               normalize: bool | None = None, output: Output = "numpy",
               show_progress: bool | None = None) -> np.ndarray | torch.Tensor:
        """(n, dim) float32 vectors in input order. ``prompt_name`` picks one of the model's prompts (its default
        prompt when None); ``prompt`` gives the text to prepend directly. ``normalize`` defaults to the model's
        Normalize module (and renormalizes after ``truncate_dim``).

        Each batch of the backbone is pooled and projected as soon as it is run, its vectors moved to the CPU: what
        is held is one batch's token states and the (n, dim) output, whatever the number of texts."""
        if prompt is None:
            prompt = self._named_prompt(prompt_name)
        token_ids = self._token_ids(texts, prompt)
        modes = self.pooling.modes

        def vectors_of(batch: list[int], states: list[torch.Tensor]) -> torch.Tensor:
            return self._head(pool_all(states, modes), normalize).float().cpu()

        rows = self.backbone.map_batches(token_ids, vectors_of, show_progress)
        vectors = torch.stack(rows) if rows else torch.zeros((0, self.dim))
        return vectors.numpy() if output == "numpy" else vectors

    def _named_prompt(self, prompt_name: str | None) -> str:
        """The text of the prompt ``prompt_name``; None: the model's default prompt (default_prompt_name), if any."""
        prompt_name = prompt_name or self.spec.settings.get("default_prompt_name")
        if prompt_name is not None and prompt_name not in self.spec.prompts:
            raise SettingsError(f"unknown prompt {prompt_name!r}; this model has {sorted(self.spec.prompts)}")
        return self.spec.prompts.get(prompt_name, "") if prompt_name else ""

    def tokenize(self, texts: Sequence[str], is_query: bool = False, prompt: str | None = None) -> list[list[int]]:
        """Token ids as the sentence-transformers that saved the checkpoint makes them: the prompt (the model's query
        or document prompt, unless ``prompt`` is given) before each text, the whole stripped of edge whitespace when
        that version did (up to 5.x; see ``strips_text_edges``), lower-cased if the model says so, truncated at
        ``max_length``."""
        if prompt is None:
            prompt = self.query_prompt if is_query else self.document_prompt
        return self._token_ids(texts, prompt)

    def _token_ids(self, texts: Sequence[str], prompt: str) -> list[list[int]]:
        check_texts(texts)
        texts = [prompt + t for t in texts]
        if self.strip:
            texts = [t.strip() for t in texts]
        if self.spec.do_lower_case:
            texts = [t.lower() for t in texts]
        return self.backbone.tokenizer.encode(texts, self.max_length)

    def forward(self, token_ids: Sequence[Sequence[int]], is_query: bool = False) -> torch.Tensor:
        """Differentiable (training): token ids -> (n, dim) vectors, all texts in one packed pass (queries and
        documents alike: the prompt is already in the ids)."""
        hidden, cu_seqlens = self.backbone.forward_states(token_ids)
        return self._head(self.pooling(hidden, cu_seqlens))

    def _head(self, vectors: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        """Pooled vectors -> Dense layers -> Normalize -> Matryoshka truncation (renormalized)."""
        for layer in self.dense:
            vectors = layer(vectors)
        if self.normalizer is not None:
            vectors = self.normalizer(vectors)
        if self.truncate_dim:
            vectors = vectors[:, : self.truncate_dim]
        if normalize or (normalize is None and self.normalizer is not None and self.truncate_dim):
            vectors = F.normalize(vectors, dim=-1)
        return vectors

    def encode_queries(self, texts: Sequence[str], **kwargs) -> np.ndarray | torch.Tensor:
        """Queries, with ``query_prompt`` (the model's "query" prompt, e.g. nomic's "search_query: ")."""
        if "prompt" not in kwargs and "prompt_name" not in kwargs:
            kwargs["prompt"] = self.query_prompt
        return self.encode(texts, **kwargs)

    def encode_documents(self, texts: Sequence[str], **kwargs) -> np.ndarray | torch.Tensor:
        """Documents, with ``document_prompt`` (the model's "document", "passage" or "corpus" prompt)."""
        if "prompt" not in kwargs and "prompt_name" not in kwargs:
            kwargs["prompt"] = self.document_prompt
        return self.encode(texts, **kwargs)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.backbone.tokenizer

    @property
    def document_length(self) -> int:
        return self.max_length

    @document_length.setter
    def document_length(self, length: int) -> None:
        self.max_length = length

    @property
    def max_document_length(self) -> int:
        return self.backbone.max_length

    @property
    def document_overhead(self) -> int:
        return len(self.tokenizer.encode([self.document_prompt], self.max_length)[0])

    def similarity(self, queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
        """(n_queries, n_documents) scores by the model's ``similarity_fn_name``, as sentence-transformers' own
        ``similarity``: cosine (the default), dot product, or the negative euclidean or manhattan distance."""
        q = np.asarray(queries, dtype=np.float32)
        d = np.asarray(documents, dtype=np.float32)
        if self.similarity_fn_name == "dot":
            return q @ d.T
        if self.similarity_fn_name in ("euclidean", "manhattan"):
            p = 2.0 if self.similarity_fn_name == "euclidean" else 1.0
            return -torch.cdist(torch.from_numpy(q), torch.from_numpy(d), p=p).numpy()
        q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
        d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
        return q @ d.T

    def warn_similarity(self) -> None:
        """A warning when the model's similarity is not cosine: what indexes and ``mret eval`` score with."""
        if self.similarity_fn_name != "cosine":
            warnings.warn(f"{self.folder} scores by {self.similarity_fn_name} (similarity_fn_name), but indexes and "
                          "evaluations score by cosine: its rankings there are not the model's own", stacklevel=2)

    def scores(self, queries: torch.Tensor | Sequence[torch.Tensor],
               documents: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Differentiable (training losses): (n_queries, n_documents) cosines of ``forward``'s outputs, what
        sentence-transformers' losses score with by default (MultipleNegativesRankingLoss's cos_sim) whatever the
        model's ``similarity_fn_name``. Rows may come as one (n, dim) tensor or as a sequence of (dim,) rows."""
        q = queries if isinstance(queries, torch.Tensor) else torch.stack(list(queries))
        d = documents if isinstance(documents, torch.Tensor) else torch.stack(list(documents))
        return F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T

    def forward_pair(self, query_ids: Sequence[Sequence[int]],
                     document_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and documents in one packed pass: the prompts are already in the ids."""
        vectors = self.forward(list(query_ids) + list(document_ids))
        return vectors[: len(query_ids)], vectors[len(query_ids):]

    def paired_scores(self, queries: torch.Tensor, documents: torch.Tensor, width: int) -> torch.Tensor:
        """Dot products, as sentence-transformers' DistillKLDivLoss scores a bi-encoder (not cosines: a model
        without a Normalize module is trained on the scores it is used with)."""
        return (queries[:, None, :] * documents.view(len(queries), width, -1)).sum(-1)

    def settings(self) -> dict[str, int | None]:
        return {"max_length": self.max_length, "truncate_dim": self.truncate_dim}

    @property
    def document_prompt(self) -> str:
        """The text put before every document: the model's "document", "passage" or "corpus" prompt (the first it
        has), else nothing. ``encode_documents``, ``tokenize`` and ``document_overhead`` all use it.

        As sentence-transformers 6.x's ``encode_document``, the model's default prompt (default_prompt_name) does not
        apply here: a method's own prompt wins, even an empty one (6.x gives every model "query" and "document"
        prompts, empty unless the folder sets them); the default prompt applies to ``encode`` without a prompt. One
        difference: 6.x's empty "document" prompt also shadows a "passage" or "corpus" prompt, which is used here
        (the candidates its ``encode_document`` documents, and 5.x used)."""
        name = self._prompt("document", "passage", "corpus")
        return (self.spec.prompts[name] or "") if name else ""

    @property
    def query_prompt(self) -> str:
        """The model's "query" prompt, else nothing (``encode_query``; the default prompt does not apply)."""
        name = self._prompt("query")
        return (self.spec.prompts[name] or "") if name else ""

    def _prompt(self, *names: str) -> str | None:
        for name in names:
            if name in self.spec.prompts:
                return name
        return None

    def save(self, folder: str | Path) -> None:
        """A sentence-transformers folder that this class and sentence-transformers both load: the backbone, then
        1_Pooling, 2_Dense..., N_Normalize, each saved by its module."""
        layers = [self.pooling, *self.dense, *([self.normalizer] if self.normalizer is not None else [])]
        settings = {k: v for k, v in self.spec.settings.items() if k != "__version__"}
        write_folder(Path(folder), self.backbone, self.max_length, self.spec.do_lower_case, layers,
                     {"prompts": self.spec.prompts, "default_prompt_name": None, **settings,
                      "similarity_fn_name": self.similarity_fn_name, "strip_text_edges": self.strip})
