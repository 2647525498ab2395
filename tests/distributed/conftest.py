"""One local Ray cluster for the whole test session (2 CPUs, loopback only, no dashboard), started by the first test
that asks for it; the tests of ``indexes.sharded`` run without Ray."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install -e ".[distributed]"')
    import ray

    from retrieval.distributed import connect, shutdown

    ray.data.DataContext.get_current().enable_progress_bars = False
    cluster = connect("local", num_cpus=2)
    yield cluster
    shutdown()

