"""The small ModernBERT code retrievers: lightonai/LateOn-Code-edge (Ettin-17M) and lightonai/LateOn-Code
(ModernBERT-base), rebuilt with random weights in their published PyLate layout, and loaded by the ColBERT head.

The hub cannot be reached here. What each file says, and where it comes from (``LATEON_FILES`` below):
- ``sentence_bert_config.json``: exact, as the hub shows it (huggingface.co/lightonai/LateOn-Code-edge and
  /LateOn-Code, blob/main/sentence_bert_config.json): max_seq_length 2047; do_lower_case true (edge), false (base).
- ``config.json``: LateOn-Code: ModernBERT-base's shape as published for its pretraining checkpoint
  (huggingface.co/lightonai/LateOn-Code-pretrain, config.json: 22 layers, hidden 768, intermediate 1152, 12 heads,
  local attention 128, rope 160k/10k, 8192 positions). LateOn-Code-edge: NOT FOUND; built from Ettin-17M's
  documented shape (7 layers, hidden 256, 4 heads; intermediate 384 from the Ettin paper's table) with ModernBERT's
  defaults for the rest.
- The Dense layers: LateOn-Code-edge projects 256 -> 512 -> 48 (two Dense modules: the ONNX graph and the hub commit
  "Fix ONNX export: add final projection layer (512->48 dim)"); bias and activation NOT FOUND (Identity, no bias, as
  every PyLate Dense we know). LateOn-Code: NOT FOUND; one Dense 768 -> 128, as GTE-ModernColBERT-v1, its ancestor.
- ``config_sentence_transformers.json``: NOT FOUND as a file; the values are those its ONNX export copies from it
  (prefixes "[Q] " and "[D] " as added tokens 50368 and 50369, query length 256, document length 2048, no query
  expansion, the punctuation skiplist) and the pretraining run's name (doclen-2048-querylen-256).
The tokenizer is ModernBERT's with PyLate's "[Q] "/"[D] " added (the shared PyLate fixture's).
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from encoder.testing import random_encoder
from retrieval import ColBERT
from support import PYLATE_MODEL, single_torch_thread

EDGE_SHAPE = dict(hidden_size=256, intermediate_size=384, num_hidden_layers=7, num_attention_heads=4)
BASE_SHAPE = dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12)
SETTINGS = {  # config_sentence_transformers.json, as the ONNX exports copy it
    "model_type": "ColBERT", "__version__": {"sentence_transformers": "5.1.1", "pylate": "1.3.4"},
    "prompts": {"query": "", "document": ""}, "default_prompt_name": None, "similarity_fn_name": "MaxSim",
    "query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 256, "document_length": 2048,
    "attend_to_expansion_tokens": False, "skiplist_words": list(string.punctuation), "do_query_expansion": False,
}
MODELS = {  # name -> (backbone shape, Dense layers (in, out), do_lower_case)
    "LateOn-Code-edge": (EDGE_SHAPE, [(256, 512), (512, 48)], True),
    "LateOn-Code": (BASE_SHAPE, [(768, 128)], False),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from single_torch_thread()


def build_lateon(folder: Path, name: str, seed: int = 0) -> Path:
    """A random checkpoint in ``name``'s published layout (see the module docstring for each file's source)."""
    if not (PYLATE_MODEL / "tokenizer.json").exists():
        pytest.skip(f"the PyLate fixture (its tokenizer has [Q] and [D]) is not at {PYLATE_MODEL}")
    shape, dense, lower = MODELS[name]
    random_encoder("base", seed=seed, tokenizer_dir=PYLATE_MODEL, mlm_head=False, vocab_size=50370,
                   **shape).save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    generator = torch.Generator().manual_seed(seed + 1)
    for number, (n_in, n_out) in enumerate(dense, start=1):
        path = folder / f"{number}_Dense"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({
            "in_features": n_in, "out_features": n_out, "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False}))
        save_file({"linear.weight": torch.randn(n_out, n_in, generator=generator) / n_in ** 0.5},
                  str(path / "model.safetensors"))
        modules.append({"idx": number, "name": str(number), "path": path.name, "type": "pylate.models.Dense.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 2047, "do_lower_case": lower}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(SETTINGS))
    return folder


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> Path:
    return build_lateon(tmp_path_factory.mktemp("edge"), "LateOn-Code-edge")


TEXTS = ["def Parse_Config(path: str) -> dict:\n    return json.loads(Path(path).read_text())",
         "How do I READ a JSON file?", "x"]


def reference_vectors(folder: Path, token_ids: list[list[int]], dense: list[tuple[int, int]]) -> list[np.ndarray]:
    """transformers' ModernBertModel on the same ids, then the Dense weights read from the folder, then L2 norm."""
    from safetensors.torch import load_file
    from transformers import ModernBertModel

    backbone = ModernBertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    weights = [load_file(str(folder / f"{i}_Dense" / "model.safetensors"))["linear.weight"]
               for i in range(1, len(dense) + 1)]
    out = []
    with torch.inference_mode():
        for row in token_ids:
            states = backbone(input_ids=torch.tensor([row])).last_hidden_state[0]
            for weight in weights:
                states = states @ weight.T
            out.append(torch.nn.functional.normalize(states, dim=-1).numpy())
    return out


def our_vectors(model: ColBERT, token_ids: list[list[int]]) -> list[np.ndarray]:
    """Every token's vector (the skiplist not applied), from our encoder and the head's projection."""
    with torch.inference_mode():
        return [model._project(s).numpy() for s in model.backbone.token_states(token_ids)]


