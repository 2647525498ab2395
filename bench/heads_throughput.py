"""Documents/s of our bi-encoder and ColBERT against sentence-transformers' SentenceTransformer and
MultiVectorEncoder, on the same random ModernBERT folder, mixed-length texts, CPU.

    python bench/heads_throughput.py [--shape base] [--texts 96] [--repeat 2] [--threads 2]

Runs alternate between implementations within one process (best of --repeat rounds each), so that this machine's
drifting speed affects both sides alike. The peers use their default batch size (32).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from encoder.testing import random_encoder
from retrieval import BiEncoder, ColBERT
from retrieval.heads.formats import write_json, write_modules

PYLATE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pylate" / "model"  # its tokenizer has [Q]/[D]


def make_folders(root: Path, shape: str, tokenizer: Path = PYLATE) -> tuple[Path, Path]:
    """One random ModernBERT, saved as a sentence-transformers model (mean pooling + Normalize) and as a PyLate
    ColBERT (Dense to 128). ``tokenizer``: a folder with PyLate's tokenizer files ([Q]/[D] added) and its
    config_sentence_transformers.json."""
    dense, colbert = root / "dense", root / "colbert"
    backbone = random_encoder(shape, seed=0, tokenizer_dir=tokenizer, mlm_head=False, vocab_size=50370)
    for folder in (dense, colbert):
        backbone.save_pretrained(folder)
        write_json(folder / "sentence_bert_config.json", {"max_seq_length": 8192, "do_lower_case": False})
    hidden = backbone.config.hidden_size
    write_json(dense / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True})
    (dense / "2_Normalize").mkdir()
    write_modules(dense, [("", "sentence_transformers.models.Transformer"),
                          ("1_Pooling", "sentence_transformers.models.Pooling"),
                          ("2_Normalize", "sentence_transformers.models.Normalize")])
    write_json(colbert / "1_Dense" / "config.json", {"in_features": hidden, "out_features": 128, "bias": False,
                                                     "activation_function": "torch.nn.modules.linear.Identity"})
    save_file({"linear.weight": torch.randn(128, hidden) * 0.02}, str(colbert / "1_Dense" / "model.safetensors"))
    write_modules(colbert, [("", "sentence_transformers.models.Transformer"), ("1_Dense", "pylate.models.Dense.Dense")])
    shutil.copyfile(tokenizer / "config_sentence_transformers.json", colbert / "config_sentence_transformers.json")
    settings = json.loads((colbert / "config_sentence_transformers.json").read_text())
    write_json(colbert / "config_sentence_transformers.json", {**settings, "document_length": 512})
    return dense, colbert


def mixed_texts(n: int) -> list[str]:
    """Texts of about 16 to 500 tokens, in random order."""
    rng = random.Random(0)
    words = "retrieval encoder token window attention index query document vector score model long".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(14, 480))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sentence_transformers import MultiVectorEncoder, SentenceTransformer

    texts = mixed_texts(args.texts)
    with tempfile.TemporaryDirectory() as root:
        dense_folder, colbert_folder = make_folders(Path(root), args.shape)
        ours_dense, ours_colbert = BiEncoder.from_pretrained(dense_folder), ColBERT.from_pretrained(colbert_folder)
        st_dense = SentenceTransformer(str(dense_folder), device="cpu")
        st_colbert = MultiVectorEncoder(str(colbert_folder), device="cpu")
        runs = {
            ("dense", "ours"): lambda batch: ours_dense.encode_documents(batch, show_progress=False),
            ("dense", "sentence-transformers"): lambda batch: st_dense.encode(batch),
            ("colbert", "ours"): lambda batch: ours_colbert.encode_documents(batch, show_progress=False),
            ("colbert", "sentence-transformers"): lambda batch: st_colbert.encode_document(batch),
        }
        best = {key: float("inf") for key in runs}
        with torch.inference_mode():
            for run in runs.values():
                run(texts[:4])  # warm-up
            for _ in range(args.repeat):
                for key, run in runs.items():
                    start = time.perf_counter()
                    run(texts)
                    best[key] = min(best[key], time.perf_counter() - start)
    tokens = sum(len(ids) for ids in ours_dense.backbone.tokenizer.encode(texts))
    print(f"\nModernBERT-{args.shape} (random weights), {args.texts} texts of 16..500 tokens ({tokens} tokens), CPU, "
          f"{args.threads} threads, best of {args.repeat}")
    print(f"{'head':8s} {'sentence-transformers docs/s':>29s} {'ours docs/s':>12s} {'ours / peer':>12s}")
    for head in ("dense", "colbert"):
        peer, ours = args.texts / best[head, "sentence-transformers"], args.texts / best[head, "ours"]
        print(f"{head:8s} {peer:29.2f} {ours:12.2f} {ours / peer:12.2f}")


if __name__ == "__main__":
    main()
