"""Where a model runs and in which number format: the one home of ``--device`` and ``--dtype``.

``--device auto|cpu|cuda|cuda:N`` and ``--dtype auto|float32|bfloat16|int8``:

- ``auto`` device: the first CUDA device when torch sees one, else the CPU.
- ``auto`` dtype: bfloat16 on CUDA (float32 on a GPU without native bf16: compute capability below 8.0, checked for
  the device asked for); on a CPU, the faster of float32 and bfloat16 *for
  this processor*, because that depends on the hardware: with native bf16 instructions (AVX512-BF16, AMX) bf16 is
  1.5-2x faster, without them torch emulates it and it is several times slower. The choice is measured once (a short
  timed forward of a two-layer ModernBERT-base-shaped stack) and remembered in ``precision.json`` under the cache
  folder ($MRET_CACHE_DIR, else $XDG_CACHE_HOME/modernretrieval, else ~/.cache/modernretrieval), keyed by CPU model,
  the instruction sets that decide it, torch version and thread count.
- ``int8`` (CPU only, never chosen by ``auto``): the backbone's linear layers become ``Int8Linear``: int8 weights
  per output channel, activations quantized per token at each call, on fbgemm's int8 kernel. The backbone's linear
  layers (fused Wqkv, Wo, the GeGLU Wi and Wo; BERT's query/key/value/dense) hold nearly all the work; the heads'
  small projections (ColBERT's 768 -> 128, a sentence-transformers Dense) stay float32, where they cost almost
  nothing and keep the output space closest to the model's. Why fbgemm's kernel called directly and not
  ``torch.ao.quantization.quantize_dynamic``: that one scales activations per call, not per token (too coarse on
  real weights, see ``Int8Linear``), and its Python API is deprecated for torchao's; torchao's int8 path needs
  ``torch.compile`` to be fast on a CPU (plain ``torch._int_mm`` there is 30x slower than float32), onnxruntime an
  export of our unpadded model. The kernel and ``torch.quantize_per_channel`` still work in torch 2.13 (tested).

Vectors made in bf16 or int8 differ slightly from float32 ones (cosine >= 0.99 per text; on SciFact nDCG@10 moves by
less than 0.005): the dtype is a run setting, not a property of an index (README, "Precision and device").
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modernretrieval.errors import SettingsError
from modernretrieval.files import atomic_write_json, cache_root

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = ("auto", "float32", "bfloat16", "int8")
NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
CACHE_FILE = "precision.json"
# bf16 must beat float32 by this factor to be chosen on a CPU: float32 is exact, so a tie goes to it
BF16_MARGIN = 0.9


@dataclass(frozen=True)
class Precision:
    """A resolved choice: the device, the dtype the weights are loaded in, and whether the linear layers are then
    quantized to int8 (``dtype`` is float32 then)."""

    device: torch.device
    dtype: torch.dtype
    int8: bool = False

    @property
    def name(self) -> str:
        """float32, bfloat16, float16 or int8."""
        return "int8" if self.int8 else NAMES[self.dtype]

    def __str__(self) -> str:
        return f"{self.device} {self.name}"


def check(device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto") -> None:
    """Fail now, with one clear message, on a value ``resolve`` would refuse; measures nothing (cheap)."""
    _parse(device, dtype)


def resolve(device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto") -> Precision:
    """The device and dtype to load a model in (see the module doc). None means auto. A bad value, CUDA asked for
    where there is none, or int8 on CUDA raise SettingsError."""
    where, what = _parse(device, dtype)
    if what == "int8":
        return Precision(where, torch.float32, int8=True)
    if isinstance(what, torch.dtype):
        return Precision(where, what)
    if where.type == "cuda":
        return Precision(where, torch.bfloat16 if cuda_bf16_native(where) else torch.float32)
    return Precision(where, fastest_cpu_dtype())


def cuda_bf16_native(device: torch.device) -> bool:
    """Whether ``device`` (cuda:N; cuda: the current one) runs bf16 natively: compute capability 8.0 (Ampere) or
    later. ``torch.cuda.is_bf16_supported()`` also counts emulation by default (a Turing or Volta GPU "supports" bf16
    several times slower than float32) and looks at the current device, not the one asked for; its
    ``including_emulation=False`` is this same capability test, on the current device only. On ROCm, torch's own
    answer."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index)) >= (8, 0)


