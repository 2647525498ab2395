"""``--ray`` on ``mret eval`` and ``mret index``: the command line's side of the distributed package (Ray is
imported only when the option is given; without the ``distributed`` extra it is one error line)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

RAY_HELP = ("Run the encoding (and for mret eval the sharded index and its search) on Ray: 'local' starts a new "
            "cluster of this machine's CPUs/GPUs; or a cluster address (HEAD:6379, or ray://HEAD:10001 through "
            "Ray Client). "
            "Needs pip install -e \".\\[distributed]\".")


def ray_eval(data: Any, settings: Any, output: Path, cache: Path, address: str, shards: int) -> dict[str, Any]:
    """``mret eval --ray``: encode on Ray (resumable parts under ``cache``/ray), ``shards`` shards built by Ray
    tasks, searched by one actor each; scored, written (run.trec, metrics.json) and reported as the single-node
    runner does: the top ``depth`` of each query once its own id is dropped (unless ``keep_own_ids``)."""
    from eval.metrics import evaluate, without_own_ids
    from eval.published import published_scores
    from eval.runner import device_description, versions, write_trec_run
    from modernretrieval.errors import SettingsError
    from modernretrieval.files import atomic_write_json
    from retrieval.distributed import HeadSpec
    from retrieval.distributed.beir import beir_run_on_ray
    from retrieval.distributed.shards import check_shards

    from .console import err

    if settings.mode != "semantic":
        raise SettingsError("--ray runs --mode semantic (the model's ranking); run hybrid or lexical without --ray")
    check_shards(shards, len(data.corpus))  # before anything is encoded
    settings.check()
    spec = HeadSpec(settings.model, settings.kind, settings.max_length, settings.token_embeddings,
                    device=settings.device, dtype=settings.dtype, pool_factor=settings.pool_factor)
    started = time.perf_counter()
    result = beir_run_on_ray(data, spec, cache / "ray", shards=shards, depth=settings.depth, index=settings.index,
                             nbits=settings.nbits, address=address, progress=True)
    err.print(result.describe(), highlight=False, soft_wrap=True)
    keep_own_ids = settings.keep_own_ids
    run = without_own_ids(result.run, settings.depth, keep_own_ids)  # searched depth + 1, as eval.runner
    metrics = evaluate(run, data.qrels, keep_own_ids)
    timings = dict(result.timings)
    record = {
        **metrics,
        "dataset": {"name": data.name, "split": settings.split, "folder": str(data.folder) if data.folder else None,
                    "documents": len(data.corpus), "queries": len(data.queries)},
        "settings": {**asdict(settings), "ray": address, "shards": shards},
        "ray": {"cluster": result.cluster, "encoding": asdict(result.encoding), "shards": result.shards},
        "timings": {**timings, "encoding_total_s": timings.get("encode_s"), "total_s": round(time.perf_counter() - started, 2),
                    "search_ms_per_query": round(1000 * timings.get("search_s", 0) / max(1, len(data.queries)), 2)},
        "device": device_description(),
        "versions": versions(),
        "published": published_scores(settings.model, data.name, settings.kind, settings.split, settings.mode,
                                      settings.index),
    }
    output.mkdir(parents=True, exist_ok=True)
    write_trec_run(run, output / "run.trec", f"{Path(settings.model).name}-ray")
    atomic_write_json(output / "metrics.json", record)
    return record


def ray_encoder(retriever: Any, address: str, device: str, dtype: str) -> Any:
    """``mret index --ray``: a pool of Ray actors that encode the index's chunks with the index's own head (model,
    kind, chunk length, pool factor), used in place of the head in this process (``IndexSettings.encode``)."""
    from retrieval.distributed import HeadSpec, RayEncoder, connect

    from .console import err

    cluster = connect(address)
    head = retriever.model  # loaded here too: the chunks are cut with its tokenizer
    spec = HeadSpec(retriever.model_name, head.kind, head.document_length, device=device, dtype=dtype,
                    pool_factor=getattr(head, "pool_factor", 1))
    encoder = RayEncoder(spec, address=address)
    err.print(f"{cluster.describe()}: encoding on {encoder.workers} worker(s)", highlight=False, soft_wrap=True)
    return encoder
