"""Reading and writing checkpoints in the Hugging Face layout (config.json, safetensors, tokenizer files).

Only safetensors are read: pickled ``pytorch_model.bin`` files can run code when loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from .errors import ModelLoadError

if TYPE_CHECKING:
    from .pretrained import Encoder

HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BODY_PREFIXES = ("embeddings.", "layers.", "final_norm.")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the shape of a hub id ("owner/name"), not of a local path."""
    return not text.startswith((".", "/", "~")) and text.count("/") == 1


def resolve(name_or_path: str | Path, revision: str | None = None, extra_files: list[str] | None = None) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (or taken from the cache) by huggingface_hub.

    ``extra_files``: more glob patterns to fetch (a sentence-transformers model's module folders, say)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists():
        raise ModelLoadError(f"{text} is a file; pass the checkpoint folder that holds config.json")
    if not is_hub_id(text):
        raise ModelLoadError(f"no such model folder: {text}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=HUB_FILES + (extra_files or [])))
    except Exception as error:  # connection, offline mode, unknown repo, gated repo: all the same advice
        raise ModelLoadError(
            f"could not get {text!r} from the Hugging Face hub ({type(error).__name__}: {str(error).splitlines()[0]}). "
            "If the model is on disk, pass its folder instead, e.g. from_pretrained('/path/to/ModernBERT-base')."
        ) from None


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise ModelLoadError(f"{folder} has no config.json; is it a Hugging Face checkpoint folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / shard for shard in shards]
    elif (folder / "pytorch_model.bin").exists():
        raise ModelLoadError(
            f"{folder} has only pytorch_model.bin (pickle), which we do not load because it can run code. "
            "Convert it once with transformers: AutoModel.from_pretrained(folder).save_pretrained(folder) "
            "writes model.safetensors."
        )
    else:
        raise ModelLoadError(f"{folder} has no model.safetensors")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.exists():
            raise ModelLoadError(f"weight shard {file.name} listed in the index is missing from {folder}")
        try:
            weights.update(load_file(str(file)))
        except Exception as error:
            raise ModelLoadError(f"cannot read {file}: {error}") from None
    return weights


def canonical_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ModernBertModel names (``layers.0...``) and ForMaskedLM names (``model.layers.0...``) -> the latter.

    Weights of other heads are dropped: the encoder does not use them. A classifier (ForSequenceClassification,
    ForTokenClassification: ``classifier.*``) has its own ``head.*`` (dense, act, norm before the classifier), dropped
    with it unless ``decoder.*`` says the checkpoint has an MLM head.
    """
    mlm_head = has_mlm_head(weights)
    out = {}
    for name, tensor in weights.items():
        if name.startswith(BODY_PREFIXES):
            name = "model." + name
        if name.startswith(("model.", "decoder.")) or (mlm_head and name.startswith("head.")):
            out[name] = tensor
    return out


def has_mlm_head(weights: dict[str, torch.Tensor]) -> bool:
    """``decoder.*``, or ``head.*`` without a classifier (a tied decoder without bias saves no ``decoder.*``)."""
    names = list(weights)
    return (any(n.startswith("decoder.") for n in names)
            or (any(n.startswith("head.") for n in names) and not any(n.startswith("classifier.") for n in names)))


def load_into(encoder: "Encoder", weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` into ``encoder``, with one clear error listing every missing, unexpected or mis-shaped tensor.

    ``weights`` are canonical names (``canonical_names``): an unexpected one is under the encoder's own prefixes (a
    layer past ``num_hidden_layers``, a bias the config turns off), so the config does not describe the checkpoint."""
    expected = encoder.state_dict()
    tied = encoder.decoder is not None and encoder.config.tie_word_embeddings
    if tied:
        weights = {k: v for k, v in weights.items() if k != "decoder.weight"}
        expected.pop("decoder.weight", None)
    problems = [f"missing {name}" for name in expected if name not in weights]
    # RoPE frequencies are recomputed from the config, never read (older exports may hold them)
    problems += [f"unexpected {name}" for name in weights if name not in expected and not name.endswith("inv_freq")]
    problems += [f"{name}: checkpoint has shape {tuple(weights[name].shape)}, config expects {tuple(t.shape)}"
                 for name, t in expected.items() if name in weights and weights[name].shape != t.shape]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ModelLoadError(f"checkpoint does not match its config.json: {shown}")
    encoder.load_state_dict({k: weights[k] for k in expected}, strict=not tied, assign=True)
    encoder.tie_weights()  # assign=True replaced the embedding Parameter
    encoder.model.reset_rotary()  # non-persistent buffers are not in the checkpoint


def save(encoder: "Encoder", folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    architecture = "ModernBertForMaskedLM" if encoder.head is not None else "ModernBertModel"
    config = encoder.config.to_hf_dict(architecture)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    if encoder.config.tie_word_embeddings:
        state.pop("decoder.weight", None)
    if encoder.head is None:  # transformers' ModernBertModel writes its names without the "model." prefix
        state = {k.removeprefix("model."): v for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if encoder.tokenizer is not None:
        save_tokenizer(encoder, folder)


def save_tokenizer(encoder: "Encoder", folder: Path) -> None:
    tokenizer = encoder.tokenizer
    source = tokenizer.source_folder
    for name in TOKENIZER_FILES:
        if source is not None and (source / name).exists() and source.resolve() != folder.resolve():
            shutil.copyfile(source / name, folder / name)
    if not (folder / "tokenizer.json").exists():
        tokenizer.save(folder)
    if not (folder / "tokenizer_config.json").exists():
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": tokenizer.model_max_length,
            "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]",
            "unk_token": "[UNK]", "model_input_names": ["input_ids", "attention_mask"]}, indent=2) + "\n")
