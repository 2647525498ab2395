"""Crash safety of the index folders (indexes/base.py's commit protocol), with real processes:

* a writer killed with SIGKILL at random moments (and at chosen hooks: while writing a file, inside the SQLite
  transaction before COMMIT, right after COMMIT, during garbage collection), many times over the same index, leaves
  exactly the state of its last commit, which opens, verifies, searches, and accepts a new writer;
* damaged folders (truncated, altered, missing files; a garbage database; not an index) raise IndexCorruptError;
* one writer at a time: a second writer gets IndexBusyError while readers keep reading the last commit.

The writer is tests/indexes/index_writer_child.py (a chain's writers are forked by one child that has done their
imports); its plan is a pure function of (seed, step, ids present), so the parent replays it to know the state the
child had logged last and the state of the one operation it may have committed without logging it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from support import single_torch_thread

import indexes
from indexes import DocumentStore, FaissIndex, IndexBusyError, IndexCorruptError, IndexInputError, PlaidIndex, lexical

ROOT = Path(__file__).resolve().parents[2]
CHILD_PATH = Path(__file__).with_name("index_writer_child.py")
_spec = importlib.util.spec_from_file_location("index_writer_child", CHILD_PATH)
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)  # type: ignore[union-attr]

DIM = child.DIM
CLASSES = {"faiss": FaissIndex, "plaid": PlaidIndex}
EVERYTHING = dict(n_ivf_probe=10_000, centroid_score_threshold=-2.0, n_candidates=10_000, n_full_scores=10_000)
# the child imports the very `indexes` package this process imported
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(indexes.__file__).resolve().parents[1]),
                                                    os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The parent searches PLAID indexes of a few hundred 16-d tokens, a few milliseconds of work per call: on two
    torch threads each call waits for the second thread to be scheduled (tens of ms on a busy machine)."""
    yield from single_torch_thread()


def create(kind: str, path: Path):
    return FaissIndex.create(path, dim=DIM, kind="flat") if kind == "faiss" else PlaidIndex.create(path, dim=DIM, nbits=2)


def spawn(args: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD_PATH), json.dumps(args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)


class Writers:
    """The chains' writers, forked by one zygote child (index_writer_child.py, mode "zygote") that has imported what
    they import: a dozen PLAID writers pay torch's import once, not a dozen times. Each writer is still a process
    of its own, killed by its pid, whose exit code comes back as a spawned one's would."""

    def __init__(self, kind: str, folder: Path):
        self.folder, self.runs = folder, 0
        with open(folder / "zygote.err", "w") as stderr:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, str(CHILD_PATH),
                                          json.dumps({"mode": "zygote", "kind": kind})],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                         cwd=ROOT, env=ENV)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # end of file: the zygote is gone

    def line(self) -> str:
        try:
            line = self.lines.get(timeout=120)
        except queue.Empty:
            raise AssertionError("no word from the writer in 120 s") from None
        assert line, f"the zygote died: {(self.folder / 'zygote.err').read_text()[-3000:]}"
        return line

    def start(self, args: dict) -> Writer:
        self.runs += 1
        stderr = self.folder / f"writer{self.runs}.err"
        self.proc.stdin.write(json.dumps({"args": args, "stderr": str(stderr)}) + "\n")
        self.proc.stdin.flush()
        first = self.line()
        assert first.startswith("pid "), first
        return Writer(self, int(first.split()[1]), stderr)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a writer that hangs keeps it waiting
            self.proc.kill()
            raise


class Writer:
    """One forked writer: ``readline`` (its lines, "" once it is gone), ``kill``, ``wait`` -> (exit code, stderr)."""

    def __init__(self, writers: Writers, pid: int, stderr: Path):
        self.writers, self.pid, self.stderr, self.returncode = writers, pid, stderr, None

    def readline(self) -> str:
        if self.returncode is not None:
            return ""
        line = self.writers.line()
        if line.startswith(f"exit {self.pid} "):
            self.returncode = int(line.split()[2])
            return ""
        return line

    def kill(self) -> None:
        try:  # the pid stays this writer's until the zygote forks again, which only ``start`` asks for
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:  # gone already (its exit line is on its way)
            pass

    def wait(self) -> tuple[int, str]:
        try:
            while self.readline():
                pass
        except AssertionError:
            self.kill()
            raise
        return self.returncode, self.stderr.read_text()


