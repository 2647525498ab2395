"""Model folder layouts, read and written side by side: what a folder says about its modules.

- The sentence-transformers folder (bi-encoders). Both generations are read: the classic one
  (``sentence_transformers.models.Pooling`` in modules.json, ``pooling_mode_mean_tokens: true``, ``max_seq_length``
  in sentence_bert_config.json) and the 6.x one (``sentence_transformers.sentence_transformer.modules.pooling.
  Pooling``, ``pooling_mode: "mean"``). Written in the classic spelling, which every version (2.x to 6.x) reads.
- The PyLate folder (ColBERT): the same layout, with ``pylate.models.Dense.Dense`` and ColBERT's settings in
  config_sentence_transformers.json.
- The Stanford ColBERT checkpoint (colbert-ai, e.g. colbert-ir/colbertv2.0), read only: one BERT checkpoint whose
  weights carry the projection as ``linear.weight`` (no bias) beside ``bert.*``, and ``artifact.metadata`` (the
  ColBERTConfig as JSON): marker tokens ``[unused0]``/``[unused1]`` put after [CLS], query_maxlen / doc_maxlen,
  attend_to_mask_tokens, mask_punctuation. Those map one to one onto the PyLate settings our ColBERT head already
  runs, so it is read as a PyLate folder and no separate code path is needed.

Each module reads and writes its own folder (``layers``); this module knows which modules a folder holds, in what
order, and the files around them.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from safetensors import safe_open

from encoder.errors import ModelLoadError

from .layers import Dense, Normalize, Pooling, PyLateDense, write_json

__all__ = ["METADATA", "STFolder", "is_stanford_folder", "read_stanford_folder", "write_folder", "write_json",
           "write_modules"]

TRANSFORMER = "sentence_transformers.models.Transformer"
METADATA = "artifact.metadata"


class Saves(Protocol):
    """What ``write_folder`` needs of the backbone and of each module: it writes its own files into a folder."""

    def save(self, folder: Path) -> None: ...


class Layer(Saves, Protocol):
    type_name: str


@dataclass
class STFolder:
    """A model folder's modules (loaded, with their weights) and settings. ``dense`` holds the Dense modules in
    folder order; the head that reads the folder decides their class (``Dense`` or PyLate's)."""

    transformer: Path  # the backbone's own folder (config.json, weights, tokenizer)
    max_seq_length: int | None = None
    do_lower_case: bool = False
    pooling: Pooling | None = None  # None: no Pooling module (ColBERT keeps tokens)
    dense: list[Dense] = field(default_factory=list)
    normalize: Normalize | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # config_sentence_transformers.json

    @property
    def prompts(self) -> dict[str, str]:
        return self.settings.get("prompts") or {}

    @classmethod
    def read(cls, folder: Path, dense: type[Dense] = Dense) -> "STFolder":
        modules_file = folder / "modules.json"
        if not modules_file.exists():
            raise ModelLoadError(f"{folder} has no modules.json; it is not a sentence-transformers model folder")
        spec = cls(transformer=folder)
        modules = json.loads(modules_file.read_text())
        kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
        for module, kind in zip(modules, kinds):
            if kind not in ORDER:
                raise ModelLoadError(f"module {module['type']} in {modules_file} is not supported")
        _check_order(kinds, modules_file)
        for module, kind in zip(modules, kinds):
            path = folder / module.get("path", "")
            if kind in ("Pooling", "Dense") and not path.is_dir():
                raise ModelLoadError(f"{modules_file} names the {kind} module's folder {path}, which does not exist")
            if kind == "Transformer":
                spec.transformer = path
                spec.max_seq_length, spec.do_lower_case = _transformer_settings(path)
            elif kind == "Pooling":
                spec.pooling = Pooling.load(path)
            elif kind == "Dense":
                spec.dense.append(dense.load(path))
            else:
                spec.normalize = Normalize.load(path)
        _check_inputs(spec, modules_file)
        settings = folder / "config_sentence_transformers.json"
        if settings.exists():
            spec.settings = json.loads(settings.read_text())
        return spec


# the modules a head runs, in the one order it runs them: Transformer, Pooling (dense heads), Dense..., Normalize
ORDER = {"Transformer": 0, "Pooling": 1, "Dense": 2, "Normalize": 3}


def _check_order(kinds: list[str], modules_file: Path) -> None:
    """Refuse a module order the heads cannot reproduce (a Dense after Normalize, Pooling after Dense, two Pooling or
    Normalize modules...): the model would run in another order than sentence-transformers runs it."""
    ranks = [ORDER[kind] for kind in kinds]
    once = [kind for kind in ("Transformer", "Pooling", "Normalize") if kinds.count(kind) > 1]
    if not kinds or kinds[0] != "Transformer" or once or ranks != sorted(ranks):
        raise ModelLoadError(
            f"{modules_file} runs {' -> '.join(kinds) or 'no module'}; only Transformer -> Pooling -> Dense... -> "
            "Normalize (each optional but the Transformer, Dense repeatable) can be run here, in that order")


def _check_inputs(spec: "STFolder", modules_file: Path) -> None:
    """Dense and Normalize modules must work on what the head feeds them: the pooled vector in a model with Pooling
    ("sentence_embedding"), the token vectors in one without ("token_embeddings", ColBERT). sentence-transformers
    6.x lets a module read and write another entry of its features (``module_input_name``/``module_output_name``)."""
    wanted = "sentence_embedding" if spec.pooling is not None else "token_embeddings"
    for layer in [*spec.dense, *([spec.normalize] if spec.normalize is not None else [])]:
        names = {layer.input_name, getattr(layer, "output_name", layer.input_name)} - {None}
        if spec.pooling is None and isinstance(layer, Normalize):
            continue  # (ColBERT normalizes every token itself)
        if names and names != {wanted}:
            raise ModelLoadError(
                f"{modules_file}: its {type(layer).__name__} module works on {' -> '.join(sorted(names))}, "
                f"not on {wanted}: this head cannot run it where sentence-transformers does")


def _transformer_settings(path: Path) -> tuple[int | None, bool]:
    for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
        if (path / name).exists():
            raw = json.loads((path / name).read_text())
            return raw.get("max_seq_length"), bool(raw.get("do_lower_case", False))
    return None, False


def strips_text_edges(settings: dict[str, Any]) -> bool:
    """Whether a sentence-transformers checkpoint reads its texts stripped of edge whitespace: versions up to 5.x
    stripped every text before tokenizing, 6.x does not. A checkpoint was trained, and its published figures made,
    with the version that saved it (``__version__`` in config_sentence_transformers.json), so it is read that way;
    our own saves record the choice as ``strip_text_edges``. No record: 6.x's way (a bare transformer)."""
    if "strip_text_edges" in settings:
        return bool(settings["strip_text_edges"])
    version = str((settings.get("__version__") or {}).get("sentence_transformers") or "")
    major = version.split(".")[0]
    return major.isdigit() and int(major) < 6


def write_folder(folder: Path, backbone: Saves, max_seq_length: int, do_lower_case: bool, layers: Sequence[Layer],
                 settings: dict[str, Any]) -> None:
    """A sentence-transformers (or PyLate) folder: the backbone saves itself in the root (the Transformer module,
    with sentence_bert_config.json beside it), each layer into its numbered folder (``1_Pooling``, ``2_Dense``,
    ...), then modules.json and config_sentence_transformers.json."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save(folder)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": do_lower_case})
    modules = [("", TRANSFORMER)]
    for number, layer in enumerate(layers, start=1):
        path = f"{number}_{layer.type_name.rsplit('.', 1)[-1]}"
        layer.save(folder / path)
        modules.append((path, layer.type_name))
    write_modules(folder, modules)
    write_json(folder / "config_sentence_transformers.json", settings)


def write_modules(folder: Path, modules: list[tuple[str, str]]) -> None:
    """modules.json in the classic spelling, which every sentence-transformers version (2.x to 6.x) reads."""
    entries = [{"idx": i, "name": str(i), "path": path, "type": type_name} for i, (path, type_name) in enumerate(modules)]
    (folder / "modules.json").write_text(json.dumps(entries, indent=2) + "\n")


def is_stanford_folder(folder: Path) -> bool:
    return (folder / METADATA).exists() and not (folder / "modules.json").exists()


def is_colbert_folder(folder: Path) -> bool:
    """A Stanford ColBERT checkpoint, or a PyLate folder: sentence-transformers modules with a Dense projection and
    no Pooling (a base checkpoint, or a bi-encoder, gets a new ColBERT head)."""
    if is_stanford_folder(folder):
        return True
    try:
        kinds = {module["type"].rsplit(".", 1)[-1] for module in json.loads((folder / "modules.json").read_text())}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False
    return "Dense" in kinds and "Pooling" not in kinds


def read_stanford_folder(folder: Path) -> STFolder:
    """A Stanford ColBERT checkpoint as the PyLate folder it is equivalent to."""
    try:
        meta = json.loads((folder / METADATA).read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{folder / METADATA} is not valid JSON: {error}") from None
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise ModelLoadError(f"{folder} has no model.safetensors (only safetensors are loaded; convert the "
                             "pytorch_model.bin with safetensors' convert script)")
    with safe_open(str(weights), framework="pt") as f:
        if "linear.weight" not in f.keys():
            raise ModelLoadError(f"{weights} has no linear.weight: it is not a Stanford ColBERT checkpoint")
        out_features, in_features = f.get_slice("linear.weight").get_shape()
    settings = {
        "query_prefix": meta.get("query_token_id", "[unused0]"),
        "document_prefix": meta.get("doc_token_id", "[unused1]"),
        "query_length": meta.get("query_maxlen", 32),
        "document_length": meta.get("doc_maxlen", 220),
        "do_query_expansion": True,
        "attend_to_expansion_tokens": bool(meta.get("attend_to_mask_tokens", False)),
        "skiplist_words": list(string.punctuation) if meta.get("mask_punctuation", True) else [],
    }
    projection = PyLateDense(in_features, out_features, bias=False)
    projection.load_weights(weights)
    return STFolder(transformer=folder, max_seq_length=512, dense=[projection], settings=settings)
