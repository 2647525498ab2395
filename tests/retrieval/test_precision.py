"""``--device`` / ``--dtype`` (retrieval/heads/precision.py): values resolved or refused with one clear message, the
CPU's float format measured once and remembered, int8 quantization of both backbones and both heads with its price
(per-text cosine to float32 on real MiniLM text and on a ModernBERT-base-shaped encoder), int8 in the eval cache key,
and the flags on `mret embed`, `mret index` and `mret eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modernretrieval.errors import SettingsError
from retrieval.heads import precision
from retrieval.heads.loading import load_head
from retrieval.heads.precision import Precision, is_int8, resolve
from support import PYLATE_MODEL, TOKENIZER_DIR, dense_model_folder

runner = CliRunner()
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without CUDA")


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """The remembered CPU choice goes to this test's folder, never to the user's cache."""
    monkeypatch.setenv("MRET_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def scifact_texts(scifact) -> list[str]:
    """Real text: 16 SciFact documents (title + abstract, as BEIR joins them)."""
    ids = list(scifact.corpus)[:16]
    return scifact.document_texts(ids)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# ----- resolving the values
@pytest.mark.parametrize("device,dtype,expected", [
    ("cpu", "float32", Precision(torch.device("cpu"), torch.float32)),
    ("cpu", "bfloat16", Precision(torch.device("cpu"), torch.bfloat16)),
    ("cpu", "int8", Precision(torch.device("cpu"), torch.float32, int8=True)),
    (torch.device("cpu"), torch.bfloat16, Precision(torch.device("cpu"), torch.bfloat16)),
])
def test_explicit_values_resolve_as_asked(device, dtype, expected):
    assert resolve(device, dtype) == expected
    assert resolve(device, dtype).name == (dtype if isinstance(dtype, str) else "bfloat16")


@pytest.mark.parametrize("device,dtype,needle", [
    ("cpu", "float64", "--dtype must be one of auto, float32, bfloat16, int8, got 'float64'"),
    ("cpu", "fp16", "--dtype must be one of"),
    ("cpu", torch.float16, "float16 runs on CUDA only"),
    ("tpu", "auto", "--device must be one of auto, cpu, cuda, cuda:N, got 'tpu'"),
    ("cuda:x", "auto", "--device must be one of"),
    pytest.param("cuda", "float32", "--device cuda: ", marks=no_cuda),
    pytest.param("cuda:1", "auto", "use --device cpu", marks=no_cuda),
])
def test_bad_values_are_one_settings_error(device, dtype, needle):
    with pytest.raises(SettingsError) as caught:
        precision.check(device, dtype)
    assert needle in str(caught.value)


def test_cuda_rules_on_a_machine_with_one_gpu(monkeypatch):
    """What only a GPU machine would show, with torch told it has one device: auto takes it in bf16, int8 and a
    second device are refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve("auto", "auto") == Precision(torch.device("cuda"), torch.bfloat16)
    assert resolve("cuda:0", "float32") == Precision(torch.device("cuda:0"), torch.float32)
    with pytest.raises(SettingsError, match="int8 runs on the CPU only"):
        resolve("cuda", "int8")
    with pytest.raises(SettingsError, match=r"there is 1 CUDA device \(cuda:0..cuda:0\)"):
        resolve("cuda:1", "auto")


def test_auto_dtype_on_cuda_is_bf16_only_where_the_device_asked_for_runs_it_natively(monkeypatch):
    """A Turing/Volta GPU (capability < 8.0) emulates bf16, several times slower than float32: torch's
    is_bf16_supported() says yes there (emulation counts) and looks at the current device. auto asks the device
    that was named: cuda:1 an Ampere beside a Turing cuda:0 (the current one) is bf16, cuda:0 and plain cuda float32."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation: must not decide
    capabilities = {0: (7, 5), 1: (8, 0)}
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: asked.append(device) or capabilities[device])
    assert resolve("cuda:1", "auto") == Precision(torch.device("cuda:1"), torch.bfloat16)
    assert resolve("cuda:0", "auto") == Precision(torch.device("cuda:0"), torch.float32)
    assert resolve("cuda", "auto") == Precision(torch.device("cuda"), torch.float32)
    assert resolve("auto", "auto") == Precision(torch.device("cuda"), torch.float32)
    assert asked == [1, 0, 0, 0]


# ----- auto on a CPU: measured once, remembered
def test_auto_on_cpu_takes_the_faster_format_measured_once(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = []
    timings = {"float32": 1.0, "bfloat16": 0.5}
    monkeypatch.setattr(precision, "measure_cpu", lambda: calls.append(1) or dict(timings))
    assert resolve("auto", "auto") == Precision(torch.device("cpu"), torch.bfloat16)
    assert resolve(None, None).dtype == torch.bfloat16 and len(calls) == 1  # remembered, not measured again
    saved = json.loads((tmp_path / "cache" / "precision.json").read_text())
    assert saved[precision.machine_key()]["dtype"] == "bfloat16"
    assert precision.cpu_model() in precision.machine_key() and torch.__version__ in precision.machine_key()
    # the same model name with other bf16 instructions (one "AMD EPYC" with AVX512-BF16, one without): measured anew
    flags = precision.cpu_flags()
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags ^ {"avx512_bf16"})
    timings["bfloat16"] = 2.0
    assert resolve("cpu", "auto").dtype == torch.float32 and len(calls) == 2
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert resolve("cpu", "auto").dtype == torch.bfloat16 and len(calls) == 2  # each CPU keeps its own answer

    (tmp_path / "cache" / "precision.json").write_text("{damaged")  # unreadable: measured again, rewritten
    timings["bfloat16"] = 0.95  # not clearly faster: float32, which is exact, wins the tie
    assert resolve("cpu", "auto").dtype == torch.float32 and len(calls) == 3
    assert json.loads((tmp_path / "cache" / "precision.json").read_text())[precision.machine_key()]["dtype"] == "float32"


def test_the_measurement_times_both_formats():
    seconds = precision.measure_cpu(tokens=32, rounds=1)
    assert set(seconds) == {"float32", "bfloat16"} and all(s > 0 for s in seconds.values())


# ----- int8: what is quantized, and the price
@pytest.fixture(scope="module")
def base_encoder():
    """Random weights of ModernBERT-base's shape (22 layers, 768), no MLM head."""
    from encoder.testing import random_encoder

    return random_encoder("base", seed=0, mlm_head=False)


