"""The ``mret`` command line. User mistakes end in one red line and exit code 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from .console import Kind, err, fail

app = typer.Typer(help="modernretrieval: ModernBERT embeddings and retrieval.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


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


@app.command()
def embed(
    model: str = typer.Option(..., "--model", "-m", help="Model folder or hub id."),
    input: Path = typer.Option(..., "--input", "-i", help="texts.txt (one per line) or texts.jsonl."),
    output: Path = typer.Option(..., "--output", "-o", help="out.npy (dense) or out.npz (colbert)."),
    kind: Kind = typer.Option(Kind.dense, "--kind", help="dense: one vector per text; colbert: one per token."),
    query: bool = typer.Option(False, "--query", help="Encode as queries (query prompt / [Q] and expansion)."),
) -> None:
    """Embed texts; rows stay in input order."""
    from encoder.errors import ModelLoadError

    expected = ".npy" if kind is Kind.dense else ".npz"
    if output.suffix != expected:
        fail(f"--kind {kind.value} writes {expected}; got {output}")
    texts = read_texts(input)
    try:
        if kind is Kind.dense:
            from retrieval import BiEncoder

            encoder = BiEncoder.from_pretrained(model)
            vectors = (encoder.encode_queries if query else encoder.encode_documents)(texts, show_progress=True)
            output.parent.mkdir(parents=True, exist_ok=True)
            np.save(output, vectors)
            shape = vectors.shape
        else:
            from retrieval.heads.colbert import ColBERT, pack_arrays

            colbert = ColBERT.from_pretrained(model)
            arrays = (colbert.encode_queries if query else colbert.encode_documents)(texts, show_progress=True)
            embeddings, offsets = pack_arrays(arrays)
            output.parent.mkdir(parents=True, exist_ok=True)
            np.savez(output, embeddings=embeddings, offsets=offsets)
            shape = embeddings.shape
    except ModelLoadError as error:
        fail(str(error))
    err.print(f"wrote {output}: {len(texts)} texts, array {shape}", highlight=False)


@app.callback()
def main() -> None:
    """modernretrieval: ModernBERT embeddings and retrieval."""


def _register_commands() -> None:
    from .eval import datasets_app, eval_command

    from .index import register

    from .train import train_command

    register(app)
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    app.add_typer(datasets_app, name="datasets")


_register_commands()


if __name__ == "__main__":
    app()
