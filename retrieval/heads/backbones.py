"""Backbones turn token ids into per-text token states. ModernBERT runs on our unpadded encoder; any other
architecture (BERT, e.g. all-MiniLM-L6-v2) runs through transformers' AutoModel (extra ``hf``) behind the same
interface, so that baselines travel the same pipeline. Both are ``nn.Module``s holding the model as a submodule, so
that a head's ``parameters()``, ``train()`` and ``to()`` reach it."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import encoder
from encoder.packing import batches_by_token_budget, pack
from encoder.tokenizer import Tokenizer
from modernretrieval.errors import SettingsError

from .precision import is_int8, quantize_linears, release_checkpoint
from .tracing import TracedForward

# what ``map_batches`` applies to each batch: (the batch's input positions, their token states) -> one result each
Reduce = Callable[[list[int], list[torch.Tensor]], Sequence[Any]]


class ModernBertBackbone(nn.Module):
    def __init__(self, model: encoder.Encoder):
        super().__init__()
        self.model = model
        self.tokenizer = model.tokenizer
        self.hidden_size = model.config.hidden_size
        self.max_length = model.config.max_position_embeddings

    def token_states(self, token_ids: Sequence[Sequence[int]], show_progress: bool | None = None,
                     key_lengths: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Per-text token states; with ``key_lengths``, only the first key_lengths[i] tokens are attended to."""
        return self.model.embed_token_ids(token_ids, show_progress=show_progress, key_lengths=key_lengths)

    def map_batches(self, token_ids: Sequence[Sequence[int]], reduce: Reduce, show_progress: bool | None = None,
                    key_lengths: Sequence[int] | None = None) -> list[Any]:
        """``reduce`` applied to each batch's token states as soon as the batch is run, results in input order: the
        batches and states of ``token_states`` (``Encoder.embed_token_ids``), but only one batch's states alive at a
        time, so that a head that pools or projects holds one batch of hidden states plus its outputs, not every
        token's state of every text."""
        return self.model.embed_token_ids(token_ids, show_progress=show_progress, key_lengths=key_lengths,
                                          reduce=reduce)

    def forward_states(self, token_ids: Sequence[Sequence[int]],
                       key_lengths: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable (training): all texts as one packed sequence -> (hidden (total, h), cu_seqlens)."""
        input_ids, cu_seqlens = pack(token_ids, self.model.device)
        return self.model(input_ids, cu_seqlens, None if key_lengths is None else list(key_lengths)), cu_seqlens

    def quantize_int8(self) -> None:
        """The body's linear layers (fused Wqkv, Wo, GeGLU Wi, Wo) to dynamic int8, for CPU inference; the MLM head,
        unused here and tied to the embedding, is left alone."""
        quantize_linears(self.model.model)
        release_checkpoint(self.model)  # (the tied decoder is the embedding's Parameter: it stays tied)

    def save(self, folder: Path) -> None:
        refuse_int8(self.model)
        self.model.save_pretrained(folder)


class TransformersBackbone(nn.Module):
    """Any transformers encoder, run in length-sorted padded batches (its own kernels need padding)."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype):
        super().__init__()
        try:
            from transformers import AutoModel
        except ImportError:
            raise encoder.ModelLoadError(
                f"{folder} is not a ModernBERT model; other architectures need transformers: "
                "pip install 'modernretrieval[hf]'") from None
        if not (folder / "tokenizer.json").exists():
            raise encoder.ModelLoadError(
                f"{folder} has no tokenizer.json (only fast tokenizers are read: save the tokenizer with "
                "transformers' AutoTokenizer.from_pretrained(folder).save_pretrained(folder) to write one)")
        self.folder = folder
        self.model = AutoModel.from_pretrained(folder, dtype=dtype).to(device).eval()
        self.tokenizer = Tokenizer.from_folder(folder)
        self.hidden_size = self.model.config.hidden_size
        self.max_length = getattr(self.model.config, "max_position_embeddings", 512)
        self.trace = False  # inference through a TorchScript trace (servers turn it on: see tracing.py)
        self.traced = TracedForward(self.model, self.max_length)

    @property
    def device(self) -> torch.device:
        """Where the weights are now (the head may have been moved with ``to``)."""
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def token_states(self, token_ids: Sequence[Sequence[int]], show_progress: bool | None = None,
                     key_lengths: Sequence[int] | None = None, batch_tokens: int = 8192) -> list[torch.Tensor]:
        """As ModernBertBackbone.token_states; query-only tokens are those outside the attention mask, which
        still get outputs (what ColBERT's [MASK] expansion relies on)."""
        return self.map_batches(token_ids, lambda batch, states: states, show_progress, key_lengths, batch_tokens)

    @torch.inference_mode()
    def map_batches(self, token_ids: Sequence[Sequence[int]], reduce: Reduce, show_progress: bool | None = None,
                    key_lengths: Sequence[int] | None = None, batch_tokens: int = 8192) -> list[Any]:
        """As ModernBertBackbone.map_batches, over ``token_states``'s padded batches."""
        out: list[Any] = [None] * len(token_ids)
        for batch in batches_by_token_budget([len(ids) for ids in token_ids], batch_tokens, max_sequences=256):
            states = self._padded([token_ids[i] for i in batch], None if key_lengths is None else
                                  [key_lengths[i] for i in batch])
            results = reduce(batch, [states[row, : len(token_ids[i])] for row, i in enumerate(batch)])
            del states  # (before the next batch runs)
            for i, result in zip(batch, results, strict=True):
                out[i] = result
        return out

    def forward_states(self, token_ids: Sequence[Sequence[int]],
                       key_lengths: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable (training): as ModernBertBackbone.forward_states, through padded batches of similar
        lengths (a short query padded to a long document's length would cost as much as the document)."""
        out: list[torch.Tensor | None] = [None] * len(token_ids)
        for batch in batches_by_token_budget([len(ids) for ids in token_ids], 8192, max_sequences=256):
            states = self._padded([token_ids[i] for i in batch], None if key_lengths is None else
                                  [key_lengths[i] for i in batch])
            for row, i in enumerate(batch):
                out[i] = states[row, : len(token_ids[i])]
        lengths = torch.tensor([len(ids) for ids in token_ids])
        cu_seqlens = torch.zeros(len(token_ids) + 1, dtype=torch.int32)
        cu_seqlens[1:] = lengths.cumsum(0)
        return torch.cat(out), cu_seqlens.to(self.device)  # type: ignore[arg-type]

    def _padded(self, token_ids: Sequence[Sequence[int]], key_lengths: Sequence[int] | None) -> torch.Tensor:
        """(batch, longest, hidden): the padded batch transformers' kernels need."""
        pad = self.tokenizer.pad_token_id or 0
        length = max(len(ids) for ids in token_ids)
        ids = np.full((len(token_ids), length), pad, dtype=np.int64)  # (numpy: no torch call, no GIL hand-off, per row)
        mask = np.zeros_like(ids)
        for row, row_ids in enumerate(token_ids):
            ids[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids) if key_lengths is None else key_lengths[row]] = 1
        ids, mask = torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
        if self.trace and not torch.is_grad_enabled():
            states = self.traced(ids, mask)
            if states is not None:
                return states
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    def quantize_int8(self) -> None:
        """Every linear layer of the transformers model (query/key/value, attention output, intermediate, output) to
        dynamic int8, for CPU inference."""
        release_checkpoint(quantize_linears(self.model))
        self.traced.invalidate()  # (a trace made before holds the float32 layers)

    def save(self, folder: Path) -> None:
        refuse_int8(self.model)
        self.model.save_pretrained(folder)
        self.tokenizer.save(folder)
        for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (self.folder / name).exists() and (folder / name) != (self.folder / name):
                (folder / name).write_bytes((self.folder / name).read_bytes())


def refuse_int8(model: nn.Module) -> None:
    """int8 weights are a way to run a model, not a checkpoint format the other libraries read."""
    if is_int8(model):
        raise SettingsError("an int8-quantized model cannot be saved: load it in float32 (or bfloat16) to save it")


def load_backbone(folder: Path, device: torch.device, dtype: torch.dtype) -> ModernBertBackbone | TransformersBackbone:
    config_file = folder / "config.json"
    if not config_file.exists():
        raise encoder.ModelLoadError(f"{folder} has no config.json")
    if json.loads(config_file.read_text()).get("model_type") == "modernbert":
        model = encoder.from_pretrained(folder, device=device, dtype=dtype)
        if model.tokenizer is None:
            raise encoder.ModelLoadError(f"{folder} has no tokenizer.json")
        return ModernBertBackbone(model)
    return TransformersBackbone(folder, device, dtype)
