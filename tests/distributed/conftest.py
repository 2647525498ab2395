"""One local Ray cluster for this folder's tests (2 CPUs, loopback only, no dashboard), started by the first test that
asks for it and shut down after the folder's last test: the rest of the suite runs without Ray's threads in the
process. The tests of ``indexes.sharded`` run without Ray."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def ray_cluster():
    pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install -e ".[distributed]"')
    import ray

    from retrieval.distributed import connect, shutdown

    ray.data.DataContext.get_current().enable_progress_bars = False
    cluster = connect("local", num_cpus=2)
    yield cluster
    shutdown()