def read_log(log: Path) -> list[dict]:
    """Complete lines only: a line cut by the kill describes an operation that had returned (it counts as 'next')."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().split("\n")[:-1]]


def referenced_files(path: Path, generation: int) -> set[str]:
    """What the garbage collector must keep: files of the current segments and shared files, and files retired by
    the current generation (readers of the previous one may still read them)."""
    db = sqlite3.connect(path / "store.sqlite")
    try:
        names = {entry[0] for (files,) in db.execute("SELECT files FROM segments")
                 for entry in json.loads(files).values()}
        shared = json.loads(db.execute("SELECT value FROM meta WHERE key = 'shared_files'").fetchone()[0])
        names |= {entry[0] for entry in shared.values()}
        names |= {n for (n,) in db.execute("SELECT name FROM retired WHERE generation >= ?", (generation,))}
    finally:
        db.close()
    return names


def search_own(ix, kind: str, seed: int, doc_ids: list[str], k: int) -> list[list[tuple[str, float]]]:
    queries = [child.vectors_of(kind, seed, d) for d in doc_ids]
    if kind == "faiss":
        return ix.search(np.stack(queries), k=k)
    return ix.search(queries, k=k, **EVERYTHING)


def check_contents(ix, kind: str, seed: int, present: set[str], absent: set[str], rng) -> None:
    """The index holds exactly ``present``: store, rows, exhaustive search; own vectors find their document first;
    ``absent`` ids (removed, or added by a commit that never happened) are never returned."""
    assert set(ix.store.ids()) == present and len(ix.store) == len(present)
    assert len(ix) == len(present) and all(d in ix for d in present)
    assert not any(d in ix for d in absent)
    if present:
        k = len(present) + 5
        if kind == "faiss":
            everything = ix.search(rng.standard_normal((2, DIM)), k=k)
        else:
            everything = ix.search([rng.standard_normal((6, DIM)) for _ in range(2)], k=k, **EVERYTHING)
        for hits in everything:
            assert {d for d, _ in hits} == present and len(hits) == len(present)
        sample = sorted(rng.choice(sorted(present), min(15, len(present)), replace=False))
        for doc_id, hits in zip(sample, search_own(ix, kind, seed, sample, 3)):
            if kind == "faiss":
                assert hits[0][0] == doc_id and hits[0][1] > 0.999, (doc_id, hits)
            else:
                assert hits[0][0] == doc_id or dict(hits).get(doc_id, -1) >= hits[0][1] - 1e-4, (doc_id, hits)
    if absent:
        sample = sorted(rng.choice(sorted(absent), min(15, len(absent)), replace=False))
        for doc_id, hits in zip(sample, search_own(ix, kind, seed, sample, 10)):
            assert doc_id not in {d for d, _ in hits}
    # the lexical side is at the same commit: one row per present document, each found by its own term
    with ix.store.read_transaction() as db:
        assert lexical.check(db) is None
        assert {r[0] for r in db.execute("SELECT doc_id FROM lexical_ids")} == present
    for doc_id in sorted(present)[:10] + sorted(absent)[:10]:
        found = [d for d, _ in ix.store.lexical_search(doc_id.replace("-", "x"), 5)]
        assert (found[:1] == [doc_id]) if doc_id in present else (doc_id not in found), (doc_id, found)


def new_writer_collects_garbage(kind: str, path: Path) -> int:
    """A new writer gets the lock at once (the kernel released the killed writer's) and its first transaction
    deletes every file the committed state does not reference. Returns how many orphans there were."""
    writer = CLASSES[kind].open(path, lock_timeout=2.0)
    generation = writer.generation
    orphans = set(os.listdir(path / "files")) - referenced_files(path, generation)
    with writer.transaction():  # IndexBusyError here: the dead writer's lock was not released
        pass
    # (the transaction commits nothing, unless the dead writer had committed an add that left more than
    # MAX_SEGMENTS segments without merging them: then it merges, after collecting)
    assert writer.generation in (generation, generation + 1)
    assert set(os.listdir(path / "files")) == referenced_files(path, generation)
    writer.verify()
    writer.close()
    return len(orphans)


# ----- 1. killed writers
# T: SIGKILL from the parent after a random delay (seeded); W/S/C/G n: the child SIGKILLs itself at its n-th file write
# (leaving a torn file) / inside its n-th SQLite commit before COMMIT / right after its n-th COMMIT / after the n-th
# file deleted by garbage collection. The run before a G keeps its orphans (no collection by the parent) for G to find.
CHAINS = {
    "faiss-flat": ("faiss", False, 101, "T W1 G1 T S1 T T C2 T T T"),
    "faiss-flat-compact": ("faiss", True, 202, "T T S2 T W3 G1 T C1 T T T"),
    "plaid-compact": ("plaid", True, 303, "T W2 G1 T T C1 T S1 T T T"),
}
HOOKS = {"W": "write", "S": "sqlite", "C": "committed", "G": "gc"}
MAX_DELAY = 0.6  # seconds after the child is ready: tens of operations for FAISS, about ten for PLAID


@pytest.mark.parametrize("chain", list(CHAINS))
def test_killed_writer_leaves_last_commit(tmp_path, chain, request):
    kind, compact, seed, schedule = CHAINS[chain]
    specs = schedule.split()
    delays = iter(np.random.default_rng(seed).uniform(0.0, MAX_DELAY, len(specs)))
    rng = np.random.default_rng(seed + 1)
    path, marker = tmp_path / "index", tmp_path / "phase"
    create(kind, path).close()
    present: set[str] = set()
    seen: set[str] = set()  # every id that was or might have been committed
    last_step = -1  # the last step whose operation is in the index
    outcomes, phases, orphan_runs = Counter(), Counter(), 0
    writers = Writers(kind, tmp_path)
    request.addfinalizer(writers.close)
    for run, spec in enumerate(specs + ["end"]):
        marker.write_bytes(bytes(64))
        log = tmp_path / f"run{run}.log"
        args = dict(mode="run", kind=kind, seed=seed, path=str(path), start=last_step + 1, compact=compact,
                    log=str(log), marker=str(marker), lock_timeout=5.0,
                    steps=3 if spec == "end" else 400 if spec == "T" else 60,
                    die=None if spec in ("T", "end") else [HOOKS[spec[0]], int(spec[1:])])
        proc = writers.start(args)
        ready = proc.readline()
        if spec == "T" and ready == "ready\n":
            time.sleep(next(delays))
            proc.kill()
        returncode, err = proc.wait()
        expected_rc = 0 if spec == "end" else -signal.SIGKILL
        assert returncode == expected_rc, f"run {run} ({spec}): exit {returncode}\n{err}"
        phase = child.PHASES[marker.read_bytes()[0]]
        if spec not in ("T", "end"):
            assert phase == HOOKS[spec[0]]
        phases[phase] += spec != "end"

        # what the child logged, and the one operation after it that may have committed unlogged
        records = read_log(log)
        assert records and records[0].get("opened"), f"run {run}: nothing logged\n{err}"
        assert records[0]["step"] == last_step and set(records[0]["ids"]) == present
        for before, record in zip(records, records[1:]):  # the child believed what the plan says
            op = child.operation(kind, seed, record["step"], set(before["ids"]), compact)
            assert record["step"] == before["step"] + 1
            assert set(record["ids"]) == child.apply(op, set(before["ids"]))
            assert record["generation"] >= before["generation"]
        last = records[-1]
        logged = set(last["ids"])
        upcoming = child.apply(child.operation(kind, seed, last["step"] + 1, logged, compact), logged)
        seen |= logged | upcoming

        ix = CLASSES[kind].open(path)
        ix.verify()
        actual = set(ix.store.ids())
        if ix.generation == last["generation"]:
            outcome = "last"
            assert actual == logged, f"run {run}: the index differs from the last logged commit"
        else:
            outcome = "next"  # committed (an add may also have merged and re-clustered) but not logged
            assert last["generation"] < ix.generation <= last["generation"] + 3
            assert actual == upcoming, f"run {run}: the index is neither the last logged commit nor the next"
        if spec == "end":
            assert outcome == "last" and len(records) == 4
        outcomes[outcome] += spec != "end"
        check_contents(ix, kind, seed, actual, seen - actual, rng)
        actual_generation = ix.generation
        ix.close()
        present = actual
        last_step = last["step"] + (outcome == "next")

        if run + 1 < len(specs) and specs[run + 1].startswith("G"):
            # the torn file (and any other orphans) stay for the next writer, which dies collecting them (the run
            # after it checks that the collection was finished)
            assert set(os.listdir(path / "files")) - referenced_files(path, actual_generation)
            orphan_runs += 1
        else:
            orphan_runs += new_writer_collects_garbage(kind, path) > 0

    kills = len(specs)
    print(f"\n{chain}: {kills} kills ({specs.count('T')} timed), phases {dict(phases)}, outcomes {dict(outcomes)}, "
          f"{orphan_runs} times orphan files collected, {len(present)} documents at the end")
    assert set(phases) >= {"write", "sqlite", "committed", "gc"}
    assert outcomes["last"] and outcomes["next"] and orphan_runs


# ----- 2. damaged folders
def build(kind: str, path: Path) -> dict[str, list[str]]:
    """A small index with two segments and a removal; returns the ids per step."""
    ix = create(kind, path)
    batches = {}
    for step in (0, 1):
        ids, vectors = child.batch(kind, 7, step)
        ix.add(ids, vectors)
        batches[step] = ids
    ix.remove(batches[0][:2])
    ix.verify()
    ix.close()
    return batches


@pytest.fixture(scope="module", params=["faiss", "plaid"])
def built(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "index"
    build(request.param, path)
    return request.param, path


def damaged_copies(built, tmp_path):
    """(kind, copy of the index, name of one of its files) for every file in files/."""
    kind, path = built
    names = sorted(os.listdir(path / "files"))
    assert len(names) >= (4 if kind == "faiss" else 15)
    for i, name in enumerate(names):
        copy = tmp_path / f"copy{i}"
        shutil.copytree(path, copy)
        yield kind, copy, name


def test_truncated_file_is_corrupt_on_open(built, tmp_path):
    for kind, copy, name in damaged_copies(built, tmp_path):
        target = copy / "files" / name
        os.truncate(target, target.stat().st_size // 2)
        with pytest.raises(IndexCorruptError, match=name):
            CLASSES[kind].open(copy)


def test_missing_file_is_corrupt_on_open(built, tmp_path):
    for kind, copy, name in damaged_copies(built, tmp_path):
        (copy / "files" / name).unlink()
        with pytest.raises(IndexCorruptError, match=f"{name}.*missing"):
            CLASSES[kind].open(copy)


def test_altered_bytes_fail_verify(built, tmp_path):
    """One bit flipped, size unchanged: verify() reports the file (or, for an offset, PLAID's checks at open do)."""
    for kind, copy, name in damaged_copies(built, tmp_path):
        target = copy / "files" / name
        data = bytearray(target.read_bytes())
        if name.endswith(".npy"):  # the lowest bit of the first element: a value still in range (row 0 <-> 1, ...)
            position = _npy_data_offset(target)
        else:  # a faiss file: the middle lies in the stored vectors
            position = len(data) // 2
        data[position] ^= 1
        target.write_bytes(bytes(data))
        try:
            ix = CLASSES[kind].open(copy)
        except IndexCorruptError as error:  # PLAID's consistency checks at open caught it already
            assert name in str(error) and kind == "plaid"
            continue
        with pytest.raises(IndexCorruptError, match=f"{name}.*checksum"):
            ix.verify()
        ix.close()
    kind, path = built  # and the undamaged original verifies
    CLASSES[kind].open(path).verify()


def _npy_data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


@pytest.mark.parametrize("garbage", ["random bytes", "half a database", "empty file", "a store without the index"])
def test_garbage_database_is_corrupt_on_open(built, tmp_path, garbage):
    kind, path = built
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    database = copy / "store.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    if garbage == "random bytes":
        database.write_bytes(np.random.default_rng(0).bytes(database.stat().st_size))
    elif garbage == "half a database":
        _checkpointed(path, database)
        os.truncate(database, database.stat().st_size // 2)
    elif garbage == "empty file":
        database.write_bytes(b"")
    else:
        database.unlink()
        DocumentStore(database).close()  # a valid document store, without the index's tables
    with pytest.raises(IndexCorruptError, match="store.sqlite"):
        CLASSES[kind].open(copy)


def _checkpointed(original: Path, database: Path) -> None:
    """Copy of the original database with the WAL folded in (the copy's WAL was deleted)."""
    source = sqlite3.connect(original / "store.sqlite")
    target = sqlite3.connect(database)
    source.backup(target)
    source.close()
    target.execute("PRAGMA journal_mode=DELETE")
    target.close()


@pytest.mark.parametrize("suffix", ["-rows.npy", "-codes.npy", "-ivf_docs.npy"])
def test_altered_ids_out_of_range_are_not_a_numpy_crash(built, tmp_path, suffix):
    """files.py promises IndexCorruptError for an altered file, 'never a failure deep inside numpy or faiss':
    an id pushed out of range keeps the file's size, so only the checks at open can catch it."""
    kind, path = built
    if kind == "faiss" and suffix != "-rows.npy":
        pytest.skip("PLAID arrays only")
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    target = next(p for p in sorted((copy / "files").iterdir()) if p.name.endswith(suffix))
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x40  # the high byte of the last id: far out of range, same size
    target.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError):
        query = np.ones((1, DIM), np.float32) if kind == "faiss" else [np.ones((3, DIM), np.float32)]
        CLASSES[kind].open(copy).search(query, k=5)


def test_not_an_index_is_a_clear_error(built, tmp_path):
    kind, path = built
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexCorruptError, match="not an index folder"):
        CLASSES[kind].open(tmp_path / "empty")
    with pytest.raises(IndexInputError, match="does not exist"):
        CLASSES[kind].open(tmp_path / "nothing here")
    (tmp_path / "a file").write_text("x")
    with pytest.raises(IndexInputError):
        CLASSES[kind].open(tmp_path / "a file")
    other = PlaidIndex if kind == "faiss" else FaissIndex
    with pytest.raises(IndexCorruptError, match=f"is a '{kind}' index"):
        other.open(path)


# ----- 3. one writer at a time
@pytest.mark.parametrize("kind", ["faiss", "plaid"])
def test_second_writer_is_busy_while_readers_read(tmp_path, kind):
    seed, path = 5, tmp_path / "index"
    first, vectors = child.batch(kind, seed, 0)
    ix = create(kind, path)
    ix.add(first, vectors)
    reader = CLASSES[kind].open(path)
    held, _ = child.batch(kind, seed, 1)
    later, later_vectors = child.batch(kind, seed, 2)
    proc = spawn(dict(mode="hold", kind=kind, seed=seed, path=str(path), start=1))
    try:
        assert proc.stdout.readline() == "holding\n", proc.stderr.read()
        writer = CLASSES[kind].open(path, lock_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(IndexBusyError, match="another process"):
            writer.add(later, later_vectors)
        assert 0.5 <= time.monotonic() - started < 5
        with pytest.raises(IndexBusyError):
            writer.remove(first[:1])
        # readers see the last commit, not the holder's pending segment (its files are already in files/)
        assert {d for d, _ in search_own(reader, kind, seed, first[:3], 1)[0]} <= {first[0]}
        assert search_own(reader, kind, seed, first[:3], 1)[0][0][0] == first[0]
        assert all(not set(held) & {d for d, _ in hits} for hits in search_own(reader, kind, seed, held, 5))
        assert len(reader) == len(first) and set(reader.store.ids()) == set(first)
        assert len(writer) == len(first)  # the refused add left nothing behind
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "committed\n"
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    # the reader's next search sees the commit
    hits = search_own(reader, kind, seed, held, 1)
    assert [h[0][0] for h in hits] == held
    assert len(reader) == len(first) + len(held)
    # the lock is free again: the refused writer now succeeds, and the reader sees that too
    writer.add(later, later_vectors)
    assert [h[0][0] for h in search_own(reader, kind, seed, later, 1)] == later
    assert set(reader.store.ids()) == set(first) | set(held) | set(later)
    reader.verify()
