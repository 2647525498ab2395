"""The client side of a running server, standard library only (``mret search`` imports it before anything heavy):
the server file, the fast search through a running server, starting a background one, stopping it.

A server (``mret serve``, or the background one that ``mret search --keep-warm`` leaves) writes ``server.json`` in
its index folder: pid, address, port and a random token, readable by the owner only (0600). The background server
requires the token on every route but /health (``--private``): anyone who can read the server file may use it, other
local users may not; a server started by hand answers whoever reaches it, unless it has an API key. Finding a server is
one small file read and one ``kill(pid, 0)``; a stale file (a killed server) costs one refused connection at most,
after which ``mret search`` does the work itself, as it always did.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..codebase.location import find_index_dir

SERVER_FILE = "server.json"
STARTING_FILE = "server.starting"  # a background server being started: no second one meanwhile
STARTING_LOCK = "server.starting.lock"  # held while one process decides to start one (and marks it)
STARTING_GRACE_S = 120.0
DEFAULT_IDLE_S = 900.0


@dataclass
class ServerInfo:
    pid: int
    host: str  # where to connect (loopback when the server listens on every address)
    port: int
    token: str


@dataclass
class RemoteHit:
    """A search result from a server, as ``Hit`` (retriever.py) prints it."""

    path: str
    start_line: int
    end_line: int
    score: float
    snippet: str
    snippet_line: int
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "start_line": self.start_line, "end_line": self.end_line,
                "score": round(self.score, 6), "snippet": self.snippet}


def json_score(score: float | None) -> float | None:
    """A score as JSON carries it: null unless a finite number. json.dumps would write NaN or Infinity (a model whose
    vectors overflowed), which is not JSON and which strict parsers refuse; `mret search --json` and the HTTP API's
    /search both write such a score as null."""
    return score if score is not None and math.isfinite(score) else None


def write_server_file(index_dir: Path, info: ServerInfo) -> None:
    """Atomically, owner-only: the token in it is a key to the server."""
    temporary = Path(index_dir) / f".{SERVER_FILE}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(asdict(info), file)
    os.replace(temporary, Path(index_dir) / SERVER_FILE)
    (Path(index_dir) / STARTING_FILE).unlink(missing_ok=True)


def remove_server_file(index_dir: Path, pid: int) -> None:
    """Remove the server file if it is still this process's (another server may have replaced it)."""
    info = read_server(index_dir, check_alive=False)
    if info is not None and info.pid == pid:
        (Path(index_dir) / SERVER_FILE).unlink(missing_ok=True)


def read_server(index_dir: Path, check_alive: bool = True) -> ServerInfo | None:
    """The server recorded for ``index_dir``, if its process is alive."""
    try:
        info = ServerInfo(**json.loads((Path(index_dir) / SERVER_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if check_alive:
        try:
            os.kill(info.pid, 0)
        except (ProcessLookupError, PermissionError, OverflowError):
            return None
    return info


CONNECT_TIMEOUT_S = 1.5  # the fast path: a loopback server that does not accept at once is not worth waiting for
SEARCH_TIMEOUT_S = 10.0  # ... nor one that accepted and does not answer (stuck): the local search runs instead


def call(info: ServerInfo, method: str, path: str, body: Any = None, timeout: float = 60.0,
         connect_timeout: float | None = None) -> tuple[int, Any]:
    """(status, decoded JSON) of one request to the server; OSError when it cannot be reached, or when it does not
    connect within ``connect_timeout`` (default ``timeout``) or answer within ``timeout`` (socket.timeout)."""
    connection = http.client.HTTPConnection(info.host, info.port, timeout=timeout)
    try:
        if connect_timeout is not None:
            connection.timeout = connect_timeout
            connection.connect()
            connection.sock.settimeout(timeout)
        headers = {"Authorization": f"Bearer {info.token}", "Content-Type": "application/json"}
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, None
    except http.client.HTTPException as error:
        raise OSError(str(error)) from None
    finally:
        connection.close()


def warm_search(index_dir: Path | None, query: str, k: int, path_glob: list[str] | None, file_type: list[str] | None,
                mode: str | None = None) -> list[RemoteHit] | None:
    """The results of a running server for this index, or None (no server, or it could not answer: the caller
    searches itself, and reports any error as it always has)."""
    folder = index_dir or find_index_dir()
    info = read_server(folder) if folder is not None else None
    if info is None:
        return None
    body: dict[str, Any] = {"query": query, "k": k}
    for key, value in (("path_glob", path_glob), ("type", file_type), ("mode", mode)):
        if value:
            body[key] = value
    try:
        status, answer = call(info, "POST", "/search", body, timeout=SEARCH_TIMEOUT_S,
                              connect_timeout=CONNECT_TIMEOUT_S)
    except OSError:
        return None
    if status != 200 or not isinstance(answer, dict):
        return None
    try:  # a null score (not a finite number, json_score) is NaN again: printed as a local search prints it
        return [RemoteHit(r["path"], r["start_line"], r["end_line"], math.nan if r["score"] is None else r["score"],
                          r["snippet"], r.get("snippet_line", r["start_line"])) for r in answer["results"]]
    except (KeyError, TypeError):  # not a tree's server (a document collection's): search locally
        return None


def start_background(index_dir: Path, idle_seconds: float = DEFAULT_IDLE_S) -> bool:
    """Start a background server for ``index_dir`` unless one runs or is starting; it exits after ``idle_seconds``
    without a search. Returns whether one was started."""
    index_dir = Path(index_dir).resolve()
    if read_server(index_dir) is not None or not _claim_start(index_dir):
        return False
    try:
        log = open(index_dir / "server.log", "ab")
    except OSError:  # the index folder cannot be written: the search was answered anyway
        return False
    subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--index-dir", str(index_dir), "--port", "0",
                      "--idle-exit", str(idle_seconds), "--private"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                     start_new_session=True, close_fds=True)
    log.close()
    return True


def _claim_start(index_dir: Path) -> bool:
    """Whether this process is the one to start the background server, marking the start (``server.starting``) if
    so. Decided under an exclusive lock: checking a stale marker's age, then replacing it, is not atomic otherwise,
    and two processes that both found it stale would both start a server (the second deleting the marker the first
    had just made). Of several at once, one holds the lock and decides; the others start nothing."""
    import fcntl  # (POSIX, as the rest of this module: kill(pid, 0), a new session for the server)

    starting = index_dir / STARTING_FILE
    try:
        lock = os.open(index_dir / STARTING_LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:  # a read-only index folder: the search was answered anyway
        return False
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by another: it is deciding (released on close)
        try:
            if time.time() - starting.stat().st_mtime < STARTING_GRACE_S:
                return False  # one is being started
        except FileNotFoundError:
            pass
        if read_server(index_dir) is not None:  # after the marker: a server writes its file, then removes the marker
            return False
        starting.unlink(missing_ok=True)  # stale: a start that failed or was killed
        os.close(os.open(starting, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return True
    except OSError:  # the lock is held, or the folder cannot be written
        return False
    finally:
        os.close(lock)


def stop(index_dir: Path, timeout: float = 10.0) -> bool:
    """Ask the server of ``index_dir`` to exit (through /shutdown and its token, never a signal to a pid that may
    have been reused); True once it has. False when none runs."""
    info = read_server(index_dir)
    if info is None:
        return False
    try:
        call(info, "POST", "/shutdown", timeout=timeout)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the server removes its file as it exits
        current = read_server(index_dir)
        if current is None or current.pid != info.pid:
            return True
        time.sleep(0.05)
    return False
