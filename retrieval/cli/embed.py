"""``mret embed``: texts in, vectors out, rows in input order."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .console import KindChoice, err, fail

# shared by mret index, embed and eval (retrieval/heads/precision.py resolves them)
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N."
DTYPE_HELP = ("auto (bfloat16 on CUDA; on a CPU the faster of float32 and bfloat16, measured once), float32, "
              "bfloat16, or int8 (CPU: linear layers quantized; fastest, vectors slightly approximate).")


def read_texts(path: Path) -> list[str]:
    """A .txt file (one text per line) or .jsonl (a JSON string per line, or an object with "text" and
    optionally "title", joined as BEIR does)."""
    if not path.exists():
        fail(f"{path} does not exist")
    if path.suffix not in (".txt", ".jsonl"):
        fail(f"{path}: the input must be .txt (one text per line) or .jsonl")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if path.suffix == ".txt":
        texts = lines
    else:
        texts = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                fail(f"{path}:{number}: not valid JSON ({error.msg})")
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                item = (str(item.get("title") or "") + " " + item["text"]).strip()
            if not isinstance(item, str):
                fail(f'{path}:{number}: expected a JSON string or an object with a "text" string')
            texts.append(item)
    if not texts:
        fail(f"{path} holds no text")
    return texts


def embed_command(
    model: str = typer.Option(..., "--model", "-m", help="Model folder or hub id."),
    input: Path = typer.Option(..., "--input", "-i", help="texts.txt (one per line) or texts.jsonl."),
    output: Path = typer.Option(..., "--output", "-o", help="out.npy (dense) or out.npz (colbert)."),
    kind: KindChoice = typer.Option("dense", "--kind", help="dense: one vector per text; colbert: one per token."),
    query: bool = typer.Option(False, "--query", help="Encode as queries (query prompt / [Q] and expansion)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP + " Default float32: the model's exact vectors."),
) -> None:
    """Embed texts; rows stay in input order."""
    expected = ".npy" if kind.value == "dense" else ".npz"
    if output.suffix != expected:
        fail(f"--kind {kind.value} writes {expected}; got {output}")
    texts = read_texts(input)
    from retrieval.heads import load_head
    from retrieval.heads.colbert import pack_arrays

    head = load_head(model, kind.value, device=device, dtype=dtype)
    vectors = (head.encode_queries if query else head.encode_documents)(texts, show_progress=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    import numpy as np  # here: the command line starts without it

    if kind.value == "dense":
        np.save(output, vectors)
        shape = vectors.shape
    else:
        embeddings, offsets = pack_arrays(vectors)
        np.savez(output, embeddings=embeddings, offsets=offsets)
        shape = embeddings.shape
    err.print(f"wrote {output}: {len(texts)} texts, array {shape}", highlight=False)
