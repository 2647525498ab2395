"""``mret embed``: texts in, vectors out, rows in input order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from .console import KindChoice, err, fail

# shared by mret index, embed and eval (retrieval/heads/precision.py resolves them)
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N."
DTYPE_HELP = ("auto (bfloat16 on CUDA; on a CPU the faster of float32 and bfloat16, measured once), float32, "
              "bfloat16, or int8 (CPU: linear layers quantized; fastest, vectors slightly approximate).")


def read_texts(path: Path) -> list[str]:
    """A .txt file (one text per line) or .jsonl (a JSON string per line, or an object with "text" and
    optionally "title", joined as BEIR does), UTF-8 with or without a byte order mark."""
    if not path.exists():
        fail(f"{path} does not exist")
    if path.is_dir():
        fail(f"{path} is a folder; the input must be a .txt or .jsonl file (a folder is read with --ray)")
    if path.suffix not in (".txt", ".jsonl"):
        fail(f"{path}: the input must be .txt (one text per line) or .jsonl")
    try:
        data = path.read_bytes()
    except OSError as error:
        fail(f"{path}: cannot be read ({error.strerror or error})")
    try:
        content = data.decode("utf-8-sig")  # a BOM (Windows editors write one) is not part of the first text
    except UnicodeDecodeError as error:
        fail(f"{path}: not UTF-8 (byte {error.start})")
    # lines end at \n (and \r\n) only: str.splitlines() would also cut at form feeds and Unicode line separators
    # inside a text, and every later vector would belong to the wrong line
    lines = content.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the file
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


RAY_EMBED_HELP = ("Encode on Ray ('local': a cluster of this machine; or HEAD:6379, ray://HEAD:10001): --input may "
                  "then also be .parquet files, .jsonl files (one JSON object per line), a folder or a glob of them, "
                  "read by Ray Data (column text; title joined before it when present; id optional: written to "
                  "out.ids.npy beside out.npy; rows in input order either way). Finished chunks are kept in "
                  "OUTPUT.parts/ until the output is written: a killed run, rerun, resumes. Needs pip install -e "
                  "\".\\[distributed]\".")  # \\[: rich's escape of [ in --help


def embed_command(
    model: str = typer.Option(..., "--model", "-m", help="Model folder or hub id."),
    input: list[str] = typer.Option(..., "--input", "-i", help="texts.txt (one per line) or texts.jsonl; with --ray "
                                    "also .parquet/.jsonl files, a folder or a glob (-i repeated for several)."),
    output: Path = typer.Option(..., "--output", "-o", help="out.npy (dense) or out.npz (colbert)."),
    kind: KindChoice = typer.Option("dense", "--kind", help="dense: one vector per text; colbert: one per token."),
    query: bool = typer.Option(False, "--query", help="Encode as queries (query prompt / [Q] and expansion)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP + " Default float32: the model's exact vectors."),
    ray: str | None = typer.Option(None, "--ray", metavar="local|ADDRESS", help=RAY_EMBED_HELP),
    workers: int | None = typer.Option(None, "--workers", help="With --ray: actors encoding at once (default one "
                                       "per GPU of the cluster, else one per CPU)."),
) -> None:
    """Embed texts; rows stay in input order."""
    expected = ".npy" if kind.value == "dense" else ".npz"
    if output.suffix != expected:
        fail(f"--kind {kind.value} writes {expected}; got {output}")
    check_output(output)
    if ray is not None:
        return embed_on_ray(model, input, output, kind.value, query, device, dtype, ray, workers)
    if workers is not None:
        fail("--workers goes with --ray")
    if len(input) != 1:
        fail("one --input without --ray (several files, folders and globs are read with --ray)")
    texts = read_texts(Path(input[0]))
    from retrieval.heads import load_head

    # the vectors are written as the model makes them (a "dot" model's are not normalized): nothing to warn about
    head = load_head(model, kind.value, device=device, dtype=dtype, warn_similarity=False)
    vectors = (head.encode_queries if query else head.encode_documents)(texts, show_progress=True)
    try:
        ids_path(output).unlink(missing_ok=True)  # an earlier `--ray` run's ids would not name these rows
        write_vectors(output, kind.value, vectors)
    except OSError as error:  # a full disk, a folder made read-only meanwhile, /proc...: the vectors are lost
        fail(cannot_write(output, error))


def cannot_write(output: Path, error: OSError) -> str:
    """The one line for an output that could not be written after encoding (nothing partial is left: atomic)."""
    return f"--output {output}: cannot be written ({error.strerror or error}); nothing was written, run it again"


def check_output(output: Path) -> None:
    """Before any model is loaded: one line when ``output`` cannot be written (it is a folder, a file stands where a
    folder of its path should be, or the folder is not writable). Missing folders are made when it is written; an
    existing file is replaced (``wrote`` then says so)."""
    if output.is_dir():
        fail(f"--output {output} is a folder; give the path of the file to write")
    existing = output.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        fail(f"--output {output}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"--output {output}: the folder {existing} is not writable")


def _replacing(output: Path) -> str:
    """What ``wrote`` adds when the file was there before."""
    return " (replaced the file that was there)" if output.exists() else ""


def embed_on_ray(model: str, inputs: list[str], output: Path, kind: str, query: bool, device: str, dtype: str,
                 address: str, workers: int | None) -> None:
    """``mret embed --ray``: the corpus read by Ray Data (a lone .txt read here), encoded by Ray actors through the
    pipeline's chunks into OUTPUT.parts/ (resumable), written in input order (ids beside it), then the parts
    folder removed."""
    import shutil

    from retrieval.distributed import HeadSpec, connect
    from retrieval.distributed.files import corpus_from_texts, embed_corpus, read_corpus, write_output

    if workers is not None and workers < 1:
        fail(f"--workers must be at least 1, got {workers}")
    cluster = connect(address)
    if len(inputs) == 1 and Path(inputs[0]).suffix == ".txt":
        corpus = corpus_from_texts(read_texts(Path(inputs[0])), inputs)
    else:
        corpus = read_corpus(inputs)
    local = Path(model).expanduser()
    spec = HeadSpec(str(local.resolve()) if local.exists() else model, kind, device=device, dtype=dtype)
    parts = output.with_name(output.name + ".parts")
    err.print(f"{cluster.describe()}: {corpus.size} texts; parts in {parts}", highlight=False, soft_wrap=True)
    written = 0

    def progress(texts: int) -> None:
        nonlocal written
        written += texts
        err.print(f"chunk of {texts} texts encoded ({written} this run)", highlight=False)

    run = embed_corpus(spec, corpus, parts, query, workers=workers, progress=progress, address=address)
    err.print(run.report.describe(), highlight=False, soft_wrap=True)
    # ids after the vectors, an earlier run's ids gone first: a kill in between leaves vectors without ids,
    # never new vectors beside old ids (or the reverse)
    try:
        ids_path(output).unlink(missing_ok=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        replaced = _replacing(output)
        shape = write_output(run, output, kind)
        if run.ids is not None:
            write_ids(ids_path(output), run.ids)
    except OSError as error:  # the encoded chunks stay in the parts folder: a rerun writes them without encoding
        fail(f"--output {output}: cannot be written ({error.strerror or error}); the encoded chunks stay in "
             f"{parts}, run it again to write them")
    err.print(f"wrote {output}{replaced}: {corpus.size} texts, array {shape}", highlight=False)
    shutil.rmtree(parts)
    if run.ids is not None:
        err.print(f"wrote {ids_path(output)}: the id of each row", highlight=False)


def ids_path(output: Path) -> Path:
    """Where ``mret embed --ray`` writes the ids of the rows of ``output`` (out.npy -> out.ids.npy)."""
    return output.with_name(output.stem + ".ids.npy")


def write_ids(path: Path, ids) -> None:
    import numpy as np

    from modernretrieval.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.save(f, np.asarray(ids)))


def write_vectors(output: Path, kind: str, vectors) -> None:
    """The rows as ``mret embed`` writes them, whole or not at all: (n, dim) float32 in a .npy for dense; packed
    ``embeddings`` and ``offsets`` in a .npz for colbert (``pack_arrays``)."""
    import numpy as np  # here: the command line starts without it

    from modernretrieval.files import atomic_write
    from retrieval.heads.colbert import pack_arrays

    output.parent.mkdir(parents=True, exist_ok=True)
    replaced = _replacing(output)
    if kind == "dense":
        array = np.stack(vectors) if isinstance(vectors, list) else vectors
        atomic_write(output, lambda f: np.save(f, array))
        shape = array.shape
    else:
        embeddings, offsets = pack_arrays(vectors)
        atomic_write(output, lambda f: np.savez(f, embeddings=embeddings, offsets=offsets))
        shape = embeddings.shape
    err.print(f"wrote {output}{replaced}: {len(vectors)} texts, array {shape}", highlight=False)