def test_int8_modernbert_base_quantizes_every_body_linear_and_keeps_cosine(base_encoder):
    import copy

    from retrieval.heads.backbones import ModernBertBackbone
    from support import random_ids

    fp32 = ModernBertBackbone(base_encoder)
    int8 = ModernBertBackbone(copy.deepcopy(base_encoder))
    int8.quantize_int8()
    body = int8.model.model
    assert not any(type(m) is nn.Linear for m in body.modules())  # fused Wqkv, Wo, GeGLU Wi, Wo: all int8
    assert is_int8(body.layers[0].attn.Wqkv) and is_int8(body.layers[0].mlp.Wi) and not is_int8(fp32)
    ids = random_ids([37, 130, 300], seed=1)
    with torch.inference_mode():
        exact, approximate = fp32.token_states(ids), int8.token_states(ids)
    per_text = [float(torch.cosine_similarity(a.mean(0), b.mean(0), dim=0)) for a, b in zip(exact, approximate)]
    per_token = torch.cat([torch.cosine_similarity(a, b, dim=-1) for a, b in zip(exact, approximate)])
    assert min(per_text) >= 0.99 and float(per_token.mean()) >= 0.99, (per_text, float(per_token.min()))
    assert max(per_text) < 1 - 1e-6  # the int8 path really ran


def test_int8_and_bf16_minilm_on_real_text_keep_cosine(minilm_folder, scifact_texts):
    """Real all-MiniLM-L6-v2 (BERT through transformers) on SciFact documents, dense head: per-text cosine to
    float32 >= 0.99 for int8 and bf16."""
    exact = load_head(minilm_folder, "dense").encode_documents(scifact_texts)
    int8 = load_head(minilm_folder, "dense", dtype="int8")
    assert is_int8(int8.backbone.model) and not any(type(m) is nn.Linear for m in int8.backbone.model.encoder.modules())
    approximate = int8.encode_documents(scifact_texts)
    assert cosines(exact, approximate).min() >= 0.99 and cosines(exact, approximate).max() < 1 - 1e-6
    bf16 = load_head(minilm_folder, "dense", dtype="bfloat16").encode_documents(scifact_texts[:4])  # slow without
    assert cosines(exact[:4], bf16).min() >= 0.99  # native bf16 (this CPU: 6x float32's time)


def test_int8_colbert_heads_on_both_backbones(minilm_folder, scifact_texts):
    """ColBERT on BERT (MiniLM's token vectors) and on ModernBERT (the PyLate fixture): per-token cosine >= 0.99
    on average, same token counts; the projection stays float32."""
    texts = scifact_texts[:6]
    exact = load_head(minilm_folder, "colbert", token_embeddings=True).encode_documents(texts)
    approximate = load_head(minilm_folder, "colbert", token_embeddings=True, dtype="int8").encode_documents(texts)
    assert [len(a) for a in exact] == [len(a) for a in approximate]
    assert np.mean([cosines(a, b).mean() for a, b in zip(exact, approximate)]) >= 0.99
    if not PYLATE_MODEL.exists():
        pytest.skip("the PyLate fixture model is not in ../shared")
    int8 = load_head(PYLATE_MODEL, "colbert", dtype="int8")
    assert is_int8(int8.backbone.model) and not is_int8(int8.dense)
    exact = load_head(PYLATE_MODEL, "colbert").encode_documents(texts)
    approximate = int8.encode_documents(texts)
    assert [len(a) for a in exact] == [len(a) for a in approximate]
    assert np.mean([cosines(a, b).mean() for a, b in zip(exact, approximate)]) >= 0.99


def _storages(module: nn.Module) -> list[torch.UntypedStorage]:
    return [t.untyped_storage() for t in [*module.parameters(), *module.buffers()]]


