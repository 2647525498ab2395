"""The modules a head runs after its backbone, each saving and loading its own folder as sentence-transformers'
modules do (``config.json``, plus ``model.safetensors`` when it has weights), so that a head's folder is the
backbone's files plus one numbered folder per module (see ``formats``).

- ``Pooling``: token states to one vector per text. Every token counts, [CLS] and [SEP] included (they are under
  the attention mask in sentence-transformers too). Texts arrive packed (all tokens of all texts in one
  (total, hidden) tensor, text i at cu_seqlens[i]:cu_seqlens[i+1]), so pooling is segment arithmetic: no padding,
  and differentiable for training.
- ``Dense``: Linear then an activation; ``PyLateDense`` is the same layer in PyLate's spelling (ColBERT's
  projection). A config without ``activation_function`` means Tanh, sentence-transformers' default (Identity for
  PyLate's Dense, PyLate's default); a path that is not a ``torch.nn`` Module class is refused (ModelLoadError), where
  sentence-transformers would fall back to Tanh with a warning.
- ``Normalize``: L2 normalization.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from encoder.errors import ModelLoadError

POOLING_MODES = ("cls", "mean", "max", "lasttoken", "mean_sqrt_len_tokens")
CLASSIC_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_lasttoken": "lasttoken",
}
IDENTITY = "torch.nn.modules.linear.Identity"
TANH = "torch.nn.modules.activation.Tanh"


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def read_config(folder: Path) -> dict[str, Any]:
    """A module's config.json ({} when the folder has none: sentence-transformers before 6 saved Normalize so)."""
    path = folder / "config.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None


class Pooling(nn.Module):
    """sentence-transformers' Pooling: one or several modes, concatenated in order."""

    type_name: ClassVar[str] = "sentence_transformers.models.Pooling"

    def __init__(self, dimension: int | None, modes: Sequence[str], include_prompt: bool = True):
        """``dimension``: the backbone's hidden size, written to the config (None: not known yet; the head that
        holds this layer sets it)."""
        super().__init__()
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown or not modes:
            raise ValueError(f"pooling {unknown or 'none'} is not supported; use one of {POOLING_MODES}")
        self.dimension, self.modes, self.include_prompt = dimension, list(modes), include_prompt

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return pool_packed(hidden, cu_seqlens, self.modes)

    def config(self) -> dict[str, Any]:
        """The classic spelling (one boolean per mode), which every sentence-transformers version (2.x to 6.x)
        reads."""
        return {"word_embedding_dimension": self.dimension, "include_prompt": self.include_prompt,
                **{key: mode in self.modes for key, mode in CLASSIC_POOLING_KEYS.items()}}

    def save(self, folder: Path) -> None:
        write_json(folder / "config.json", self.config())

    @classmethod
    def load(cls, folder: Path) -> "Pooling":
        """Both spellings: the classic one (``pooling_mode_mean_tokens: true``, ``word_embedding_dimension``) and
        the 6.x one (``pooling_mode: "mean"``, ``embedding_dimension``)."""
        raw = read_config(folder)
        if "pooling_mode" in raw:
            modes = raw["pooling_mode"]
            modes = [modes] if isinstance(modes, str) else list(modes)
        else:
            modes = [mode for key, mode in CLASSIC_POOLING_KEYS.items() if raw.get(key)]
        modes = ["mean_sqrt_len_tokens" if m == "mean_sqrt_len" else m for m in modes]
        dimension = raw.get("word_embedding_dimension", raw.get("embedding_dimension"))
        try:
            return cls(dimension, modes, bool(raw.get("include_prompt", True)))
        except ValueError as error:
            raise ModelLoadError(f"{folder / 'config.json'}: {error}") from None


