"""config.json in the transformers 4.x and 5.x spellings, and back."""

from __future__ import annotations

import json

import pytest

from encoder import ModelLoadError, ModernBertConfig
from encoder.config import GLOBAL, LOCAL

# answerdotai/ModernBERT-base's config.json as the hub has it (transformers 4.x spelling)
BASE_4X = {
    "architectures": ["ModernBertForMaskedLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 50281, "classifier_activation": "gelu", "classifier_bias": False, "classifier_dropout": 0.0,
    "classifier_pooling": "mean", "cls_token_id": 50281, "decoder_bias": True, "deterministic_flash_attn": False,
    "embedding_dropout": 0.0, "eos_token_id": 50282, "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
    "gradient_checkpointing": False, "hidden_activation": "gelu", "hidden_size": 768, "initializer_cutoff_factor": 2.0,
    "initializer_range": 0.02, "intermediate_size": 1152, "layer_norm_eps": 1e-05, "local_attention": 128,
    "local_rope_theta": 10000.0, "max_position_embeddings": 8192, "mlp_bias": False, "mlp_dropout": 0.0,
    "model_type": "modernbert", "norm_bias": False, "norm_eps": 1e-05, "num_attention_heads": 12,
    "num_hidden_layers": 22, "pad_token_id": 50283, "position_embedding_type": "absolute", "sep_token_id": 50282,
    "tie_word_embeddings": True, "torch_dtype": "float32", "transformers_version": "4.47.0.dev0",
    "vocab_size": 50368,
}


def test_4x_spelling():
    config = ModernBertConfig.from_hf_dict(BASE_4X)
    assert config.layer_types[:4] == [GLOBAL, LOCAL, LOCAL, GLOBAL]
    assert config.layer_types.count(GLOBAL) == 8 and len(config.layer_types) == 22
    assert (config.global_rope_theta, config.local_rope_theta, config.window_radius) == (160000.0, 10000.0, 64)
    assert config.head_dim == 64


def test_5x_spelling_equals_4x():
    from transformers import ModernBertConfig as HFConfig

    as_5x = HFConfig(**BASE_4X).to_dict()
    assert "layer_types" in as_5x and "rope_parameters" in as_5x
    assert ModernBertConfig.from_hf_dict(as_5x) == ModernBertConfig.from_hf_dict(BASE_4X)


def test_saved_config_loads_in_transformers_unchanged():
    from transformers import ModernBertConfig as HFConfig

    ours = ModernBertConfig.from_hf_dict({**BASE_4X, "global_attn_every_n_layers": 2, "local_rope_theta": 5000.0})
    reloaded = HFConfig(**json.loads(json.dumps(ours.to_hf_dict())))
    assert reloaded.layer_types == ours.layer_types
    assert reloaded.rope_parameters[LOCAL]["rope_theta"] == 5000.0
    assert ModernBertConfig.from_hf_dict(reloaded.to_dict()) == ours


def test_not_modernbert_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="model_type='bert'"):
        ModernBertConfig.from_hf_dict({"model_type": "bert", "hidden_size": 384})


def test_unsupported_rope_scaling_is_a_clear_error():
    raw = {**BASE_4X, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}
    with pytest.raises(ModelLoadError, match="yarn"):
        ModernBertConfig.from_hf_dict(raw)


def test_inconsistent_shapes_are_a_clear_error():
    with pytest.raises(ModelLoadError, match="not a multiple"):
        ModernBertConfig.from_hf_dict({**BASE_4X, "num_attention_heads": 7})


def test_null_local_rope_theta_means_the_global_one():
    """transformers 4.x: local layers use global_rope_theta when local_rope_theta is null."""
    config = ModernBertConfig.from_hf_dict({**BASE_4X, "local_rope_theta": None, "global_rope_theta": 50000.0})
    assert (config.global_rope_theta, config.local_rope_theta) == (50000.0, 50000.0)
    as_5x = {k: v for k, v in BASE_4X.items() if not k.endswith("rope_theta")}
    as_5x["rope_parameters"] = {GLOBAL: {"rope_type": "default", "rope_theta": 50000.0},
                                LOCAL: {"rope_type": "default", "rope_theta": None}}
    assert ModernBertConfig.from_hf_dict(as_5x).local_rope_theta == 50000.0
    assert ModernBertConfig.from_hf_dict({k: v for k, v in BASE_4X.items()
                                          if k != "local_rope_theta"}).local_rope_theta == 10000.0  # absent: default


@pytest.mark.parametrize("change, message", [
    ({"global_attn_every_n_layers": 0}, "global_attn_every_n_layers=0"),
    ({"global_attn_every_n_layers": None}, "global_attn_every_n_layers=None"),
    ({"num_hidden_layers": None}, "num_hidden_layers=None"),
    ({"num_hidden_layers": "22"}, "num_hidden_layers='22'"),
    ({"hidden_size": 0}, "hidden_size=0"),
    ({"norm_eps": "small"}, "norm_eps='small'"),
    ({"layer_types": "full_attention"}, "layer_types"),
    ({"rope_parameters": {GLOBAL: "default"}}, "rope_parameters"),
])
def test_malformed_values_are_a_clear_error(change, message):
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(")):
        ModernBertConfig.from_hf_dict({**BASE_4X, **change})