@pytest.mark.parametrize("model", ["modernbert", "minilm"])
def test_int8_lets_go_of_the_checkpoint_file_it_was_loaded_from(model, tiny_dense, minilm_folder):
    """safetensors loads weights as views of one memory-mapped file; after quantizing, no parameter may still be such
    a view (the mapping, and every float32 page quantizing read, would stay resident: an int8 run's peak RSS was
    above float32's). The MLM decoder stays tied to the embedding; the int8 vectors stay within cosine 0.99."""
    folder = tiny_dense if model == "modernbert" else minilm_folder
    head = load_head(folder, "dense")
    backbone = head.backbone
    loaded = _storages(backbone.model)  # held: their addresses cannot be reused by the copies
    texts = ["def load(path): return json.loads(path.read_text())", "tides and the moon"]
    before = head.encode_documents(texts) if model == "modernbert" else None
    backbone.quantize_int8()
    assert not {s.data_ptr() for s in loaded} & {s.data_ptr() for s in _storages(backbone.model)}
    if model == "modernbert":
        decoder = getattr(backbone.model, "decoder", None)
        if decoder is not None and backbone.model.config.tie_word_embeddings:
            assert decoder.weight is backbone.model.model.embeddings.tok_embeddings.weight
        assert cosines(before, head.encode_documents(texts)).min() >= 0.99


@pytest.fixture(scope="module")
def tiny_dense(tmp_path_factory):
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"the ModernBERT tokenizer is not at {TOKENIZER_DIR} (../shared is missing)")
    return dense_model_folder(tmp_path_factory.mktemp("precision") / "model")


def test_an_int8_model_is_not_saved(tiny_dense, tmp_path):
    model = load_head(tiny_dense, "dense", dtype="int8")
    with pytest.raises(SettingsError, match="int8-quantized model cannot be saved"):
        model.save(tmp_path / "out")


def test_the_eval_cache_keeps_int8_bf16_and_float32_apart(tiny_dense, tmp_path):
    from eval.datasets.beir import BeirDataset
    from eval.encode import encode_beir

    data = BeirDataset({"d1": {"title": "", "text": "a json decoder"}, "d2": {"title": "", "text": "tides"}},
                       {"q1": "decode json"}, {"q1": {"d1": 1}}, tmp_path / "data")
    paths = {dtype: encode_beir(data, load_head(tiny_dense, "dense", dtype=dtype), "dense", tmp_path / "emb",
                                model_key="tiny").path for dtype in ("float32", "bfloat16", "int8")}
    assert len(set(paths.values())) == 3, paths
    described = json.loads(paths["int8"].with_suffix(".json").read_text())
    assert described["dtype"] == "int8"


# ----- the command line
def mret(*args):
    from retrieval.cli import app

    return runner.invoke(app, [str(a) for a in args])


def assert_one_error_line(result, needle: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("error:") and sum(line.startswith("error:") for line in lines) == 1
    assert needle in result.stderr and "Traceback" not in result.output, result.stderr


def test_mret_embed_dtype_int8(tiny_dense, tmp_path):
    (tmp_path / "in.txt").write_text("first text\na second, longer text about retrieval\nthird\n")
    for dtype in ("float32", "int8"):
        result = mret("embed", "-m", tiny_dense, "-i", tmp_path / "in.txt", "-o", tmp_path / f"{dtype}.npy",
                      "--dtype", dtype, "--device", "cpu")
        assert result.exit_code == 0, result.output
    exact, approximate = np.load(tmp_path / "float32.npy"), np.load(tmp_path / "int8.npy")
    assert exact.shape == approximate.shape and not np.array_equal(exact, approximate)
    assert cosines(exact, approximate).min() >= 0.99


@pytest.mark.parametrize("command", ["embed", "index", "eval"])
@pytest.mark.parametrize("flags,needle", [
    pytest.param(["--device", "cuda"], "--device cuda: ", marks=no_cuda),
    (["--dtype", "float64"], "--dtype must be one of auto, float32, bfloat16, int8"),
])
def test_bad_device_or_dtype_is_one_error_line(command, flags, needle, tiny_dense, tmp_path):
    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "tree").mkdir()
    args = {"embed": ["embed", "-m", tiny_dense, "-i", tmp_path / "in.txt", "-o", tmp_path / "o.npy"],
            "index": ["index", tmp_path / "tree", "--model", tiny_dense],
            "eval": ["eval", "folder", "--dataset", tmp_path / "tree", "--model", tiny_dense]}[command]
    result = mret(*args, *flags)
    assert_one_error_line(result, needle)
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "tree" / ".mret").exists()


def test_int8_linear_scales_each_token_on_its_own():
    """One token with huge states (as [CLS]/[SEP] in trained transformers) must not coarsen the others: with one
    scale per call they would all round to a few levels."""
    from retrieval.heads.precision import Int8Linear

    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    x = torch.randn(64, 256)
    x[0] *= 1000
    with torch.inference_mode():
        exact, approximate = linear(x), Int8Linear(linear)(x)
    assert float(torch.cosine_similarity(exact, approximate, dim=-1).min()) >= 0.999
