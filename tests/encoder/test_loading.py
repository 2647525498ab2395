"""Loading and saving checkpoints in the Hugging Face layout, both ways, and the errors users meet."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import encoder
from encoder import ModelLoadError

from support import copy_tokenizer, hf_model, padded, random_ids

LENGTHS = [9, 140, 333]


def hf_states(model, token_ids):
    ids, mask = padded(token_ids)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state, mask.bool()


def test_transformers_checkpoint_loads_in_ours(tiny_checkpoint):
    from transformers import ModernBertForMaskedLM

    reference = ModernBertForMaskedLM.from_pretrained(tiny_checkpoint, attn_implementation="sdpa").eval()
    ours = encoder.from_pretrained(tiny_checkpoint)
    token_ids = random_ids(LENGTHS)
    expected, mask = hf_states(reference, token_ids)
    ids, cu_seqlens = encoder.pack(token_ids)
    with torch.inference_mode():
        logits = ours.mlm_logits(ours(ids, cu_seqlens))
    assert (logits - expected[mask]).abs().max() <= 1e-4


@pytest.mark.parametrize("with_head", [True, False])
def test_ours_saved_loads_in_transformers(tmp_path, tokenizer_dir, with_head):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    source = tmp_path / "source"
    hf_model("tiny", mlm=with_head, seed=7).save_pretrained(source)
    copy_tokenizer(source)
    ours = encoder.from_pretrained(source)
    assert (ours.head is not None) == with_head
    ours.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == [
        "ModernBertForMaskedLM" if with_head else "ModernBertModel"]

    reloaded = (AutoModelForMaskedLM if with_head else AutoModel).from_pretrained(
        tmp_path / "saved", attn_implementation="sdpa").eval()
    token_ids = random_ids(LENGTHS, seed=8)
    expected, mask = hf_states(reloaded, token_ids)
    ids, cu_seqlens = encoder.pack(token_ids)
    with torch.inference_mode():
        got = ours(ids, cu_seqlens)
        got = ours.mlm_logits(got) if with_head else got
    assert (got - expected[mask]).abs().max() <= 1e-4
    text = ["Tokenizer files travel with the model: déjà vu."]
    assert AutoTokenizer.from_pretrained(tmp_path / "saved")(text)["input_ids"] == ours.tokenizer.encode(text)
    assert encoder.from_pretrained(tmp_path / "saved").tokenizer.encode(text) == ours.tokenizer.encode(text)


def test_sharded_checkpoint_loads(tmp_path, tokenizer_dir):
    model = hf_model("tiny", seed=9)
    model.save_pretrained(tmp_path, max_shard_size="2MB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = encoder.from_pretrained(tmp_path)
    token_ids = random_ids([50, 200])
    expected, mask = hf_states(model, token_ids)
    ids, cu_seqlens = encoder.pack(token_ids)
    with torch.inference_mode():
        assert (ours.mlm_logits(ours(ids, cu_seqlens)) - expected[mask]).abs().max() <= 1e-4
    assert ours.tokenizer is None  # no tokenizer.json in that folder: embed() says so clearly
    with pytest.raises(ValueError, match="tokenizer"):
        ours.embed(["text"])


def test_bf16_load(tiny_checkpoint):
    ours = encoder.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    full = encoder.from_pretrained(tiny_checkpoint)
    a, b = ours.embed(["bf16 on the CPU " * 20])[0].float(), full.embed(["bf16 on the CPU " * 20])[0]
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.99


def test_missing_folder_or_file(tmp_path, tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        encoder.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="no config.json"):
        encoder.from_pretrained(tmp_path)
    shutil.copyfile(tiny_checkpoint / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        encoder.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        encoder.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="is a file"):
        encoder.from_pretrained(tmp_path / "config.json")


def test_wrong_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    with pytest.raises(ModelLoadError, match="not 'modernbert'"):
        encoder.from_pretrained(tmp_path)


def test_mismatched_shapes(tmp_path, tiny_checkpoint):
    for name in ("model.safetensors", "tokenizer.json"):
        shutil.copyfile(tiny_checkpoint / name, tmp_path / name)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(ModelLoadError, match=r"Wi.weight: checkpoint has shape \(192, 64\), config expects \(256, 64\)"):
        encoder.from_pretrained(tmp_path)


def test_corrupt_weights(tmp_path, tiny_checkpoint):
    shutil.copyfile(tiny_checkpoint / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="cannot read"):
        encoder.from_pretrained(tmp_path)


def test_unreachable_hub_names_the_local_alternative(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="pass its folder instead"):
        encoder.from_pretrained("answerdotai/ModernBERT-base")


def test_float16_on_cpu_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="not supported on cpu"):
        encoder.from_pretrained(tiny_checkpoint, dtype=torch.float16)


def test_random_encoder_saves_a_real_checkpoint(tmp_path, tokenizer_dir):
    """encoder.testing.random_encoder (used by bench/) writes what transformers loads, MLM head tied."""
    from transformers import ModernBertForMaskedLM

    from encoder.testing import random_encoder

    ours = random_encoder("tiny", seed=3, tokenizer_dir=tokenizer_dir)
    ours.save_pretrained(tmp_path)
    reference = ModernBertForMaskedLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    token_ids = random_ids([30, 170])
    expected, mask = hf_states(reference, token_ids)
    ids, cu_seqlens = encoder.pack(token_ids)
    with torch.inference_mode():
        assert (ours.mlm_logits(ours(ids, cu_seqlens)) - expected[mask]).abs().max() <= 1e-4


def test_checkpoint_with_more_layers_than_its_config_is_refused(tmp_path, tiny_checkpoint):
    """6 layers of weights under a 3-layer config.json: an error naming the extra tensors, not a 3-layer model."""
    shutil.copyfile(tiny_checkpoint / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config.pop("layer_types", None)
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ModelLoadError, match=r"unexpected model\.layers\.3\.attn\.Wo\.weight.*and \d+ more"):
        encoder.from_pretrained(tmp_path)


def test_unexpected_tensor_in_the_body_is_refused(tmp_path, tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    shutil.copyfile(tiny_checkpoint / "config.json", tmp_path / "config.json")
    weights = load_file(str(tiny_checkpoint / "model.safetensors"))
    weights["model.embeddings.extra_bias"] = torch.zeros(3)
    weights["classifier.weight"] = torch.zeros(2, 64)  # another head's weights are still dropped silently
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"unexpected model\.embeddings\.extra_bias$"):
        encoder.from_pretrained(tmp_path)


@pytest.mark.parametrize("task", ["SequenceClassification", "TokenClassification"])
def test_classification_checkpoint_loads_its_body(tmp_path, task):
    """ModernBertFor...Classification: head.* (its pooling head) and classifier.* are dropped, the body loads."""
    import transformers
    from transformers.initialization import no_init_weights

    from support import hf_config
    from encoder.testing import randomize_

    with no_init_weights():
        classifier = getattr(transformers, f"ModernBertFor{task}")(hf_config("tiny", num_labels=3)).eval()
    randomize_(classifier.named_parameters(), seed=4)
    classifier.save_pretrained(tmp_path)
    ours = encoder.from_pretrained(tmp_path)
    assert ours.head is None and ours.decoder is None
    token_ids = random_ids([20, 150], seed=5)
    expected, mask = hf_states(classifier.model, token_ids)
    ids, cu_seqlens = encoder.pack(token_ids)
    with torch.inference_mode():
        assert (ours(ids, cu_seqlens) - expected[mask]).abs().max() <= 1e-4


def test_tied_mlm_head_without_decoder_bias_keeps_its_head(tmp_path):
    """Tied and without a decoder bias, a ModernBertForMaskedLM saves no decoder.* at all: head.* alone says MLM."""
    model = hf_model("tiny", seed=6, decoder_bias=False)
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as saved:
        assert not any(name.startswith("decoder.") for name in saved.keys())
    ours = encoder.from_pretrained(tmp_path)
    assert ours.head is not None
    token_ids = random_ids([40], seed=7)
    expected, mask = hf_states(model, token_ids)
    ids, cu_seqlens = encoder.pack(token_ids)
    with torch.inference_mode():
        assert (ours.mlm_logits(ours(ids, cu_seqlens)) - expected[mask]).abs().max() <= 1e-4


def _corrupt_tokenizer_json(folder):
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')


def _corrupt_tokenizer_config(folder):
    (folder / "tokenizer_config.json").write_text("{not json")


def _config_as_list(folder):
    (folder / "config.json").write_text("[]")


@pytest.mark.parametrize("corrupt, message", [
    (_corrupt_tokenizer_json, "cannot read .*tokenizer.json"),
    (_corrupt_tokenizer_config, "tokenizer_config.json is not valid JSON"),
    (_config_as_list, "not a JSON object"),
])
def test_malformed_files_are_a_clear_error(tmp_path, tiny_checkpoint, corrupt, message):
    for path in tiny_checkpoint.iterdir():
        shutil.copyfile(path, tmp_path / path.name)
    corrupt(tmp_path)
    with pytest.raises(ModelLoadError, match=message):
        encoder.from_pretrained(tmp_path)


def test_cuda_without_cuda_is_one_clear_error_before_loading(monkeypatch, tiny_checkpoint):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("encoder.checkpoint.read_weights", lambda folder: pytest.fail("weights read first"))
    with pytest.raises(ModelLoadError, match="'cuda' is not available"):
        encoder.from_pretrained(tiny_checkpoint, device="cuda")
