"""CLI: simulate → reconstruct round trip, project from a STAR, bad input exits 2."""

import json

import numpy as np

from cryoprism.cli.main import main
from cryoprism.forward import gaussian_blob_volume
from cryoprism.io import read_mrc, read_particles, write_mrc


def test_simulate_project_reconstruct_cli(tmp_path, capsys):
    vol = gaussian_blob_volume(24, [(3.0, 1.0, 0.0), (-3.0, 2.0, 2.0)], [2.0, 2.5])
    write_mrc(tmp_path / "v.mrc", vol, 2.0)
    assert main(["simulate", str(tmp_path / "v.mrc"), "-o", str(tmp_path / "p.star"), "-n", "400",
                 "--snr", "0", "--shift-std", "2", "--json"]) == 0
    fig = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fig["particles"] == 400 and fig["box"] == 24
    assert main(["reconstruct", str(tmp_path / "p.star"), "-o", str(tmp_path / "m.mrc"), "--json",
                 "--tol", "1e-6"]) == 0
    m, px = read_mrc(tmp_path / "m.mrc")
    assert abs(px - 2.0) < 1e-6
    assert np.corrcoef(m.ravel(), vol.ravel())[0, 1] > 0.999
    # project with the STAR's poses/origins/CTF reproduces the simulated (noiseless) stack
    assert main(["project", str(tmp_path / "v.mrc"), "--star", str(tmp_path / "p.star"),
                 "-o", str(tmp_path / "q.mrcs")]) == 0
    a = read_particles(tmp_path / "p.star").images(np.arange(10))
    b = read_particles(tmp_path / "q.star").images(np.arange(10))
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()


def test_reconstruct_bad_method_exits_2(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "missing.star"), "-o", str(tmp_path / "m.mrc")]) == 2
