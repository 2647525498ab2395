"""Joining a Ray cluster, and what it offers: the one place that starts or connects Ray for this package."""

from __future__ import annotations

from dataclasses import dataclass

from modernretrieval.errors import ModernRetrievalError

INSTALL = 'pip install -e ".[distributed]"'


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
    """Join the cluster at ``address`` ("local" or None: start one on this machine, loopback only, without the
    dashboard; ``num_cpus`` caps it). Already joined: the current cluster is kept (``address`` is not checked)."""
    ray = require_ray()
    if not ray.is_initialized():
        options = {"include_dashboard": False, "log_to_driver": False}
        try:
            if address in (None, "local"):  # this machine only: nothing listens beyond loopback
                ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **options)
            else:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise RayUnavailableError(f"cannot join the Ray cluster at {address}: {error}") from None
    resources = ray.cluster_resources()
    return Cluster(str(address or "local"), len([n for n in ray.nodes() if n.get("Alive")]),
                   int(resources.get("CPU", 0)), int(resources.get("GPU", 0)))


def shutdown() -> None:
    """Leave the cluster (a local one stops)."""
    ray = require_ray()
    if ray.is_initialized():
        ray.shutdown()
