"""Scaling of cryoprism.parallel: one back-projection job on a plain loop, 1 and 2 dask worker processes.

The job: sum of CTF-weighted back-projections of n particle images read in batches from a memory-mapped
MRCS on disk (the pass every reconstruction makes). Prints one JSON object: times, the speed-up of 2
workers over 1, whether all results are identical, and the overhead of the dask path over a plain loop
at small n.

    python benchmarks/scaling_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import mrcfile
import numpy as np

from cryoprism.forward import backproject
from cryoprism.geometry import euler_to_matrix
from cryoprism.parallel import batch_ranges, map_reduce


def make_stack(path, n, L, seed=0):
    rng = np.random.default_rng(seed)
    with mrcfile.new_mmap(path, shape=(n, L, L), mrc_mode=2, overwrite=True) as m:
        for a, b in batch_ranges(n, 2048):
            m.data[a:b] = rng.standard_normal((b - a, L, L)).astype(np.float32)
    angles = rng.uniform([-180, 0, -180], [180, 180, 180], size=(n, 3))
    return angles


class Job:
    """Picklable per-batch job: open the memory-mapped stack, back-project the batch."""

    def __init__(self, path, angles):
        self.path, self.angles = path, angles

    def __call__(self, rng):
        a, b = rng
        with mrcfile.mmap(self.path, mode="r") as m:
            imgs = np.asarray(m.data[a:b])
        rots = euler_to_matrix(*self.angles[a:b].T)
        # one NUFFT thread per batch: finufft sums in a thread-count-dependent order, and the
        # parallelism comes from the batches, so every layout computes bit-identical partial sums
        return backproject(imgs, rots, nthreads=1).astype(np.float64)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, L, bs = (2000, 48, 250) if args.quick else (8000, 64, 500)
    n_small = 200
    if not os.environ.get("CRYOPRISM_FFT_WORKERS"):  # one FFT thread per worker unless asked otherwise
        from cryoprism.parallel import configure

        configure(fft_workers=1)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "stack.mrcs")
        angles = make_stack(path, n, L)
        job = Job(path, angles)
        items = batch_ranges(n, bs)

        def plain(items):
            acc = None
            for it in items:
                v = job(it)
                acc = v if acc is None else acc + v
            return acc

        ref, t_plain = timed(lambda: plain(items))
        from distributed import Client, LocalCluster

        res = {}
        for w in (1, 2):
            with LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cl, Client(cl):
                out, t = timed(lambda: map_reduce(job, items, scheduler=cl.scheduler_address, progress=False))
                small_items = batch_ranges(n_small, 50)
                small_ref, t_small_plain = timed(lambda: plain(small_items))
                small, t_small = timed(lambda: map_reduce(job, small_items, scheduler=cl.scheduler_address,
                                                          progress=False))
            res[w] = dict(time_s=t, identical=bool(np.array_equal(out, ref)),
                          small_identical=bool(np.array_equal(small, small_ref)),
                          small_time_s=t_small, small_plain_s=t_small_plain)
        thr, t_thr = timed(lambda: map_reduce(job, items, n_workers=2, progress=False))
    print(json.dumps({
        "benchmark": "scaling", "job": "batched back-projection from a memory-mapped MRCS",
        "n": n, "L": L, "batch": bs, "cpus": len(os.sched_getaffinity(0)),
        "plain_loop_s": round(t_plain, 3),
        "dask_1_worker_s": round(res[1]["time_s"], 3), "dask_2_workers_s": round(res[2]["time_s"], 3),
        "speedup_2_over_1": round(res[1]["time_s"] / res[2]["time_s"], 3),
        "threads_2_s": round(t_thr, 3), "threads_2_speedup_over_plain": round(t_plain / t_thr, 3),
        "identical_results": all(r["identical"] and r["small_identical"] for r in res.values())
        and bool(np.array_equal(thr, ref)),
        "small_n": n_small,
        "dask_overhead_ratio_small_n": round(res[1]["small_time_s"] / res[1]["small_plain_s"], 3),
        "dask_overhead_s_small_n": round(res[1]["small_time_s"] - res[1]["small_plain_s"], 3),
    }))


if __name__ == "__main__":
    main()
