"""ModernBERT, on packed sequences.

    input_ids (total_tokens,) + cu_seqlens
      -> Embeddings: token embedding -> LayerNorm
      -> Layer x N (pre-norm; layer 0 has no attention norm):
           x = x + Attention(attn_norm(x))     fused Wqkv, RoPE, global or sliding-window attention, Wo
           x = x + MLP(mlp_norm(x))            GeGLU: Wi -> (input, gate) -> act(input) * gate -> Wo
      -> final LayerNorm                       (total_tokens, hidden)
      -> [MaskedLMHead: dense -> act -> LayerNorm -> decoder tied to the token embedding]

Layer i is global (RoPE theta 160k) when i % 3 == 0, local (window of 128, theta 10k) otherwise.
Module names mirror transformers' ModernBertForMaskedLM, so its checkpoints load without renaming.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION_FUNCTIONS, AttentionPlan
from .config import GLOBAL, LOCAL, ModernBertConfig
from .packing import position_ids

ACTIVATION_FUNCTIONS = {
    "gelu": F.gelu, "gelu_python": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"), "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu, "swish": F.silu, "relu": F.relu,
}


def layer_norm(config: ModernBertConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class Rotary(nn.Module):
    """RoPE tables (cos, sin) for one theta, looked up by each token's position in its sequence.

    ``inv_freq`` stays float32 whatever the model's dtype, as in transformers: rounded to bf16, the angles of
    positions in the thousands are off by whole radians. ``Module.to``/``half``/``bfloat16`` convert every float
    buffer, so ``_apply`` recomputes it in float32 on the buffer's new device after each conversion.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        return (1.0 / (self.theta ** exponents)).to(device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.inv_freq = self._inv_freq(self.inv_freq.device)  # never the model's (half-precision) dtype
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[:, None].float() * self.inv_freq.to(device=positions.device, dtype=torch.float32)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # (tokens, 1 head, head_dim), float32
        return angles.cos().to(dtype), angles.sin().to(dtype)  # rounded to the model's dtype, as the reference


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (tokens, heads, head_dim) in float32, as the reference does, then return to x's dtype."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class Embeddings(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.norm = layer_norm(config)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class Attention(nn.Module):
    def __init__(self, config: ModernBertConfig, layer_type: str):
        super().__init__()
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.local = layer_type == LOCAL
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        # attention_dropout applies twice, as in transformers: to the attention probabilities (inside the backend,
        # training only) and to the output projection
        self.attention_dropout = config.attention_dropout
        self.drop = nn.Dropout(config.attention_dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: AttentionPlan,
                backend: str) -> torch.Tensor:
        q, k, v = self.Wqkv(x).view(-1, 3, self.heads, self.head_dim).unbind(dim=1)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        attend = ATTENTION_FUNCTIONS[backend]
        out = attend(q, k, v, plan, local=self.local, scale=1.0 / math.sqrt(self.head_dim),
                     dropout=self.attention_dropout if self.training else 0.0)
        return self.drop(self.Wo(out.reshape(-1, self.heads * self.head_dim)))


class MLP(nn.Module):
    """GeGLU: one projection to 2 x intermediate, split into input and gate."""

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.act = ACTIVATION_FUNCTIONS[config.hidden_activation]
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(input) * gate))


class Layer(nn.Module):
    def __init__(self, config: ModernBertConfig, index: int):
        super().__init__()
        self.layer_type = config.layer_types[index]
        self.attn_norm = layer_norm(config) if index > 0 else nn.Identity()
        self.attn = Attention(config, self.layer_type)
        self.mlp_norm = layer_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: AttentionPlan,
                backend: str) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, plan, backend)
        return x + self.mlp(self.mlp_norm(x))


class ModernBert(nn.Module):
    """The encoder body: packed token ids -> packed hidden states."""

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = layer_norm(config)
        self.reset_rotary()

    def reset_rotary(self) -> None:
        """(Re)compute the RoPE tables on the CPU: they are not stored in checkpoints."""
        with torch.device("cpu"):
            self.rotary = nn.ModuleDict({t: Rotary(self.config.head_dim, self.config.rope_theta(t))
                                         for t in (GLOBAL, LOCAL)})

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, backend: str = "sdpa",
                key_lengths: list[int] | None = None) -> torch.Tensor:
        """input_ids (total_tokens,), cu_seqlens (n + 1,) -> hidden states (total_tokens, hidden).

        ``key_lengths`` (sdpa only): per sequence, how many leading tokens may be attended to; the others only read.
        """
        plan = AttentionPlan.build(cu_seqlens, self.config.window_radius, grouped=backend == "sdpa",
                                   key_lengths=key_lengths)
        positions = position_ids(cu_seqlens)
        x = self.embeddings(input_ids)
        rope = {t: rotary(positions, x.dtype) for t, rotary in self.rotary.items()}
        for layer in self.layers:
            x = layer(x, rope[layer.layer_type], plan, backend)
        return self.final_norm(x)


class MaskedLMHead(nn.Module):
    """dense -> act -> LayerNorm; the decoder (tied to the token embedding) lives beside it in ``Encoder``."""

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.act = ACTIVATION_FUNCTIONS[config.classifier_activation]
        self.norm = layer_norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))
