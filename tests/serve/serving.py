"""What the serve tests share besides fixtures: real servers on ephemeral loopback ports, in a thread of the test
process (the model loaded once) or in a child process (where a test kills it or talks to it over stdio)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


class Live:
    """A Server running in a thread; ``client`` talks to it."""

    def __init__(self, server) -> None:
        self.server = server
        self.url = server.url
        self.thread = threading.Thread(target=server.run, daemon=True)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 60, **kwargs})


@contextmanager
def live_server(service, **options) -> Iterator[Live]:
    from retrieval.serve.runner import Server

    live = Live(Server(service, "127.0.0.1", 0, **options))
    live.thread.start()
    while not live.server.uvicorn.started:
        assert live.thread.is_alive(), "the server stopped before it started"
        time.sleep(0.02)
    try:
        yield live
    finally:
        live.server.stop()
        live.thread.join(timeout=30)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def spawn_server(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--port", "0", *args], cwd=ROOT,
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_server_file(folder: Path, process: subprocess.Popen, timeout: float = 120) -> dict:
    """The server file a child server writes once it listens (its pid, port and token)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = folder / "server.json"
        if path.exists():
            info = json.loads(path.read_text())
            if info["pid"] == process.pid:
                return info
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stderr.read().decode()}")
        time.sleep(0.05)
    raise AssertionError("the server did not start")
