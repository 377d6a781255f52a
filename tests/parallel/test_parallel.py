"""cryoprism.parallel: the same answer in-process, on threads and on a dask cluster of 2 processes."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from cryoprism.parallel import batch_ranges, map_batches, map_reduce


def _partial_sum(rng_range):
    """A deterministic per-batch computation whose float sum depends on the reduction order."""
    a, b = rng_range
    x = np.sin(np.arange(a, b, dtype=np.float64) * 0.37) * 1e8 + np.arange(a, b) * 1e-8
    return np.array([x.sum(), (x * x).sum()])


def _die_once(args):
    """Kills its worker process the first time it runs on batch 3 (a marker file remembers)."""
    rng_range, marker = args
    if rng_range[0] == 3 * 10 and not os.path.exists(marker):
        Path(marker).write_text("killed")
        os._exit(1)
    return _partial_sum(rng_range)


def test_batch_ranges_cover_exactly():
    r = batch_ranges(103, 10)
    assert r[0] == (0, 10) and r[-1] == (100, 103) and len(r) == 11
    assert sum(b - a for a, b in r) == 103


def test_threads_equal_plain_loop_bitwise():
    items = batch_ranges(10_000, 97)
    plain = None
    for it in items:
        v = _partial_sum(it)
        plain = v if plain is None else plain + v
    threaded = map_reduce(_partial_sum, items, n_workers=2, progress=False)
    assert np.array_equal(plain, threaded)  # ordered reduction → bitwise identical
    assert [tuple(v) for v in map_batches(_partial_sum, items, n_workers=2, progress=False)] == \
        [tuple(_partial_sum(it)) for it in items]


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cl = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None)
    yield cl
    cl.close()


def test_cluster_equals_in_process(cluster):
    items = batch_ranges(5_000, 250)
    local = map_reduce(_partial_sum, items, n_workers=1, progress=False)
    remote = map_reduce(_partial_sum, items, scheduler=cluster.scheduler_address, progress=False)
    assert np.array_equal(local, remote)


def test_settings_scheduler_is_used(cluster):
    from cryoprism.parallel.config import configure, reset

    configure(scheduler=cluster.scheduler_address)
    try:
        pids = map_batches(lambda _: os.getpid(), list(range(8)), progress=False)
    finally:
        reset()
    assert os.getpid() not in pids  # ran in the cluster's worker processes


def test_killed_worker_is_retried(cluster, tmp_path):
    marker = str(tmp_path / "killed")
    items = [(r, marker) for r in batch_ranges(200, 10)]
    expected = map_reduce(_partial_sum, [r for r, _ in items], n_workers=1, progress=False)
    got = map_reduce(_die_once, items, scheduler=cluster.scheduler_address, progress=False)
    assert os.path.exists(marker), "the worker was not killed: the test did not test a retry"
    assert np.array_equal(expected, got)
