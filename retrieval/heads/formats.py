"""The sentence-transformers folder layout: what a model folder says about its modules, read and written.

Both generations are read: the classic one (``sentence_transformers.models.Pooling`` in modules.json,
``pooling_mode_mean_tokens: true``, ``max_seq_length`` in sentence_bert_config.json) and the 6.x one
(``sentence_transformers.sentence_transformer.modules.pooling.Pooling``, ``pooling_mode: "mean"``).
PyLate's ColBERT folders use the same layout with ``pylate.models.Dense.Dense`` and extra keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoder.errors import ModelLoadError

POOLING_MODES = ("cls", "mean", "max", "lasttoken", "mean_sqrt_len_tokens")
CLASSIC_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_lasttoken": "lasttoken",
}


@dataclass
class DenseSpec:
    """A Dense module: Linear(in, out, bias) then an activation, weights in ``folder/model.safetensors`` (a new
    layer, not yet saved, has no folder: it starts as the identity when square, else random)."""

    folder: Path | None
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a torch class path, e.g. torch.nn.modules.linear.Identity


@dataclass
class STFolder:
    transformer: Path  # the backbone's own folder (config.json, weights, tokenizer)
    max_seq_length: int | None = None
    do_lower_case: bool = False
    pooling: list[str] = field(default_factory=list)  # empty: no Pooling module (ColBERT keeps tokens)
    include_prompt: bool = True
    dense: list[DenseSpec] = field(default_factory=list)
    normalize: bool = False
    settings: dict[str, Any] = field(default_factory=dict)  # config_sentence_transformers.json

    @property
    def prompts(self) -> dict[str, str]:
        return self.settings.get("prompts") or {}

    @classmethod
    def read(cls, folder: Path) -> "STFolder":
        modules_file = folder / "modules.json"
        if not modules_file.exists():
            raise ModelLoadError(f"{folder} has no modules.json; it is not a sentence-transformers model folder")
        spec = cls(transformer=folder)
        for module in json.loads(modules_file.read_text()):
            kind = module["type"].rsplit(".", 1)[-1]
            path = folder / module.get("path", "")
            if kind == "Transformer":
                spec.transformer = path
                spec.max_seq_length, spec.do_lower_case = _transformer_settings(path)
            elif kind == "Pooling":
                spec.pooling, spec.include_prompt = _pooling_settings(path / "config.json")
            elif kind == "Dense":
                raw = json.loads((path / "config.json").read_text())
                spec.dense.append(DenseSpec(path, raw["in_features"], raw["out_features"], raw.get("bias", True),
                                            raw.get("activation_function", "torch.nn.modules.linear.Identity")))
            elif kind == "Normalize":
                spec.normalize = True
            else:
                raise ModelLoadError(f"module {module['type']} in {modules_file} is not supported")
        settings = folder / "config_sentence_transformers.json"
        if settings.exists():
            spec.settings = json.loads(settings.read_text())
        return spec


def _transformer_settings(path: Path) -> tuple[int | None, bool]:
    for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
        if (path / name).exists():
            raw = json.loads((path / name).read_text())
            return raw.get("max_seq_length"), bool(raw.get("do_lower_case", False))
    return None, False


def _pooling_settings(config_file: Path) -> tuple[list[str], bool]:
    raw = json.loads(config_file.read_text())
    if "pooling_mode" in raw:
        modes = raw["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        modes = [mode for key, mode in CLASSIC_POOLING_KEYS.items() if raw.get(key)]
    modes = ["mean_sqrt_len_tokens" if m == "mean_sqrt_len" else m for m in modes]
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown or not modes:
        raise ModelLoadError(f"pooling {unknown or 'none'} in {config_file} is not supported; use one of {POOLING_MODES}")
    return modes, bool(raw.get("include_prompt", True))


def write_modules(folder: Path, modules: list[tuple[str, str]]) -> None:
    """modules.json in the classic spelling, which every sentence-transformers version (2.x to 6.x) reads."""
    entries = [{"idx": i, "name": str(i), "path": path, "type": type_name} for i, (path, type_name) in enumerate(modules)]
    (folder / "modules.json").write_text(json.dumps(entries, indent=2) + "\n")


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
