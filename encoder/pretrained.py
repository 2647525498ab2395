"""``Encoder``: the ModernBERT body, its optional MLM head, and its tokenizer, as users load and call them.

Parameter names equal transformers' ModernBertForMaskedLM (``model.*``, ``head.*``, ``decoder.*``), so a
checkpoint moves between the two without renaming.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint
from .attention import resolve_backend
from .config import ModernBertConfig
from .errors import ModelLoadError
from .model import MaskedLMHead, ModernBert
from .packing import batches_by_token_budget, pack, repad, split, unpad
from .tokenizer import Tokenizer

# Tokens per forward pass. On CPU, matmuls are already at full speed with 2048 rows, and smaller activations
# stay in cache (measured on 2 cores: 2048 ~5% faster than 8192); on GPU, larger batches fill the device.
CPU_BATCH_TOKENS = 2048
CUDA_BATCH_TOKENS = 65536


class Encoder(nn.Module):
    def __init__(self, config: ModernBertConfig, tokenizer: Tokenizer | None = None, mlm_head: bool = True):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.model = ModernBert(config)
        self.head = MaskedLMHead(config) if mlm_head else None
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias) if mlm_head else None
        self.tie_weights()
        self.attention_backend = "auto"

    def tie_weights(self) -> None:
        """The MLM decoder shares the token embedding (when the config says so); redo after replacing parameters."""
        if self.decoder is not None and self.config.tie_word_embeddings:
            self.decoder.weight = self.model.embeddings.tok_embeddings.weight

    # ---- loading and saving -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, attention_backend: str = "auto",
                        revision: str | None = None) -> "Encoder":
        """Load a ModernBERT checkpoint: a local folder in the Hugging Face layout, or a hub id."""
        device = torch.device(device)
        check_device(device)
        check_dtype(device, dtype)
        folder = checkpoint.resolve(name_or_path, revision)
        config = ModernBertConfig.from_hf_dict(checkpoint.read_config(folder))
        weights = checkpoint.read_weights(folder)
        tokenizer = Tokenizer.from_folder(folder) if (folder / "tokenizer.json").exists() else None
        encoder = cls.from_state_dict(config, weights, tokenizer)
        resolve_backend(attention_backend, device, dtype)  # an impossible choice fails now, not at the first call
        encoder.attention_backend = attention_backend  # resolved per call: the model may move between devices
        return encoder.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_state_dict(cls, config: ModernBertConfig, weights: dict[str, torch.Tensor],
                        tokenizer: Tokenizer | None = None) -> "Encoder":
        """Build from transformers-named weights (ModernBertModel, ModernBertForMaskedLM, or the body of a
        ModernBertFor...Classification: its classifier and pooling head are dropped)."""
        weights = checkpoint.canonical_names(weights)
        with torch.device("meta"):  # no memory and no time spent on a random init that is overwritten
            encoder = cls(config, tokenizer, mlm_head=checkpoint.has_mlm_head(weights))
        checkpoint.load_into(encoder, weights)
        return encoder

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json, model.safetensors and the tokenizer files: loadable here and by transformers."""
        checkpoint.save(self, Path(folder))

    # ---- the forward pass ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.embeddings.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embeddings.tok_embeddings.weight.dtype

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                key_lengths: list[int] | None = None) -> torch.Tensor:
        """Packed ids (total,) + cu_seqlens (n+1,) -> packed hidden states (total, hidden).

        ``key_lengths``: per sequence, the number of leading tokens that are attended to; tokens after them read
        the sequence but are not read (what an attention mask of 0 on trailing tokens does in transformers).
        """
        backend = "sdpa" if key_lengths is not None else resolve_backend(self.attention_backend, self.device, self.dtype)
        if backend == "varlen" and self.attention_backend == "auto" and self.training and self.config.attention_dropout:
            backend = "sdpa"  # varlen_attn has no dropout on the attention probabilities; sdpa has, as transformers
        return self.model(input_ids.to(self.device), cu_seqlens.to(self.device), backend, key_lengths)

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Convenience (batch, length) call: unpads, runs packed, and returns (batch, length, hidden), zeros at padding."""
        packed_ids, cu_seqlens, kept = unpad(input_ids.to(self.device),
                                             None if attention_mask is None else attention_mask.to(self.device))
        hidden = self(packed_ids, cu_seqlens)
        return repad(hidden, kept, *input_ids.shape)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise ValueError("this checkpoint has no masked-language-model head weights (head.*, decoder.*)")
        return self.decoder(self.head(hidden))

    # ---- text in, vectors out -----------------------------------------------------------------------------
    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this model was loaded without tokenizer.json; set encoder.tokenizer first")
        return self.tokenizer

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], max_length: int | None = None, batch_tokens: int | None = None,
              show_progress: bool | None = None) -> list[torch.Tensor]:
        """Token-level hidden states, one (n_tokens, hidden) tensor per text, [CLS]/[SEP] included, input order.

        Texts are sorted by length and run in batches of about ``batch_tokens`` tokens; no padding is computed.
        Texts longer than ``max_length`` (default: the model's 8192) are truncated, keeping [SEP].
        """
        token_ids = self._require_tokenizer().encode(texts, max_length)
        return self.embed_token_ids(token_ids, batch_tokens, show_progress)

    @torch.inference_mode()
    def embed_token_ids(self, token_ids: Sequence[Sequence[int]], batch_tokens: int | None = None,
                        show_progress: bool | None = None, key_lengths: Sequence[int] | None = None,
                        reduce: Callable[[list[int], list[torch.Tensor]], Sequence[Any]] | None = None) -> list[Any]:
        """``embed`` for already tokenized input (lists of ids, special tokens included).

        ``key_lengths``: per text, how many leading tokens are attended to (see ``forward``).
        ``reduce``: applied to each batch as soon as it is run, (the batch's input positions, their token states) ->
        one result each, returned in input order instead of the states: only one batch's states are alive at a time.
        None: the states themselves."""
        budget = batch_tokens or (CUDA_BATCH_TOKENS if self.device.type == "cuda" else CPU_BATCH_TOKENS)
        batches = batches_by_token_budget([len(ids) for ids in token_ids], budget)
        out: list[Any] = [None] * len(token_ids)
        for batch in progress(batches, show_progress, total_tokens=sum(map(len, token_ids))):
            input_ids, cu_seqlens = pack([token_ids[i] for i in batch], self.device)
            keys = None if key_lengths is None else [key_lengths[i] for i in batch]
            states = split(self(input_ids, cu_seqlens, keys), cu_seqlens)
            results = states if reduce is None else reduce(batch, states)
            del states  # (reduced: the states are gone before the next batch runs)
            for i, result in zip(batch, results, strict=True):
                out[i] = result
        return out

    @torch.inference_mode()
    def fill_mask(self, text: str, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` most likely tokens for the single [MASK] in ``text``, with their probabilities."""
        tokenizer = self._require_tokenizer()
        ids = tokenizer.encode([text])[0]
        positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
        if len(positions) != 1:
            raise ValueError(f"fill_mask needs exactly one {tokenizer.mask_token} in the text, found {len(positions)}")
        input_ids, cu_seqlens = pack([ids], self.device)
        logits = self.mlm_logits(self(input_ids, cu_seqlens)[positions[0]])
        probs = logits.float().softmax(dim=-1)
        top = probs.topk(top_k)
        return [(tokenizer.decode([i]).strip(), p) for i, p in zip(top.indices.tolist(), top.values.tolist())]


def check_device(device: torch.device) -> None:
    """A CUDA device this torch cannot use: one line now, before any weight is read."""
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "built with CUDA, but it sees no GPU"
        raise ModelLoadError(f"device {str(device)!r} is not available: this torch {torch.__version__} is {build}; "
                             "use device='cpu'")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {str(device)!r} is not available: torch sees {torch.cuda.device_count()} GPU(s)")


def check_dtype(device: torch.device, dtype: torch.dtype) -> None:
    allowed = (torch.float32, torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.float32, torch.bfloat16)
    if dtype not in allowed:
        raise ValueError(f"dtype {dtype} is not supported on {device.type}; use one of {allowed}")


def progress(batches: list[list[int]], show: bool | None, total_tokens: int):
    """A tqdm bar over batches for long inputs (auto: more than 8 batches, on a terminal)."""
    if show is False or (show is None and len(batches) <= 8):
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc=f"encoding {total_tokens:,} tokens", unit="batch", disable=None if show is None else False)


def from_pretrained(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    attention_backend: str = "auto", revision: str | None = None) -> Encoder:
    """Load a ModernBERT checkpoint (local folder or hub id); see ``Encoder.from_pretrained``."""
    return Encoder.from_pretrained(name_or_path, device, dtype, attention_backend, revision)
