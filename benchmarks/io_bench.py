"""I/O benchmark: stream a large particle stack to disk and back through ParticleStack.batches.

For each stack size (default 5 000 and 20 000 images of 128², float32) a fresh child process
(1) writes the STAR + MRCS with ``write_particles`` from a generator of batches, and another one
(2) streams it through ``read_particles(...).batches(1000)``. Each child reports its throughput and
its peak resident memory (VmHWM), so the growth in peak RSS from the small to the large stack shows
whether memory stays flat. For contrast, (3) a plain ``mrcfile.mmap`` pass over the same file, which
keeps every touched page mapped, is measured the same way.

Prints one JSON object. ``--quick`` uses 1 000 and 4 000 images in batches of 250. The read passes
run with the file in the page cache (it was just written), so they measure the reader, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _mem() -> dict:
    return {"rss_MB": _status_kb("VmRSS") / 1024, "peak_rss_MB": _status_kb("VmHWM") / 1024}


def child_write(path: Path, n: int, box: int, batch: int) -> dict:
    import numpy as np
    import pandas as pd

    from cryoprism.io import write_particles

    base = _mem()["rss_MB"]
    table = pd.DataFrame({"rlnImageName": [f"{i}@src.mrcs" for i in range(1, n + 1)],
                          "rlnDefocusU": np.full(n, 15000.0), "rlnDefocusV": np.full(n, 14500.0),
                          "rlnDefocusAngle": np.zeros(n), "rlnAngleRot": np.zeros(n),
                          "rlnAngleTilt": np.zeros(n), "rlnAnglePsi": np.zeros(n),
                          "rlnOriginXAngst": np.zeros(n), "rlnOriginYAngst": np.zeros(n),
                          "rlnOpticsGroup": np.ones(n, dtype=int)})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                           "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [1.5]})
    rng = np.random.default_rng(0)
    gen_s = [0.0]

    def images():
        for a in range(0, n, batch):
            t = time.perf_counter()
            x = rng.standard_normal((min(batch, n - a), box, box), dtype=np.float32)
            gen_s[0] += time.perf_counter() - t
            yield x

    t0 = time.perf_counter()
    write_particles(path / f"p{n}.star", path / f"p{n}.mrcs", images(), table, optics)
    wall = time.perf_counter() - t0
    mb = n * box * box * 4 / 1e6
    io_s = wall - gen_s[0]
    return {"images": n, "MB": mb, "seconds": wall, "random_generation_seconds": gen_s[0],
            "MB_per_s_excluding_generation": mb / io_s, "baseline_rss_MB": base, **_mem()}


def child_read(path: Path, n: int, batch: int) -> dict:
    from cryoprism.io import read_particles

    base = _mem()["rss_MB"]
    t0 = time.perf_counter()
    ps = read_particles(path / f"p{n}.star")
    open_s = time.perf_counter() - t0
    total, count = 0.0, 0
    t0 = time.perf_counter()
    for b in ps.batches(batch):
        total += float(b.images[:, 0, 0].sum())  # touch the batch
        count += len(b)
    wall = time.perf_counter() - t0
    mb = n * ps.box * ps.box * 4 / 1e6
    assert count == n
    return {"images": n, "MB": mb, "open_seconds": open_s, "seconds": wall, "MB_per_s": mb / wall,
            "baseline_rss_MB": base, **_mem()}


def child_mmap(path: Path, n: int, batch: int) -> dict:
    import mrcfile
    import numpy as np

    base = _mem()["rss_MB"]
    t0 = time.perf_counter()
    with mrcfile.mmap(path / f"p{n}.mrcs", mode="r") as m:
        for a in range(0, n, batch):
            x = np.array(m.data[a:a + batch], dtype=np.float32)
            del x
    wall = time.perf_counter() - t0
    mb = n * 128 * 128 * 4 / 1e6
    return {"images": n, "seconds": wall, "MB_per_s": mb / wall, "baseline_rss_MB": base, **_mem()}


def _spawn(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 000 and 4 000 images, batches of 250")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="stack sizes (default 5000 20000)")
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default 1000; 250 quick)")
    ap.add_argument("--workdir", default=None, help="folder for the temporary stacks (default: a temp dir)")
    ap.add_argument("--child", choices=["write", "read", "mmap"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        a.batch = a.batch or 1000
        fn = {"write": lambda: child_write(Path(a.path), a.n, a.box, a.batch),
              "read": lambda: child_read(Path(a.path), a.n, a.batch),
              "mmap": lambda: child_mmap(Path(a.path), a.n, a.batch)}[a.child]
        print(json.dumps(fn()))
        return

    sizes = a.sizes or ([1000, 4000] if a.quick else [5000, 20000])
    a.batch = a.batch or (250 if a.quick else 1000)
    work = Path(tempfile.mkdtemp(prefix="cryoprism_io_bench_", dir=a.workdir))
    res: dict = {"box": a.box, "batch": a.batch, "sizes": sizes, "write": {}, "read": {}, "mrcfile_mmap": {}}
    try:
        for n in sizes:
            common = ["--path", str(work), "--n", str(n), "--box", str(a.box), "--batch", str(a.batch)]
            res["write"][n] = _spawn(["--child", "write", *common])
            res["read"][n] = _spawn(["--child", "read", *common])
            res["mrcfile_mmap"][n] = _spawn(["--child", "mmap", *common])
            for f in work.glob(f"p{n}.*"):
                f.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lo, hi = sizes[0], sizes[-1]
    res["summary"] = {
        "stack_MB": {n: res["write"][n]["MB"] for n in sizes},
        "write_MB_per_s": {n: round(res["write"][n]["MB_per_s_excluding_generation"], 1) for n in sizes},
        "read_MB_per_s": {n: round(res["read"][n]["MB_per_s"], 1) for n in sizes},
        "write_peak_rss_MB": {n: round(res["write"][n]["peak_rss_MB"], 1) for n in sizes},
        "read_peak_rss_MB": {n: round(res["read"][n]["peak_rss_MB"], 1) for n in sizes},
        "read_peak_rss_growth_MB": round(res["read"][hi]["peak_rss_MB"] - res["read"][lo]["peak_rss_MB"], 1),
        "write_peak_rss_growth_MB": round(res["write"][hi]["peak_rss_MB"] - res["write"][lo]["peak_rss_MB"],
                                          1),
        "stack_growth_MB": round(res["write"][hi]["MB"] - res["write"][lo]["MB"], 1),
        "mrcfile_mmap_peak_rss_growth_MB": round(res["mrcfile_mmap"][hi]["peak_rss_MB"]
                                                 - res["mrcfile_mmap"][lo]["peak_rss_MB"], 1),
        "memory_flat": bool(abs(res["read"][hi]["peak_rss_MB"] - res["read"][lo]["peak_rss_MB"]) < 100
                            and abs(res["write"][hi]["peak_rss_MB"] - res["write"][lo]["peak_rss_MB"]) < 100),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
