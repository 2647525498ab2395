"""ModernBERT hyper-parameters, read from a Hugging Face ``config.json``.

transformers 4.x writes ``global_rope_theta`` / ``local_rope_theta`` / ``global_attn_every_n_layers``;
transformers 5.x writes ``layer_types`` and ``rope_parameters``. Both spellings are read here, and
``to_hf_dict`` writes both so that either version of transformers loads what we save.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ModelLoadError

GLOBAL, LOCAL = "full_attention", "sliding_attention"
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_python", "silu", "swish", "relu")


@dataclass
class ModernBertConfig:
    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    decoder_bias: bool = True
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    local_attention: int = 128  # total window: a token sees local_attention // 2 tokens on each side
    layer_types: list[str] = field(default_factory=list)  # GLOBAL or LOCAL per layer
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0
    pad_token_id: int = 50283
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    mask_token_id: int = 50284
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if not self.layer_types:
            self.layer_types = layer_pattern(self.num_hidden_layers, 3)
        problems = []
        if len(self.layer_types) != self.num_hidden_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if set(self.layer_types) - {GLOBAL, LOCAL}:
            problems.append(f"unknown layer types {sorted(set(self.layer_types) - {GLOBAL, LOCAL})}")
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")
        for name in ("hidden_activation", "classifier_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {ACTIVATIONS}")
        if problems:
            raise ModelLoadError("invalid ModernBERT config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def window_radius(self) -> int:
        """How far a token on a local layer sees to each side (64 for the usual window of 128)."""
        return self.local_attention // 2

    def rope_theta(self, layer_type: str) -> float:
        return self.global_rope_theta if layer_type == GLOBAL else self.local_rope_theta

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> "ModernBertConfig":
        """Read a transformers ``config.json`` (4.x or 5.x spelling)."""
        if not isinstance(raw, dict):
            raise ModelLoadError(f"config.json holds a {type(raw).__name__}, not a JSON object")
        model_type = raw.get("model_type")
        if model_type != "modernbert":
            raise ModelLoadError(
                f"config.json describes model_type={model_type!r}, not 'modernbert'; "
                "this encoder only runs ModernBERT checkpoints"
            )
        _check_values(raw)
        kwargs = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw and raw[k] is not None}
        kwargs.pop("layer_types", None)
        n_layers = raw.get("num_hidden_layers", cls.num_hidden_layers)
        if raw.get("layer_types"):
            if not isinstance(raw["layer_types"], list):
                raise ModelLoadError(f"invalid ModernBERT config: layer_types={raw['layer_types']!r} is not a list")
            kwargs["layer_types"] = list(raw["layer_types"])
        else:
            every_n = raw.get("global_attn_every_n_layers", 3)
            if not is_int(every_n) or every_n < 1:
                raise ModelLoadError(f"invalid ModernBERT config: global_attn_every_n_layers={every_n!r} "
                                     "is not a positive integer")
            kwargs["layer_types"] = layer_pattern(n_layers, every_n)
        rope = raw.get("rope_parameters") or {}
        if "rope_theta" in rope:  # one set of parameters shared by both layer types
            rope = {GLOBAL: rope, LOCAL: rope}
        for layer_type, key in ((GLOBAL, "global_rope_theta"), (LOCAL, "local_rope_theta")):
            params = rope.get(layer_type) or {}
            if not isinstance(params, dict):
                raise ModelLoadError(f"invalid ModernBERT config: rope_parameters[{layer_type!r}]={params!r}")
            if params.get("rope_type", "default") != "default":
                raise ModelLoadError(f"RoPE scaling {params['rope_type']!r} is not supported (only 'default')")
            if params.get("rope_theta") is not None:
                kwargs[key] = _theta(key, params["rope_theta"])
        # a local theta present but null means the global one (transformers 4.x: "local_rope_theta: null")
        local_params = rope.get(LOCAL) or {}
        if "local_rope_theta" not in kwargs and (
                ("local_rope_theta" in raw and raw["local_rope_theta"] is None)
                or ("rope_theta" in local_params and local_params["rope_theta"] is None)):
            kwargs["local_rope_theta"] = kwargs.get("global_rope_theta", cls.global_rope_theta)
        if raw.get("rope_scaling"):
            raise ModelLoadError("RoPE scaling (rope_scaling in config.json) is not supported")
        return cls(**kwargs)

    def to_hf_dict(self, architecture: str = "ModernBertModel") -> dict[str, Any]:
        """A ``config.json`` that transformers 4.x and 5.x both load."""
        out = asdict(self)
        out.pop("mask_token_id")
        every_n = _every_n(self.layer_types)
        if every_n is not None:
            out["global_attn_every_n_layers"] = every_n
        out["rope_parameters"] = {
            GLOBAL: {"rope_type": "default", "rope_theta": self.global_rope_theta},
            LOCAL: {"rope_type": "default", "rope_theta": self.local_rope_theta},
        }
        out.update(model_type="modernbert", architectures=[architecture], bos_token_id=self.cls_token_id,
                   eos_token_id=self.sep_token_id)
        return out


SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
INT_FIELDS = ("max_position_embeddings", "local_attention", "pad_token_id", "cls_token_id", "sep_token_id",
              "mask_token_id")
FLOAT_FIELDS = ("norm_eps", "global_rope_theta", "local_rope_theta", "embedding_dropout", "attention_dropout",
                "mlp_dropout")


def is_int(value: Any) -> bool:
    """An int as JSON gives one: True and False are not."""
    return isinstance(value, int) and not isinstance(value, bool)


def _theta(name: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ModelLoadError(f"invalid ModernBERT config: {name}={value!r} is not a positive number")
    return float(value)


def _check_values(raw: dict[str, Any]) -> None:
    """Types and ranges of what config.json sets, so a malformed file is one ModelLoadError, not a traceback later.
    A null shape (num_hidden_layers: null) is an error too: a default would build a model the weights do not fit."""
    problems = []
    for name in SHAPE_FIELDS:
        if name in raw and (not is_int(raw[name]) or raw[name] < 1):
            problems.append(f"{name}={raw[name]!r} is not a positive integer")
    for name in INT_FIELDS:
        if raw.get(name) is not None and not is_int(raw[name]):
            problems.append(f"{name}={raw[name]!r} is not an integer")
    for name in FLOAT_FIELDS:
        value = raw.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            problems.append(f"{name}={value!r} is not a non-negative number")
    if raw.get("rope_parameters") is not None and not isinstance(raw["rope_parameters"], dict):
        problems.append(f"rope_parameters={raw['rope_parameters']!r} is not an object")
    if problems:
        raise ModelLoadError("invalid ModernBERT config: " + "; ".join(problems))


def layer_pattern(num_layers: int, global_every_n: int) -> list[str]:
    """ModernBERT's alternation: layer i is global when i is a multiple of ``global_every_n``."""
    return [GLOBAL if i % global_every_n == 0 else LOCAL for i in range(num_layers)]


def _every_n(layer_types: list[str]) -> int | None:
    for n in range(1, len(layer_types) + 1):
        if layer_pattern(len(layer_types), n) == layer_types:
            return n
    return None
