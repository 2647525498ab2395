"""Running a server: the loopback/API-key rule, loading before listening, the server file, idle exit, --watch."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..codebase.config import RetrieverError
from .service import Service, TreeService
from .warm import ServerInfo, remove_server_file, write_server_file

log = logging.getLogger("mret.serve")
# How long a thread may keep the GIL while another waits for it (Python's default: 5 ms). A query's encoding hands
# the GIL back at every torch call (tokens, pooling, the traced forward); beside request threads running Python each
# hand-back could cost up to the interval (figures: README, "A warm index for tools", Speed).
SWITCH_INTERVAL_S = 0.0001


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without a key: the index holds the tree's text."""
    if not is_loopback(host) and not api_key:
        raise RetrieverError(f"refusing to listen on {host} without an API key: anyone who can reach it could read "
                             "the index; pass --api-key KEY (or set MRET_API_KEY), or keep the default 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server runs (so that port 0 has its real number for the file)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family, reuse_port=False)
    except OSError as error:
        raise RetrieverError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Server:
    """One uvicorn server for ``service``; ``run()`` blocks until stopped (Ctrl-C, /shutdown, idle, ``stop()``)."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8765, api_key: str | None = None,
                 index_dir: Path | None = None, idle_exit: float | None = None, watch: bool = False,
                 on_ready: Callable[[str], None] | None = None, private: bool = False):
        import uvicorn

        from .app import create_app

        check_bind(host, api_key)
        self.service, self.index_dir, self.idle_exit = service, index_dir, idle_exit
        self.token = secrets.token_urlsafe(24)
        self.asgi, self.app = create_app(service, api_key, self.token, on_shutdown=self.stop, private=private)
        self.socket = bind(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        self.on_ready = on_ready
        self.watcher = None
        if watch:
            if not isinstance(service, TreeService):
                raise RetrieverError("--watch follows a tree; a document collection changes through POST /documents")
            from .watch import TreeWatcher
            self.watcher = TreeWatcher(service)
        config = uvicorn.Config(self.asgi, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                                limit_concurrency=512)
        self.uvicorn = uvicorn.Server(config)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.uvicorn.should_exit = True

    def run(self) -> None:
        previous = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            self._run()
        finally:
            sys.setswitchinterval(previous)

    def _run(self) -> None:
        self.service.warm_up()  # the model and the index, before /health answers
        if self.watcher is not None:
            self.watcher.start()
        threading.Thread(target=self._announce, daemon=True, name="announce").start()
        if self.idle_exit:
            threading.Thread(target=self._exit_when_idle, daemon=True, name="idle-exit").start()
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            if self.index_dir is not None:
                remove_server_file(self.index_dir, os.getpid())
            if self.watcher is not None:
                self.watcher.stop()  # (the service is the caller's to close)

    def _announce(self) -> None:
        """Once uvicorn listens: the server file (for `mret search`), then the ready line."""
        while not self.uvicorn.started and not self.uvicorn.should_exit:
            time.sleep(0.01)
        if self.uvicorn.should_exit:
            return
        if self.index_dir is not None:
            connect = self.host if not self.host.strip("[]") in ("0.0.0.0", "::", "") else "127.0.0.1"
            write_server_file(self.index_dir, ServerInfo(os.getpid(), connect.strip("[]"), self.port, self.token))
        if self.on_ready is not None:
            self.on_ready(self.url)

    def _exit_when_idle(self) -> None:
        counters = self.app.state.counters
        while not self.uvicorn.should_exit:
            time.sleep(min(1.0, self.idle_exit))
            if time.monotonic() - counters.last_request > self.idle_exit:
                log.warning("no search for %.0f s: stopping", self.idle_exit)
                self.stop()