class Dense(nn.Module):
    """sentence-transformers' Dense: Linear then an activation (Identity, Tanh, ...)."""

    type_name: ClassVar[str] = "sentence_transformers.models.Dense"
    default_activation: ClassVar[str] = TANH  # a config without activation_function (sentence-transformers' default)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = IDENTITY):
        """Weights are left uninitialized (``load_weights`` or ``new`` fill them): building a layer draws nothing
        from the global random stream. ``activation``: a ``torch.nn`` Module class by its path (ValueError
        otherwise)."""
        super().__init__()
        self.in_features, self.out_features, self.bias = in_features, out_features, bias
        self.activation_name = activation
        self.linear = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)
        self.activation = _activation(activation)
        # the entries of sentence-transformers' features it reads and writes, when its config names them (6.x):
        # set by ``load``, checked by ``formats.STFolder.read``; None: what the head feeds it
        self.input_name: str | None = None
        self.output_name: str | None = None

    @classmethod
    def new(cls, in_features: int, out_features: int) -> "Dense":
        """A layer to train, without bias: the identity when square, else a random orthogonal matrix (seeded: the
        same every time)."""
        layer = cls(in_features, out_features, bias=False)
        with torch.no_grad():
            if in_features == out_features:
                layer.linear.weight.copy_(torch.eye(in_features))
            else:
                nn.init.orthogonal_(layer.linear.weight, generator=torch.Generator().manual_seed(0))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias,
                "activation_function": self.activation_name}

    def save(self, folder: Path) -> None:
        write_json(folder / "config.json", self.config())
        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))

    @classmethod
    def load(cls, folder: Path) -> "Dense":
        raw = read_config(folder)
        if raw.get("use_residual"):
            raise ModelLoadError(f"{folder / 'config.json'}: a Dense layer with use_residual is not supported")
        if "in_features" not in raw or "out_features" not in raw:
            raise ModelLoadError(f"{folder / 'config.json'}: a Dense layer's config needs in_features and out_features")
        try:
            layer = cls(raw["in_features"], raw["out_features"], raw.get("bias", True),
                        raw.get("activation_function") or cls.default_activation)
        except ValueError as error:
            raise ModelLoadError(f"{folder / 'config.json'}: {error}") from None
        layer.input_name = raw.get("module_input_name")
        layer.output_name = raw.get("module_output_name") or layer.input_name
        layer.load_weights(folder / "model.safetensors")
        return layer

    def load_weights(self, weights: Path) -> None:
        """Only the ``linear.*`` tensors of the file: a Stanford ColBERT checkpoint keeps its projection beside
        the whole BERT."""
        if not weights.exists():
            raise ModelLoadError(f"{weights.parent} has no model.safetensors (only safetensors are loaded)")
        with safe_open(str(weights), framework="pt") as f:
            self.load_state_dict({k: f.get_tensor(k) for k in f.keys() if k.startswith("linear.")})


class PyLateDense(Dense):
    """PyLate's Dense (ColBERT's projection): sentence-transformers' Dense, saved with ``use_residual: false`` under
    PyLate's type name, which PyLate needs to load the folder as a ColBERT."""

    type_name: ClassVar[str] = "pylate.models.Dense.Dense"
    default_activation: ClassVar[str] = IDENTITY  # PyLate's Dense default

    def config(self) -> dict[str, Any]:
        return {**super().config(), "use_residual": False}


class Normalize(nn.Module):
    """sentence-transformers' Normalize: L2 normalization of each vector."""

    type_name: ClassVar[str] = "sentence_transformers.models.Normalize"
    input_name: str | None = None  # what sentence-transformers' Normalize normalizes, when its config says (6.x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)

    def save(self, folder: Path) -> None:
        """An empty config: every sentence-transformers version reads it as the default Normalize."""
        write_json(folder / "config.json", {})

    @classmethod
    def load(cls, folder: Path) -> "Normalize":
        layer = cls()
        layer.input_name = read_config(folder).get("module_input_name")
        return layer


def _activation(path: str) -> nn.Module:
    """A ``torch.nn`` activation Module from its class path (``torch.nn.modules.activation.Tanh``), as
    sentence-transformers saves it; anything else is a ValueError, not a silent Identity."""
    module_path, _, name = path.rpartition(".")
    cls = None
    if module_path == "torch.nn" or module_path.startswith("torch.nn."):
        try:
            cls = getattr(importlib.import_module(module_path), name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"activation_function {path!r} is not a torch.nn Module class (only those are loaded)")
    return cls()


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, modes: list[str]) -> torch.Tensor:
    """(total, hidden) + (n+1,) -> (n, hidden * len(modes)), computed in float32; several modes are concatenated
    in order, as sentence-transformers does."""
    hidden = hidden.float()
    cu_seqlens = cu_seqlens.to(hidden.device).long()
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    pooled = []
    for mode in modes:
        if mode == "cls":
            pooled.append(hidden[cu_seqlens[:-1]])
        elif mode == "lasttoken":
            pooled.append(hidden[cu_seqlens[1:] - 1])
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            sums = hidden.new_zeros(len(lengths), hidden.shape[1]).index_add(0, segment, hidden)
            scale = lengths.to(hidden.dtype) if mode == "mean" else lengths.to(hidden.dtype).sqrt()
            pooled.append(sums / scale[:, None])
        elif mode == "max":
            index = segment[:, None].expand_as(hidden)
            pooled.append(hidden.new_full((len(lengths), hidden.shape[1]), float("-inf")).scatter_reduce(
                0, index, hidden, reduce="amax"))
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(pooled, dim=1)


def pool_all(states: list[torch.Tensor], modes: list[str]) -> torch.Tensor:
    """One row per text, from per-text (n_tokens, hidden) states."""
    cu_seqlens = torch.zeros(len(states) + 1, dtype=torch.long)
    cu_seqlens[1:] = torch.tensor([len(s) for s in states]).cumsum(0)
    return pool_packed(torch.cat(states), cu_seqlens, modes)
