"""The writer process of tests/indexes/test_index_crash.py (run as a script; imported by the test for the plan).

``python index_writer_child.py '<json>'`` with mode "run": open the index, log the state found, print "ready", then
perform steps ``start .. start + steps - 1`` of a plan that is a pure function of (kind, seed, step, ids present):
add a batch, remove a few ids, or compact. After each operation returns it appends one JSON line (step, generation,
the exact set of ids it believes committed) to the log, in one write, fsynced. The parent SIGKILLs it (or it kills
itself with SIGKILL at a chosen hook: while writing a file, inside the SQLite transaction before COMMIT, right after
COMMIT, during garbage collection) and replays the plan to know what the index may hold.

Mode "hold": take the write lock with ``with ix.transaction():``, add a batch, print "holding", wait for a line on
stdin, then commit and print "committed".

Mode "zygote" (the kill chains, a dozen writers each): import what a writer of that kind imports once (PLAID: torch
and faiss, seconds on two busy cores; FAISS: no torch), then fork one "run" writer per request line on stdin
(``{"args": ..., "stderr": path}``). Each writer is a process of its own, as a spawned one: its own file locks and
SQLite connections, opened after the fork, and the parent SIGKILLs it by its pid. It prints "pid N" and then what a
spawned writer prints; its stderr goes to the file named; once it is gone this process prints "exit N CODE" (CODE as
``Popen.returncode``: -9 for SIGKILL).
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

DIM = 16
PHASES = ("other", "write", "sqlite", "committed", "gc")  # what the child was doing: byte 0 of the marker file


# ----- the plan (shared with the parent, which replays it)
def batch(kind: str, seed: int, step: int) -> tuple[list[str], object]:
    """The ids and embeddings that step ``step`` adds if it is an add (the same whatever the index holds)."""
    rng = np.random.default_rng([seed, step])
    n = 20 if step == 0 else int(rng.integers(3, 11))
    ids = [f"s{step:04d}-{j}" for j in range(n)]
    if kind == "faiss":
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        return ids, x / np.linalg.norm(x, axis=1, keepdims=True)
    docs = []
    for _ in range(n):
        x = rng.standard_normal((int(rng.integers(5, 31)), DIM)).astype(np.float32)
        docs.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return ids, docs


def text_of(doc_id: str) -> str:
    """The document text the child stores with each id: one term no other document has (the lexical side's check)."""
    return f"document {doc_id.replace('-', 'x')} of the kill chain"


def vectors_of(kind: str, seed: int, doc_id: str):
    step, j = doc_id[1:].split("-")
    ids, vectors = batch(kind, seed, int(step))
    return vectors[int(j)]


def operation(kind: str, seed: int, step: int, present: set[str], compact: bool) -> tuple:
    """("add", ids, vectors) | ("remove", ids) | ("compact",): step ``step`` of the plan, given the ids present."""
    rng = np.random.default_rng([seed, step, 1])
    r = rng.random()
    if len(present) >= 15 and compact and r < 0.15:
        return ("compact",)
    if len(present) >= 15 and r < 0.4:
        chosen = rng.choice(sorted(present), int(rng.integers(1, 6)), replace=False)
        return ("remove", sorted(str(i) for i in chosen))
    return ("add", *batch(kind, seed, step))


def apply(op: tuple, present: set[str]) -> set[str]:
    if op[0] == "add":
        return present | set(op[1])
    if op[0] == "remove":
        return present - set(op[1])
    return set(present)


# ----- the process
class Hooks:
    """Records the current phase in a shared (mmap'd) byte, and SIGKILLs this process at the n-th entry into a phase.
    Wraps library functions without changing what they do."""

    def __init__(self, marker: str, die: list | None):
        self.die_phase, self.die_count = (die[0], int(die[1])) if die else (None, 0)
        self.seen = {p: 0 for p in PHASES}
        fd = os.open(marker, os.O_RDWR)
        self.map = mmap.mmap(fd, 64)
        os.close(fd)
        self.in_gc = False

    def phase(self, name: str) -> None:
        self.map[0] = PHASES.index(name)

    def enter(self, name: str) -> bool:
        """Count an entry into ``name``; True when this is the one to die at."""
        self.seen[name] += 1
        return name == self.die_phase and self.seen[name] == self.die_count

    @staticmethod
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        from indexes import base, files
        from indexes.store import DocumentStore

        hooks = self
        write = files._write

        def hooked_write(path, chunks):
            hooks.phase("write")
            if hooks.enter("write"):  # a torn file: half of the first chunk, then death
                data = bytes(chunks[0])
                with open(path, "wb") as f:
                    f.write(data[: max(1, len(data) // 2)])
                hooks.die()
            entry = write(path, chunks)
            hooks.phase("other")
            return entry

        files._write = hooked_write
        transaction = DocumentStore.transaction

        @contextmanager
        def hooked_transaction(store):
            with transaction(store) as db:
                hooks.phase("sqlite")
                yield db
                if hooks.enter("sqlite"):  # every statement of the commit ran; COMMIT did not
                    hooks.die()
            hooks.phase("committed")
            if hooks.enter("committed"):  # committed, not yet logged
                hooks.die()
            hooks.phase("other")

        DocumentStore.transaction = hooked_transaction
        collect = base.VectorIndex._collect_garbage
        unlink = Path.unlink

        def hooked_collect(index):
            hooks.phase("gc")
            hooks.in_gc = True
            try:
                collect(index)
            finally:
                hooks.in_gc = False
            hooks.phase("other")

        def hooked_unlink(path, missing_ok=False):
            unlink(path, missing_ok=missing_ok)
            if hooks.in_gc and hooks.enter("gc"):  # after deleting one file of several
                hooks.die()

        base.VectorIndex._collect_garbage = hooked_collect
        Path.unlink = hooked_unlink


def log_line(fd: int, record: dict) -> None:
    os.write(fd, (json.dumps(record) + "\n").encode())
    os.fsync(fd)


def main(args: dict) -> None:
    import indexes
    from indexes import Document

    kind, seed = args["kind"], args["seed"]
    if args["mode"] == "run":
        Hooks(args["marker"], args.get("die")).install()
    cls = indexes.FaissIndex if kind == "faiss" else indexes.PlaidIndex  # a FAISS writer never imports torch
    ix = cls.open(args["path"], lock_timeout=args.get("lock_timeout", 60.0))
    if args["mode"] == "hold":
        ids, vectors = batch(kind, seed, args["start"])
        with ix.transaction():
            ix.add(ids, vectors)
            print("holding", flush=True)
            sys.stdin.readline()
        print("committed", flush=True)
        return
    fd = os.open(args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    present = set(ix.store.ids())
    start = args["start"]
    log_line(fd, {"step": start - 1, "generation": ix.generation, "ids": sorted(present), "opened": True})
    print("ready", flush=True)
    for step in range(start, start + args["steps"]):
        op = operation(kind, seed, step, present, args["compact"])
        if op[0] == "add":
            ix.add(op[1], op[2], [Document(i, text=text_of(i)) for i in op[1]])
        elif op[0] == "remove":
            ix.remove(op[1])
        else:
            ix.compact()
        present = apply(op, present)
        log_line(fd, {"step": step, "generation": ix.generation, "ids": sorted(present)})


def zygote(kind: str) -> None:
    import indexes

    indexes.PlaidIndex if kind == "plaid" else indexes.FaissIndex  # noqa: B018  (the imports, paid once here)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the writer: never returns into this loop
            code = 1
            try:
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
                print(f"pid {os.getpid()}", flush=True)
                main(request["args"])
                code = 0
            except BaseException:  # noqa: BLE001  (reported as a spawned writer's traceback would be)
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    if arguments["mode"] == "zygote":
        zygote(arguments["kind"])
    else:
        main(arguments)
