"""``cryoprism info``: figures of MRC, STAR and .cs files; bad input → one line, exit code 2."""

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryoprism.cli.main import main

DATA = Path(__file__).parents[1] / "data"


def _run(capsys, *args):
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_info_mrc_json(capsys):
    path = DATA / "maps/betagal_100px_3.54A.mrc"
    rc, out, _ = _run(capsys, "info", str(path), "--json")
    assert rc == 0
    fig = json.loads(out)
    with mrcfile.open(path) as m:
        data = np.asarray(m.data, dtype=np.float64)
    assert fig["shape_zyx"] == list(data.shape)
    assert fig["voxel_size_A"] == pytest.approx(3.54, abs=1e-3)
    assert fig["min"] == pytest.approx(data.min()) and fig["max"] == pytest.approx(data.max())
    assert fig["mean"] == pytest.approx(data.mean(), rel=1e-6)
    assert fig["mode"] == 2


def test_info_star_and_cs(capsys):
    rc, out, _ = _run(capsys, "info", str(DATA / "particles/relion31/relion31.star"), "--json")
    assert rc == 0
    fig = json.loads(out)
    assert fig["particles"] == 5 and fig["box"] == 256 and fig["pixel_size_A"] == pytest.approx(2.806)
    assert fig["optics_groups"] == 1 and "rlnDefocusU" in fig["columns"]
    rc, out, _ = _run(capsys, "info", str(DATA / "metadata/cryosparc_P12_J24_001_particles.cs"), "--json")
    fig = json.loads(out)
    assert rc == 0 and fig["particles"] == 2019 and fig["box"] == 180
    assert fig["pixel_size_A"] == pytest.approx(2.95)
    rc, out, _ = _run(capsys, "info", str(DATA / "metadata/relion31.6opticsgroups.star"))
    assert rc == 0 and "optics groups: 6" in out


def test_info_bad_input_one_line_exit_2(capsys, tmp_path):
    bad = tmp_path / "cut.mrc"
    bad.write_bytes((DATA / "maps/betagal_100px_3.54A.mrc").read_bytes()[:5000])
    rc, _, err = _run(capsys, "info", str(bad))
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "truncated" in lines[0] and "cut.mrc" in lines[0]
    rc, _, err = _run(capsys, "info", str(tmp_path / "missing.star"))
    assert rc == 2 and "not found" in err and len(err.strip().splitlines()) == 1
