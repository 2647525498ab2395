"""Joining a Ray cluster, and what it offers: the one place that starts or connects Ray for this package. And the
errors that come back from it: a user's mistake raised inside a Ray task or actor (a ModernRetrievalError: a model
folder that does not load, a shard that does not open) comes out as that error, one line, not as Ray's traceback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from modernretrieval.errors import ModernRetrievalError

INSTALL = 'pip install -e ".[distributed]"'
PROBE_SECONDS = 5.0  # an address that does not answer in this long fails at once (Ray itself retries ~13 minutes)


class RayUnavailableError(ModernRetrievalError):
    """Ray is not installed, or the cluster cannot be reached."""


def require_ray():
    """The ``ray`` module, or one clear error naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise RayUnavailableError(f"--ray needs Ray Data, which is not installed ({error}): {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """What a joined cluster offers (Ray's view of its resources)."""

    address: str
    nodes: int
    cpus: int
    gpus: int

    def describe(self) -> str:
        return f"Ray {self.address}: {self.nodes} node(s), {self.cpus} CPU(s), {self.gpus} GPU(s)"


def connect(address: str | None = "local", num_cpus: int | None = None) -> Cluster:
    """Join the cluster at ``address`` ("local" or None: start a new one on this machine, loopback only, without
    the dashboard, whatever RAY_ADDRESS says or another cluster running here; ``num_cpus`` caps it; "HOST:PORT" or
    "ray://HOST:PORT": that cluster, even where RAY_ADDRESS names another (Ray would take RAY_ADDRESS's); "auto":
    Ray's own lookup, RAY_ADDRESS first). An address (RAY_ADDRESS's for "auto") must answer within
    ``PROBE_SECONDS``, else one line. Already joined: the current cluster is kept (``address`` is not checked)."""
    ray = require_ray()
    if not ray.is_initialized():
        options = {"include_dashboard": False, "log_to_driver": False}
        try:
            if address in (None, "local"):  # this machine only: nothing listens beyond loopback
                ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **options)
            elif address == "auto":
                probe(os.environ.get("RAY_ADDRESS", ""))
                ray.init(address=address, **options)
            else:
                probe(address)
                with _environment("RAY_ADDRESS", address):  # Ray reads RAY_ADDRESS before its argument
                    ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise RayUnavailableError(f"cannot join the Ray cluster at {address}: "
                                      f"{first_line(error)}") from None
    resources = ray.cluster_resources()
    return Cluster(str(address or "local"), len([n for n in ray.nodes() if n.get("Alive")]),
                   int(resources.get("CPU", 0)), int(resources.get("GPU", 0)))


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of "HOST:PORT", "[IPv6]:PORT" or "ray://HOST:PORT"; None for what is no such address ("auto",
    a host without a port: left to Ray)."""
    rest = address.split("://", 1)[1] if address.startswith("ray://") else address
    if "://" in rest:
        return None
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Fail at once, with one line, when nothing answers at ``address``'s host and port: Ray itself keeps trying
    for ~13 minutes (RayUnavailableError)."""
    where = host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as error:  # refused, unknown host, timed out
        raise RayUnavailableError(f"cannot join the Ray cluster at {address}: nothing answers at "
                                  f"{where[0]}:{where[1]} ({error or type(error).__name__}); is `ray start --head` "
                                  "running there, and the port open?") from None


def shutdown() -> None:
    """Leave the cluster (a local one stops)."""
    ray = require_ray()
    if ray.is_initialized():
        ray.shutdown()


def check_cpus(actors: int, cpus_each: float, cluster_cpus: float, what: str = "actor") -> None:
    """Actors that hold CPUs for good cannot all start on a cluster of fewer CPUs: they would wait forever. One line
    instead (SettingsError)."""
    from modernretrieval.errors import SettingsError

    if cpus_each > 0 and actors * cpus_each > cluster_cpus:
        raise SettingsError(f"{actors} {what}s of {cpus_each:g} CPU each need {actors * cpus_each:g} CPUs; the Ray "
                            f"cluster has {cluster_cpus:g}")


def user_error(error: BaseException) -> ModernRetrievalError | None:
    """The ModernRetrievalError inside what Ray raised (a task's or an actor's own error: Ray's ``cause``, or a
    chained exception), or None when it carries none."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ModernRetrievalError) and not type(cause).__module__.startswith("ray."):
            return cause  # Ray's RayTaskError(X) is an X too, but its message is the remote traceback
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors raised in Ray tasks and actors that are the user's (a ModernRetrievalError) come out as that error,
    not as Ray's wrapper; any other stays as it is."""
    try:
        yield
    except Exception as error:
        found = user_error(error)
        if found is None or found is error:
            raise
        raise _without_retry_advice(found).with_traceback(None) from None


def _without_retry_advice(error: ModernRetrievalError) -> ModernRetrievalError:
    """``error`` without the lines Ray Data appends to a map's error ("Failed to apply UDF transform after 1/1
    attempts (total backoff 0.0s).", then how to configure retries): the user's message alone."""
    if error.args and isinstance(error.args[0], str):
        message, marker, advice = error.args[0].partition("\nFailed to ")
        if marker and "attempts (total backoff" in advice:
            error.args = (message, *error.args[1:])
    return error


@contextmanager
def original_map_errors(ray) -> Iterator[None]:
    """Ray Data raises a map's own exception (not "UDF failed", which loses it) while this block runs, unwrapped
    (``user_errors``)."""
    context = ray.data.DataContext.get_current()
    keep = context.raise_original_map_exception
    context.raise_original_map_exception = True
    try:
        with user_errors():
            yield
    finally:
        context.raise_original_map_exception = keep


def first_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message, of the error Ray wraps where it wraps one (Ray appends its
    retry advice and traces below)."""
    cause = error
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__
