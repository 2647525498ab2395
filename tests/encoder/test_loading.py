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
