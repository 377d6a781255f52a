"""Memory stays bounded on a stack larger than RAM: a sparse 30 GB MRCS streamed in batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import mrcfile
import numpy as np
import pytest

L = 128
N = 460_000  # 460 000 × 128² × 4 B = 30.1 GB


def _make_sparse_stack(d):
    path = d / "huge.mrcs"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((1, L, L), np.float32))
        m.header.nz = N
        m.header.mz = N
        m.voxel_size = 1.5
    size = 1024 + N * L * L * 4
    with open(path, "r+b") as f:
        f.truncate(size)  # a hole: no disk used
    return path, size


def _make_star(d, n_rows, rng):
    idx = np.sort(rng.choice(N, n_rows, replace=False)) + 1
    rows = "\n".join(f"{i}@huge.mrcs 1 15000 14000 30 300 2.7 0.1" for i in idx)
    (d / "huge.star").write_text(textwrap.dedent("""\
        data_optics
        loop_
        _rlnOpticsGroup
        _rlnImagePixelSize
        _rlnImageSize
        _rlnVoltage
        _rlnSphericalAberration
        _rlnAmplitudeContrast
        1 1.5 128 300 2.7 0.1

        data_particles
        loop_
        _rlnImageName
        _rlnOpticsGroup
        _rlnDefocusU
        _rlnDefocusV
        _rlnDefocusAngle
        _rlnVoltage
        _rlnSphericalAberration
        _rlnAmplitudeContrast
        """) + rows + "\n")
    return d / "huge.star"


SCRIPT = """
import json, sys, numpy as np
from cryoprism.io import read_particles
def hwm():
    for ln in open('/proc/self/status'):
        if ln.startswith('VmHWM'):
            return int(ln.split()[1]) / 1024
stack = read_particles(sys.argv[1])
base = hwm()
total = 0.0
count = 0
for b in stack.batches(int(sys.argv[2])):
    total += float(b.images.sum())
    count += len(b.images)
print(json.dumps({"images": count, "sum": total, "peak_MB": hwm(), "baseline_MB": base}))
"""


def _stream(star, batch):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(star), str(batch)], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and sparse files")
def test_sparse_30GB_stack_streams_in_bounded_memory(tmp_path):
    path, size = _make_sparse_stack(tmp_path)
    assert os.path.getsize(path) > 30e9
    star = _make_star(tmp_path, 20_000, np.random.default_rng(0))
    out = _stream(star, 1000)
    assert out["images"] == 20_000 and out["sum"] == 0.0
    # 20 000 images = 1.3 GB touched; a batch is 65 MB: the peak must stay far below the data read
    assert out["peak_MB"] - out["baseline_MB"] < 400, out


@pytest.mark.slow
def test_sparse_30GB_stack_full_pass(tmp_path):
    path, size = _make_sparse_stack(tmp_path)
    lines = ["data_particles", "loop_", "_rlnImageName", "_rlnImagePixelSize"]
    with open(tmp_path / "all.star", "w") as f:
        f.write("\n".join(lines) + "\n")
        for i in range(1, N + 1):
            f.write(f"{i}@huge.mrcs 1.5\n")
    out = _stream(tmp_path / "all.star", 2000)
    assert out["images"] == N
    assert out["peak_MB"] - out["baseline_MB"] < 600, out
