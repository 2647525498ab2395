"""Helpers shared by test_retriever.py and test_index_cli.py (a tiny dense model folder, copies of real source
trees, a file's lines as an editor numbers them), and, run as a script, the indexing child that
test_retriever.py's kill test SIGKILLs:

    python tests/retriever_support.py '{"root": ..., "index_dir": ..., "model": ..., "max_length": ...,
                                        "batch_tokens": ..., "max_file_bytes": ..., "sleep": ...}'

The child prints one line ("encode N") before each batch it encodes, then sleeps ``sleep`` seconds, so that the
parent can kill it at chosen points of a run (between commits, while encoding, while committing).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER_DIR = SHARED / "data" / "modernbert-tokenizer"
PYLATE_MODEL = SHARED / "fixtures" / "pylate" / "model"


def dense_model_folder(folder: Path, seed: int = 5) -> Path:
    """A tiny random ModernBERT (2 layers, hidden 64, the real tokenizer) as a sentence-transformers folder with
    mean pooling and Normalize, written in the classic layout every sentence-transformers version reads."""
    from encoder.testing import random_encoder
    from retrieval.st_folder import write_json, write_modules

    random_encoder("tiny", seed=seed, tokenizer_dir=TOKENIZER_DIR, mlm_head=False,
                   num_hidden_layers=2).save_pretrained(folder)
    write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    (folder / "2_Normalize").mkdir(exist_ok=True)
    write_modules(folder, [("", "sentence_transformers.models.Transformer"),
                           ("1_Pooling", "sentence_transformers.models.Pooling"),
                           ("2_Normalize", "sentence_transformers.models.Normalize")])
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 8192, "do_lower_case": False})
    return folder


def single_torch_thread():
    """A generator for a fixture: torch on one thread while it runs, the previous count restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def copy_package(module, destination: Path) -> Path:
    """An installed package's source folder (without __pycache__) copied to ``destination``."""
    source = Path(module.__file__).parent
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def editor_lines(text: str) -> list[str]:
    """``text`` cut into lines as editors, grep -n and compilers number them: at "\\n" only (a form feed or a
    vertical tab inside a line does not start a new one), each line keeping its end."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def _child(args: dict) -> None:
    import time

    from retrieval.retriever import Retriever

    retriever = Retriever(args["root"], index_dir=args["index_dir"], model=args["model"],
                          max_length=args["max_length"], batch_tokens=args["batch_tokens"],
                          max_file_bytes=args["max_file_bytes"], show_progress=False)
    model = retriever.model
    encode, calls = model.encode_documents, [0]

    def slow_encode(texts, **kwargs):
        calls[0] += 1
        print(f"encode {calls[0]}", flush=True)
        time.sleep(args["sleep"])
        return encode(texts, **kwargs)

    model.encode_documents = slow_encode
    with retriever:
        summary = retriever.index()
    print(f"done {summary.files} {summary.chunks}", flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