def _parse(device: str | torch.device | None, dtype: str | torch.dtype | None) -> tuple[torch.device, torch.dtype | str]:
    """(the device, auto resolved; the dtype, or "auto" / "int8")."""
    where = _device(device)
    if dtype is None or dtype == "auto":
        what: torch.dtype | str = "auto"
    elif dtype == "int8":
        what = "int8"
    elif isinstance(dtype, torch.dtype) and dtype in NAMES:
        what = dtype
    elif isinstance(dtype, str) and dtype in ("float32", "bfloat16"):
        what = getattr(torch, dtype)
    else:
        raise SettingsError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if what == "int8" and where.type != "cpu":
        raise SettingsError("--dtype int8 runs on the CPU only (dynamic quantization of the linear layers); "
                            "on CUDA use --dtype bfloat16 or auto")
    if what == torch.float16 and where.type != "cuda":
        raise SettingsError("float16 runs on CUDA only; on the CPU use float32, bfloat16 or int8")
    return where, what


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        where = None
    if where is None or where.type not in ("cpu", "cuda"):
        raise SettingsError(f"--device must be one of {', '.join(DEVICES)}, got {str(device)!r}")
    if where.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "torch sees no CUDA device"
            raise SettingsError(f"--device {device}: {why}; use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if where.index is not None and where.index >= count:
            raise SettingsError(f"--device {device}: there {'is' if count == 1 else 'are'} {count} CUDA "
                                f"device{'' if count == 1 else 's'} (cuda:0..cuda:{count - 1})")
    return where


# ----- int8
class Int8Linear(nn.Module):
    """``nn.Linear`` for CPU inference with int8 weights (symmetric, per output channel) and int8 activations scaled
    per token, on fbgemm's dynamic int8 kernel (``torch.ops.quantized.linear_dynamic``).

    That kernel scales the activations of a whole call with one factor, so a few tokens with huge states ([CLS],
    [SEP], punctuation: the outliers of trained transformers) make every other token coarse: on all-MiniLM-L6-v2 and
    real text, per-text cosine to float32 fell to 0.972. Dividing each token's row by its largest magnitude before
    the kernel, and multiplying the output rows back (the layer is linear), gives each token its own scale, as
    per-token dynamic quantization does (LLM.int8, ZeroQuant, torchao's int8 dynamic activations): 0.993 for two
    cheap elementwise passes. ``reduce_range`` (7-bit activations) is the kernel's default on x86, where AVX2's
    16-bit pair sums could otherwise saturate."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to("cpu", torch.float32)
        scales = (weight.abs().amax(dim=1).clamp_min(1e-12) / 127).double()
        with warnings.catch_warnings():  # "quantized tensor creation functions are deprecated": see the module doc
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long), 0,
                                                   torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(quantized, None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # each token's largest magnitude (amax/amin: 20x faster on a CPU than vector_norm(inf) or aminmax)
        scale = torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg_()).clamp_min_(1e-12)
        y = torch.ops.quantized.linear_dynamic(x / scale, self._packed, True)
        return y.mul_(scale) if self.bias is None else torch.addcmul(self.bias, y, scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel, per-token"


def quantize_linears(module: nn.Module) -> nn.Module:
    """Every ``nn.Linear`` inside ``module`` replaced, in place, by an ``Int8Linear`` (CPU inference). Returns
    ``module``."""
    if "fbgemm" not in torch.backends.quantized.supported_engines or not hasattr(torch.ops.quantized, "linear_dynamic"):
        raise SettingsError(f"--dtype int8 needs torch's fbgemm int8 kernels, which torch {torch.__version__} on this "
                            f"machine lacks; use --dtype bfloat16 or float32")
    if torch.backends.quantized.engine not in ("fbgemm", "x86"):
        torch.backends.quantized.engine = "x86"
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear(child))
        else:
            quantize_linears(child)
    return module


def release_checkpoint(module: nn.Module) -> nn.Module:
    """Every parameter and buffer of ``module`` copied into memory of its own, in place; returns ``module``.

    Why, after quantizing: safetensors loads a checkpoint as views of one memory-mapped file, and the mapping lives as
    long as any view does. Quantizing reads every linear weight once, so their pages became resident, and the
    embeddings and norms kept the whole mapping, and those pages, in the process while no layer used them any more
    (ModernBERT-base: +340 MB, an int8 run's peak RSS above float32's). Copied, the views go, the mapping with them."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()
    return module


def is_int8(module: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in module.modules())


def precision_name(module: nn.Module) -> str:
    """How a loaded model's numbers are held, for cache keys and reports: "int8" when its linear layers are
    quantized, else its parameters' dtype as torch spells it ("torch.float32", "torch.bfloat16")."""
    return "int8" if is_int8(module) else str(next(module.parameters()).dtype)


# ----- the CPU's fastest float format, measured once
def fastest_cpu_dtype(cache_dir: Path | None = None) -> torch.dtype:
    """float32 or bfloat16, whichever runs a ModernBERT-base layer faster on this CPU; measured once per CPU
    model, torch version and thread count, then read from ``precision.json``."""
    path = (cache_dir or cache_root()) / CACHE_FILE
    key = machine_key()
    known = _read(path)
    entry = known.get(key)
    if not (isinstance(entry, dict) and entry.get("dtype") in ("float32", "bfloat16")):
        seconds = measure_cpu()
        choice = "bfloat16" if seconds["bfloat16"] < BF16_MARGIN * seconds["float32"] else "float32"
        entry = {"dtype": choice, "seconds": seconds, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {**known, key: entry})
        except OSError:
            pass  # a read-only cache folder: measure again next time rather than fail
    return getattr(torch, entry["dtype"])


def measure_cpu(tokens: int = 512, rounds: int = 3) -> dict[str, float]:
    """Best-of-``rounds`` seconds of one forward of ``tokens`` tokens through two ModernBERT-base layers (one
    global, one sliding-window), in float32 and in bfloat16, interleaved. About a second on a CPU without bf16."""
    from encoder.config import ModernBertConfig
    from encoder.model import ModernBert

    config = ModernBertConfig(vocab_size=1024, num_hidden_layers=2, pad_token_id=0)  # base width, small vocabulary
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (tokens,), generator=generator)
    cu_seqlens = torch.tensor([0, tokens], dtype=torch.int32)
    models = {name: ModernBert(config).to(getattr(torch, name)).eval() for name in ("float32", "bfloat16")}
    best = dict.fromkeys(models, float("inf"))
    with torch.inference_mode():
        for model in models.values():
            model(ids[:16], torch.tensor([0, 16], dtype=torch.int32))  # warm-up: kernels, allocator
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(ids, cu_seqlens)
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(seconds, 5) for name, seconds in best.items()}


# CPU flags (Linux's names) that change which format is faster: native bf16 dot products and matrix tiles
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def machine_key() -> str:
    """What the float32/bf16 choice depends on: the CPU model, its bf16 instructions, torch's version and its thread
    count. The model name alone is not enough: a virtual machine may show only "AMD EPYC" for processors with and
    without AVX512-BF16 (seen here: one such name, bf16 0.43x float32 on one host and 1.9x on another)."""
    isa = ",".join([torch.backends.cpu.get_cpu_capability(), *sorted(set(BF16_FLAGS) & cpu_flags())])
    return f"{cpu_model()} [{isa}] | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them; empty where /proc/cpuinfo does not exist."""
    return set(_cpuinfo("flags").split())


def _cpuinfo(field: str) -> str:
    """The first CPU's ``field`` in /proc/cpuinfo, or "" (no such file: not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _read(path: Path) -> dict:
    """The remembered choices, or {} when the file is missing or unreadable (then it is measured again)."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}
