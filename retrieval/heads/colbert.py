"""The ColBERT multi-vector head (PyLate format): backbone -> Dense projection (to 128) -> L2 norm per token.

Texts are first stripped of leading and trailing whitespace (``str.strip``), then lower-cased if the model says so:
what sentence-transformers 5.3's Transformer module does under PyLate 1.6 (6.x no longer strips; a document ending in
a newline would get a token PyLate never made). Stanford checkpoints follow the same rule (PyLate strips them too):
colbert-ai does not strip, but their BERT tokenizer drops edge whitespace itself, so its ids are the same.
Queries: "[Q]" token after [CLS], truncated to query_length, then expanded with [MASK] up to query_length; the
[MASK]s read the query but are not read (attend_to_expansion_tokens=False), and their vectors are kept.
Documents: "[D]" after [CLS], truncated to document_length, and the tokens of the skiplist (punctuation) dropped.
As PyLate, the text is cut at the length minus one and the marker inserted after, so that query_length and
document_length count the marker; an empty prefix ("query_prefix": "") inserts none and cuts at the length itself.
Both lengths must fit the backbone's positions (512 for BERT, 8192 for ModernBERT): a longer one is refused when the
head is made (from the folder's settings: ModelLoadError; from an argument: SettingsError), not clamped.
Output: one (n_tokens, dim) float32 array per text, never padded.

``ColBERT.from_token_embeddings`` runs any encoder's own token states as a multi-vector model (no projection, no
marker token, no expansion, no skiplist, no stripping: transformers' own tokenization) through the same class: only
its spec and settings differ.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoder import checkpoint
from encoder.errors import ModelLoadError
from encoder.pretrained import check_dtype
from encoder.tokenizer import Tokenizer, check_texts
from modernretrieval.errors import SettingsError

from ..scoring import maxsim, maxsim_scores
from .backbones import load_backbone
from .base import Kind
from .formats import METADATA, STFolder, is_stanford_folder, read_stanford_folder, write_folder
from .layers import PyLateDense
from .token_pooling import check_pool_factor, pool_documents

PRETRAINED_FILES = ["*.json", "*/*.json", "*/*.safetensors", METADATA, "vocab.txt"]  # what from_pretrained fetches


class ColBERT(nn.Module):
    """An ``nn.Module``: the backbone and the projection are submodules, so ``parameters()``, ``train()``/``eval()``
    and ``to(device)`` reach them all. ``forward`` is the differentiable packed pass of training; ``encode_*``
    infer."""

    kind: Kind = "colbert"

    def __init__(self, spec: STFolder, device: torch.device, dtype: torch.dtype, query_length: int | None = None,
                 document_length: int | None = None, strip: bool = True):
        super().__init__()
        self.spec = spec
        self.strip = strip  # texts lose their edge whitespace before tokenizing (PyLate 1.6); see the module doc
        self.backbone = load_backbone(spec.transformer, device, dtype)
        self.dense = nn.ModuleList(spec.dense).to(device)
        settings = spec.settings
        tokenizer = self.backbone.tokenizer
        self.query_length = query_length or settings.get("query_length") or 32
        self.document_length = document_length or settings.get("document_length") or 180
        for name, given, length in (("query_length", query_length, self.query_length),
                                    ("document_length", document_length, self.document_length)):
            if length > self.backbone.max_length:
                why = (f"{name} {length} is above the backbone's {self.backbone.max_length} positions (the length "
                       "counts every token, [CLS], [SEP] and the marker included)")
                raise SettingsError(why) if given else ModelLoadError(f"{spec.transformer}: {why}")
        self.attend_to_expansion = bool(settings.get("attend_to_expansion_tokens", False))
        self.query_expansion = bool(settings.get("do_query_expansion", True))
        # None: no marker token is inserted (from_token_embeddings)
        self.query_prefix_id = self._prefix_id(settings.get("query_prefix", "[Q] "))
        self.document_prefix_id = self._prefix_id(settings.get("document_prefix", "[D] "))
        # as PyLate: each skiplist word is looked up as one token (a word not in the vocabulary maps to [UNK])
        unknown = tokenizer.backend.token_to_id("[UNK]")
        words = settings.get("skiplist_words", list(string.punctuation))
        self.skiplist = {tokenizer.backend.token_to_id(w) for w in words} - {None} | (
            {unknown} if unknown is not None and any(tokenizer.backend.token_to_id(w) is None for w in words) else set())
        self.pool_factor = 1  # token pooling of documents (token_pooling.py), off; load_head(pool_factor=...) sets it
        self.eval()

    def _prefix_id(self, prefix: str | None) -> int | None:
        """None for no marker: a model made by from_token_embeddings, or an empty prefix (PyLate inserts none)."""
        if not prefix:
            return None
        token_id = self.backbone.tokenizer.backend.token_to_id(prefix.strip()) or self.backbone.tokenizer.backend.token_to_id(prefix)
        if token_id is None:
            raise ModelLoadError(f"the prefix token {prefix!r} is not in the tokenizer")
        return token_id

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, query_length: int | None = None,
                        document_length: int | None = None, revision: str | None = None) -> "ColBERT":
        """A PyLate folder or hub id, or a Stanford ColBERT checkpoint (artifact.metadata, e.g.
        colbert-ir/colbertv2.0). ``document_length`` may be raised (up to 8192) for long documents."""
        device = torch.device(device)
        check_dtype(device, dtype)
        folder = checkpoint.resolve(name_or_path, revision,
                                    extra_files=PRETRAINED_FILES)
        spec = read_stanford_folder(folder) if is_stanford_folder(folder) else STFolder.read(folder, PyLateDense)
        if spec.pooling is not None:
            raise ModelLoadError(f"{folder} pools to one vector: load it with BiEncoder")
        return cls(spec, device, dtype, query_length, document_length)

    @classmethod
    def from_token_embeddings(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                              dtype: torch.dtype = torch.float32, query_length: int | None = None,
                              document_length: int | None = None, revision: str | None = None) -> "ColBERT":
        """Any sentence-transformers folder's backbone (or a plain Hugging Face checkpoint) used as a multi-vector
        model: every token's state ([CLS]/[SEP] included), L2-normalized, nothing projected, inserted, expanded or
        dropped. Queries and documents are truncated at the folder's max_seq_length (else the backbone's maximum).

        A baseline for late interaction: what MaxSim gives on an encoder never trained for it. Such a model cannot
        be saved (see ``save``); load it again from its source folder."""
        device = torch.device(device)
        check_dtype(device, dtype)
        folder = checkpoint.resolve(name_or_path, revision, extra_files=["*.json", "*/*.json", "*/*.safetensors"])
        spec = STFolder.read(folder) if (folder / "modules.json").exists() else STFolder(transformer=folder)
        positions = checkpoint.read_config(spec.transformer).get("max_position_embeddings", 512)
        limit = min(spec.max_seq_length or positions, positions)
        settings = {"query_prefix": None, "document_prefix": None, "query_length": limit, "document_length": limit,
                    "do_query_expansion": False, "skiplist_words": []}
        spec = replace(spec, pooling=None, dense=[], normalize=None, settings=settings)
        return cls(spec, device, dtype, query_length, document_length, strip=False)

    @classmethod
    def from_base(cls, name_or_path: str | Path, dim: int = 128, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, query_length: int = 32, document_length: int = 180,
                  revision: str | None = None) -> "ColBERT":
        """A new ColBERT to train, on any encoder (a Hugging Face or sentence-transformers folder): a Dense
        projection to ``dim`` (the identity when ``dim`` equals the hidden size, else random orthogonal), marker
        tokens [Q]/[D] when the tokenizer has them, else [unused0]/[unused1] (as Stanford ColBERT; no new
        embeddings), query expansion with [MASK], punctuation skiplist: PyLate's defaults. Saves in PyLate's layout."""
        device = torch.device(device)
        check_dtype(device, dtype)
        folder = checkpoint.resolve(name_or_path, revision, extra_files=["*.json", "*/*.json", "*/*.safetensors"])
        base = STFolder.read(folder) if (folder / "modules.json").exists() else STFolder(transformer=folder)
        hidden = checkpoint.read_config(base.transformer)["hidden_size"]
        vocab = json.loads((base.transformer / "tokenizer.json").read_text()) if (
            base.transformer / "tokenizer.json").exists() else {}
        known = {t["content"] for t in vocab.get("added_tokens", [])} | set(vocab.get("model", {}).get("vocab", {}))
        markers = ("[Q] ", "[D] ") if {"[Q]", "[D]"} <= known else ("[unused0]", "[unused1]")
        settings = {"query_prefix": markers[0], "document_prefix": markers[1], "query_length": query_length,
                    "document_length": document_length, "do_query_expansion": True,
                    "attend_to_expansion_tokens": False, "skiplist_words": list(string.punctuation)}
        spec = replace(base, pooling=None, dense=[PyLateDense.new(hidden, dim)], normalize=None, settings=settings)
        return cls(spec, device, dtype)

    @property
    def pool_factor(self) -> int:
        """Documents' vectors are pooled to about 1/pool_factor of their tokens (PyLate's ``pool_factor``: Ward
        clustering, [CLS] kept; token_pooling.py); 1 keeps every token. Queries and ``forward`` are never pooled."""
        return self._pool_factor

    @pool_factor.setter
    def pool_factor(self, value: int) -> None:
        self._pool_factor = check_pool_factor(value)

    @property
    def dim(self) -> int:
        return self.dense[-1].out_features if len(self.dense) else self.backbone.hidden_size

    @property
    def tokenizer(self) -> Tokenizer:
        return self.backbone.tokenizer

    @property
    def max_document_length(self) -> int:
        return self.backbone.max_length

    @property
    def document_overhead(self) -> int:
        return len(self.tokenize([""], is_query=False)[0])

    def similarity(self, queries: Sequence[np.ndarray], documents: Sequence[np.ndarray]) -> np.ndarray:
        """MaxSim: for each query token its best document token, summed over the query's tokens."""
        return maxsim(queries, documents)

    def scores(self, queries: Sequence[torch.Tensor], documents: Sequence[torch.Tensor]) -> torch.Tensor:
        """``similarity`` on ``forward``'s outputs, differentiable (training losses): (n_queries, n_documents)
        MaxSim scores."""
        return maxsim_scores(queries, documents)

    def forward_pair(self, query_ids: Sequence[Sequence[int]],
                     document_ids: Sequence[Sequence[int]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Queries and documents in two passes: queries attend differently ([MASK] expansion)."""
        return self.forward(query_ids, True), self.forward(document_ids, False)

    def paired_scores(self, queries: Sequence[torch.Tensor], documents: Sequence[torch.Tensor],
                      width: int) -> torch.Tensor:
        return torch.stack([maxsim_scores([q], documents[i * width:(i + 1) * width])[0]
                            for i, q in enumerate(queries)])

    def settings(self) -> dict[str, int | None]:
        return {"query_length": self.query_length, "document_length": self.document_length,
                "pool_factor": self.pool_factor}

    def tokenize(self, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        """Token ids as PyLate 1.6 makes them: the text stripped, then lower-cased if the model says so (the order
        of sentence-transformers 5.3's Transformer module, which PyLate runs on), [CLS] prefix text [SEP] cut at the
        length (no prefix when the model has none), then [MASK] expansion for queries."""
        check_texts(texts)
        if self.strip:
            texts = [t.strip() for t in texts]
        if self.spec.do_lower_case:
            texts = [t.lower() for t in texts]
        tokenizer = self.backbone.tokenizer
        limit = self.query_length if is_query else self.document_length
        prefix = self.query_prefix_id if is_query else self.document_prefix_id
        if prefix is None:
            rows = tokenizer.encode(texts, limit)
        else:
            rows = [row[:1] + [prefix] + row[1:] for row in tokenizer.encode(texts, limit - 1)]
        if is_query and self.query_expansion:
            rows = [row + [tokenizer.mask_token_id] * (limit - len(row)) for row in rows]
        return rows

    def _key_lengths(self, token_ids: list[list[int]], is_query: bool) -> list[int] | None:
        """Queries' [MASK] expansion reads the query but is not read (unless attend_to_expansion_tokens)."""
        if not (is_query and self.query_expansion and not self.attend_to_expansion):
            return None
        mask_id = self.backbone.tokenizer.mask_token_id
        return [len(row) - _trailing(row, mask_id) for row in token_ids]

    def _project(self, states: torch.Tensor) -> torch.Tensor:
        v = states.float()
        for layer in self.dense:
            v = layer(v)
        return F.normalize(v, dim=-1)

    def _kept(self, vectors: torch.Tensor, row: list[int], is_query: bool) -> torch.Tensor:
        """Documents drop their skiplist (punctuation) tokens; queries keep every token."""
        return vectors if is_query else vectors[torch.tensor([t not in self.skiplist for t in row])]

    def forward(self, token_ids: list[list[int]], is_query: bool) -> list[torch.Tensor]:
        """Differentiable (training): token ids from ``tokenize`` -> one (n_kept, dim) tensor per text, all texts
        in one packed pass."""
        hidden, cu_seqlens = self.backbone.forward_states(token_ids, self._key_lengths(token_ids, is_query))
        vectors = self._project(hidden)
        bounds = cu_seqlens.tolist()
        return [self._kept(vectors[a:b], row, is_query) for row, a, b in zip(token_ids, bounds, bounds[1:])]

    def _encode(self, texts: Sequence[str], is_query: bool, show_progress: bool | None) -> list[np.ndarray]:
        """Each batch of the backbone is projected as soon as it is run and its vectors moved to the CPU: what is
        held is one batch's token states and the output, whatever the number of texts."""
        token_ids = self.tokenize(texts, is_query)

        def vectors_of(batch: list[int], states: list[torch.Tensor]) -> list[np.ndarray]:
            return [self._kept(self._project(s), token_ids[i], is_query).float().cpu().numpy()
                    for i, s in zip(batch, states)]

        vectors = self.backbone.map_batches(token_ids, vectors_of, show_progress,
                                            key_lengths=self._key_lengths(token_ids, is_query))
        return vectors if is_query else pool_documents(vectors, self.pool_factor)

    def encode_queries(self, texts: Sequence[str], show_progress: bool | None = None) -> list[np.ndarray]:
        """One (query_length, dim) array per query with expansion (its [MASK]s included); one row per query
        token (truncated at query_length) without."""
        return self._encode(texts, True, show_progress)

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None) -> list[np.ndarray]:
        """One (n_kept_tokens, dim) array per document, skiplist tokens removed, pooled if ``pool_factor`` > 1."""
        return self._encode(texts, False, show_progress)

    def save(self, folder: str | Path) -> None:
        """The PyLate folder layout (Transformer + 1_Dense), loadable by PyLate and sentence-transformers.

        A model without marker tokens or projection (``from_token_embeddings``) is refused: PyLate would load that
        folder with [Q]/[D] inserted and a new random projection, i.e. silently as a different model. A PyLate model
        whose prefix is empty (no marker) is saved so, with ``""``."""
        if not self.dense or any(i is None and self.spec.settings.get(name) != "" for i, name in (
                (self.query_prefix_id, "query_prefix"), (self.document_prefix_id, "document_prefix"))):
            raise ValueError(
                "this model has no [Q]/[D] marker tokens or no projection (made by from_token_embeddings?), which "
                "the PyLate layout cannot express: PyLate would load it as a different model. Load it again from its "
                "source folder with ColBERT.from_token_embeddings instead")
        settings = {k: v for k, v in self.spec.settings.items() if k != "__version__"}
        settings = {**settings, "model_type": "ColBERT", "similarity_fn_name": "MaxSim",
                    "query_length": self.query_length, "document_length": self.document_length,
                    "do_query_expansion": self.query_expansion, "attend_to_expansion_tokens": self.attend_to_expansion}
        write_folder(Path(folder), self.backbone, self.backbone.max_length, self.spec.do_lower_case, list(self.dense),
                     settings)

    def rerank(self, query: str, documents: Sequence[str]) -> list[tuple[int, float]]:
        """(document index, MaxSim score) pairs, best first."""
        scores = maxsim(self.encode_queries([query]), self.encode_documents(documents))[0]
        order = np.argsort(-scores, kind="stable")
        return [(int(i), float(scores[i])) for i in order]


def _trailing(row: list[int], token: int) -> int:
    n = 0
    while n < len(row) and row[-1 - n] == token:
        n += 1
    return n


def pack_arrays(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-text arrays -> (embeddings (total_tokens, dim) float32, offsets (n + 1,) int64): text i is rows
    offsets[i]:offsets[i+1]. The form ``mret embed --kind colbert`` writes, and indexes take."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    dim = arrays[0].shape[1] if len(arrays) else 0
    embeddings = np.concatenate(arrays).astype(np.float32, copy=False) if len(arrays) else np.zeros((0, dim), np.float32)
    return embeddings, offsets
