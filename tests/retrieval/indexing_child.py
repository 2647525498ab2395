"""The indexing child that the kill tests (test_retriever.py, test_rebuild.py) SIGKILL:

    python tests/retrieval/indexing_child.py '{"root": ..., "index_dir": ..., "model": ..., "max_length": ...,
                                               "batch_tokens": ..., "max_file_bytes": ..., "sleep": ...,
                                               "rebuild": false}'

It prints one line ("encode N") before each batch it encodes, then sleeps ``sleep`` seconds, so that the parent can
kill it at chosen points of a run (between commits, while encoding, while committing).
"""

from __future__ import annotations

import json
import sys


def _child(args: dict) -> None:
    import time

    from retrieval.codebase.retriever import Retriever

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
        summary = retriever.index(rebuild=args.get("rebuild", False))
    print(f"done {summary.files} {summary.chunks}", flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
