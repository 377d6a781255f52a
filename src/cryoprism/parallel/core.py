"""Map-reduce over particle batches: the one place that decides where work runs.

* local threads (default) — numpy/FFT/NUFFT release the GIL, so threads scale on one machine;
* local processes (``processes=True``) — a ``dask.distributed.LocalCluster`` for GIL-bound code;
* a cluster — pass ``scheduler="tcp://host:8786"`` or set it in :mod:`cryoprism.parallel.config`; any
  ``dask.distributed`` scheduler works (SLURM through dask-jobqueue, see docs/scaling.md).

Results are reduced in batch order whatever order they finish in, so the answer does not depend on
the number of workers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from cryoprism.parallel.config import default_workers, progress_bar, settings


def batch_ranges(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in batches of at most ``batch_size``."""
    batch_size = max(1, int(batch_size))
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The dask scheduler address to use: the argument, else the ``scheduler`` setting, else None."""
    return scheduler or settings().scheduler or None


def map_batches(func: Callable[[Any], Any], items: Sequence[Any], *, scheduler: str | None = None,
                processes: bool = False, n_workers: int | None = None, desc: str | None = None,
                progress: bool = True) -> list:
    """``[func(item) for item in items]``, run in parallel, results in item order."""
    out: list = [None] * len(items)

    def collect(i, r):
        out[i] = r
        return None

    _run(func, items, collect, scheduler=scheduler, processes=processes, n_workers=n_workers,
         desc=desc, progress=progress)
    return out


def map_reduce(func: Callable[[Any], Any], items: Sequence[Any],
               reduce: Callable[[Any, Any], Any] | None = None, initial: Any = None, *,
               scheduler: str | None = None, processes: bool = False, n_workers: int | None = None,
               desc: str | None = None, progress: bool = True):
    """Reduce ``func(item)`` over ``items`` in item order (``reduce`` defaults to ``+``).

    Only finished-but-not-yet-reducible results are held in memory, so a sum of back-projections
    over a million particles holds a few partial volumes, never all of them.
    """
    if reduce is None:
        reduce = lambda a, b: a + b  # noqa: E731
    state = {"acc": initial, "next": 0, "pending": {}, "have": initial is not None}

    def collect(i, r):
        state["pending"][i] = r
        while state["next"] in state["pending"]:
            v = state["pending"].pop(state["next"])
            state["acc"] = reduce(state["acc"], v) if state["have"] else v
            state["have"] = True
            state["next"] += 1

    _run(func, items, collect, scheduler=scheduler, processes=processes, n_workers=n_workers,
         desc=desc, progress=progress)
    return state["acc"]


def _run(func, items, collect, *, scheduler, processes, n_workers, desc, progress):
    items = list(items)
    n = len(items)
    bar = progress_bar(total=n, desc=desc or "batches", progress=progress and n > 1, leave=False)
    addr = scheduler_address(scheduler)
    try:
        if addr or processes:
            _run_distributed(func, items, collect, addr, n_workers, bar)
            return
        workers = min(n_workers or default_workers(), max(n, 1))
        if workers <= 1 or n <= 1:
            for i, it in enumerate(items):
                collect(i, func(it))
                bar.update()
            return
        with ThreadPoolExecutor(max_workers=workers) as ex:
            # bounded submission keeps at most 2×workers results in flight
            futs = {}
            it = iter(enumerate(items))
            for i, x in it:
                futs[ex.submit(func, x)] = i
                if len(futs) >= 2 * workers:
                    break
            from concurrent.futures import FIRST_COMPLETED, wait
            while futs:
                done, _ = wait(futs, return_when=FIRST_COMPLETED)
                for f in done:
                    i = futs.pop(f)
                    collect(i, f.result())
                    bar.update()
                    nxt = next(it, None)
                    if nxt is not None:
                        futs[ex.submit(func, nxt[1])] = nxt[0]
    finally:
        bar.close()


def _run_distributed(func, items, collect, addr, n_workers, bar):
    from distributed import Client, LocalCluster, as_completed

    if addr:
        client, cluster = Client(addr), None
    else:
        cluster = LocalCluster(n_workers=n_workers or default_workers(), threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futs = client.map(func, items, pure=False)
        index = {f.key: i for i, f in enumerate(futs)}
        for f in as_completed(futs):
            collect(index[f.key], f.result())
            bar.update()
            f.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