def test_edge_backbone_and_dense_layers_match_transformers(edge):
    """Ettin-17M's shape through our encoder equals transformers; both Dense layers (256 -> 512 -> 48) applied."""
    model = ColBERT.from_pretrained(edge)
    assert model.backbone.hidden_size == 256 and model.dim == 48 and len(model.dense) == 2
    token_ids = model.tokenize(TEXTS, is_query=True)
    ours = our_vectors(model, token_ids)
    for mine, theirs in zip(ours, reference_vectors(edge, token_ids, MODELS["LateOn-Code-edge"][1])):
        assert mine.shape == theirs.shape and np.abs(mine - theirs).max() <= 1e-4
    assert [q.shape for q in model.encode_queries(TEXTS)] == [(len(r), 48) for r in token_ids]


def test_edge_rules_from_its_configs(edge):
    """do_lower_case, the [Q]/[D] added tokens after [CLS], no query expansion, lengths 256/2048, the skiplist."""
    model = ColBERT.from_pretrained(edge)
    tokenizer = model.tokenizer
    assert (model.query_length, model.document_length, model.query_expansion) == (256, 2048, False)
    assert model.spec.do_lower_case and (model.query_prefix_id, model.document_prefix_id) == (50368, 50369)
    query, document = model.tokenize(["How do I READ a JSON file?"], True)[0], model.tokenize([TEXTS[0]], False)[0]
    assert query[:2] == [tokenizer.cls_token_id, 50368] and document[:2] == [tokenizer.cls_token_id, 50369]
    assert query == model.tokenize(["how do i read a json file?"], True)[0]  # lower-cased
    assert tokenizer.mask_token_id not in query and query[-1] == tokenizer.sep_token_id  # no [MASK] expansion
    long = "alpha beta gamma " * 1500
    assert len(model.tokenize([long], True)[0]) == 256 and len(model.tokenize([long], False)[0]) == 2048
    punctuation = {tokenizer.backend.token_to_id(p) for p in string.punctuation} - {None}
    kept = [t for t in document if t not in punctuation]
    assert len(kept) < len(document) and model.encode_documents([TEXTS[0]])[0].shape == (len(kept), 48)
    upper = ColBERT.from_pretrained(edge).encode_documents(["JSON LOADS"])[0]
    assert np.allclose(upper, model.encode_documents(["json loads"])[0], atol=1e-6)


def test_edge_saves_and_loads_again(edge, tmp_path):
    """Our save of a two-Dense, lower-casing model reads back the same (PyLate's layout)."""
    model = ColBERT.from_pretrained(edge)
    model.save(tmp_path / "again")
    again = ColBERT.from_pretrained(tmp_path / "again")
    assert again.spec.do_lower_case and len(again.dense) == 2 and again.query_expansion is False
    assert np.allclose(again.encode_documents(TEXTS)[0], model.encode_documents(TEXTS)[0], atol=1e-6)


def test_lateon_code_base_shape_matches_transformers(tmp_path):
    """LateOn-Code: ModernBERT-base's published shape (22 layers, 149M parameters), cased, 768 -> 128."""
    folder = build_lateon(tmp_path / "base", "LateOn-Code")
    model = ColBERT.from_pretrained(folder)
    assert not model.spec.do_lower_case and model.dim == 128 and model.backbone.hidden_size == 768
    assert sum(p.numel() for p in model.backbone.parameters()) > 140e6
    token_ids = model.tokenize(TEXTS[:2], is_query=False)
    assert token_ids[0] != ColBERT.from_pretrained(folder).tokenize([TEXTS[0].lower()], False)[0]  # case kept
    ours = our_vectors(model, token_ids)
    for mine, theirs in zip(ours, reference_vectors(folder, token_ids, MODELS["LateOn-Code"][1])):
        assert mine.shape == theirs.shape and np.abs(mine - theirs).max() <= 1e-4


def test_edge_layout_matches_pylate(edge):
    """The same seeded checkpoint through PyLate 1.6 (tests/fixtures/lateon, with the script that made it): token
    ids (lower-cased, [Q]/[D], no expansion, lengths), shapes after the skiplist, vectors after both Dense layers,
    and token pooling (pool_factor 2) of 48-dimensional vectors."""
    fixture = Path(__file__).parents[1] / "fixtures" / "lateon"
    info = json.loads((fixture / "lateon_edge.json").read_text())
    arrays = np.load(fixture / "lateon_edge.npz")
    for name, digest in info["weights_sha256"].items():
        assert hashlib.sha256((edge / name).read_bytes()).hexdigest() == digest, (
            f"{name} is not the checkpoint tests/fixtures/lateon was made from: rerun its make_fixture.py")
    model = ColBERT.from_pretrained(edge)
    assert model.tokenize(info["queries"], True) == info["query_token_ids"]
    assert model.tokenize(info["documents"], False) == info["document_token_ids"]
    for kind, texts, encode in (("query", info["queries"], model.encode_queries),
                                ("doc", info["documents"], model.encode_documents)):
        for i, vectors in enumerate(encode(texts)):
            expected = arrays[f"{kind}_{i}"]
            assert vectors.shape == expected.shape and np.abs(vectors - expected).max() <= 1e-5, (kind, i)
    model.pool_factor = 2
    for i, vectors in enumerate(model.encode_documents(info["documents"])):
        expected = arrays[f"pool2_doc_{i}"]
        assert vectors.shape == expected.shape and np.abs(vectors - expected).max() <= 1e-5, i
