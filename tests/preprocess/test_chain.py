"""The pick CLI and the preprocess chain on small simulated micrographs."""

import json

import numpy as np
import pytest

from cryoprism.io import write_mrc

from . import pick_data
from .pick_data import PX


@pytest.fixture
def sim():
    return pick_data.simulated()



@pytest.fixture
def mic_files(tmp_path, sim):
    paths = []
    for i in range(2):
        p = tmp_path / f"mic{i}.mrc"
        write_mrc(p, -sim.micrographs[i], PX)  # dark particles, as recorded
        paths.append(p)
    return paths


def test_pick_cli_writes_coordinates_and_pngs(tmp_path, mic_files, capsys):
    import starfile

    from cryoprism.cli.main import main

    out = tmp_path / "pk"
    rc = main(["pick", *map(str, mic_files), "-o", str(out), "--diameter", "100", "--no-ctf", "--json"])
    assert rc == 0
    fig = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    t = starfile.read(out / "coordinates.star")
    assert list(t.columns) == ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
    assert len(t) == fig["picks"] > 20
    assert fig["polarity"] == [-1, -1]
    for p in mic_files:
        assert (out / "picks" / f"{p.stem}.png").stat().st_size > 1000


@pytest.mark.slow
def test_preprocess_chain_and_resume(tmp_path, mic_files, capsys):
    from cryoprism.cli.main import main
    from cryoprism.io import read_particles

    out = tmp_path / "pp"
    args = ["preprocess", *map(str, mic_files), "-o", str(out), "--diameter", "100", "--box", "64", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for f in ("micrographs_ctf.star", "coordinates.star", "particles.star", "particles.mrcs"):
        assert (out / f).exists()
    assert len(list((out / "checkpoints").glob("*.ckpt.npz"))) == 2
    ps = read_particles(out / "particles.star")
    assert ps.n == first["particles"] > 20 and ps.box == 64
    assert first["inverted"] is True
    img = ps.images(np.arange(min(ps.n, 20))).mean(0)
    yy, xx = np.mgrid[:64, :64] - 32
    assert img[np.hypot(yy, xx) < 10].mean() > 0  # inverted: particles bright, as RELION expects
    assert main(args + ["--resume"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["resumed"] == 2 and second["particles"] == first["particles"]


def test_movie_without_motion_module_is_one_line_error(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("cryoprism.preprocess.motion") is not None:
        pytest.skip("motion correction is available")
    from cryoprism.cli.main import main

    p = tmp_path / "movie.mrc"
    write_mrc(p, np.zeros((3, 64, 64), np.float32), 1.0, is_stack=True)
    rc = main(["preprocess", str(p), "-o", str(tmp_path / "o"), "--diameter", "50"])
    err = [s for s in capsys.readouterr().err.splitlines() if s.startswith("cryoprism")]  # not tqdm's
    assert rc == 2 and len(err) == 1 and "motion" in err[0]
    assert not (tmp_path / "o" / "particles.star").exists()
