"""CTF estimation over many micrographs: inputs, micrographs_ctf.star, plots, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoprism.cli.main import main
from cryoprism.ctf import CTFParams, ctf_2d
from cryoprism.io import write_mrc, write_star


def _micrograph(N, px, p: CTFParams, snr, seed):
    """Smooth random texture × CTF (numpy FFTs) + white noise."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(N, d=px)
    s = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    tex = np.fft.fft2(rng.standard_normal((N, N))) / np.sqrt(1 + (s / 0.02) ** 2)
    img = np.fft.ifft2(tex * np.fft.ifftshift(ctf_2d(N, px, p))).real
    return (img / img.std() + rng.standard_normal((N, N)) / np.sqrt(snr) + 5.0).astype(np.float32)


CASES = [(14000.0, 13200.0, 25.0), (31000.0, 30000.0, 120.0)]


@pytest.fixture
def mics(tmp_path):
    d = tmp_path / "mics"
    d.mkdir()
    for i, (u, v, a) in enumerate(CASES):
        p = CTFParams(u, v, a, 300.0, 2.7, 0.1, bfactor_A2=60.0)
        write_mrc(d / f"mic{i}.mrc", _micrograph(1024, 1.1, p, 0.4, seed=i), 1.1)
    return d


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_ctf_estimate_folder_writes_star_and_plots(mics, tmp_path, capsys):
    out = tmp_path / "out"
    rc, so, err = _run(capsys, "ctf-estimate", mics, "-o", out, "--json")
    assert rc == 0, err
    assert json.loads(so)["micrographs"] == 2
    blocks = starfile.read(out / "micrographs_ctf.star", always_dict=True)
    t, o = blocks["micrographs"], blocks["optics"]
    assert list(t.columns[:7]) == ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                                   "rlnCtfAstigmatism", "rlnCtfMaxResolution", "rlnCtfFigureOfMerit"]
    assert o["rlnMicrographPixelSize"].iloc[0] == pytest.approx(1.1, rel=1e-5)
    assert o["rlnVoltage"].iloc[0] == 300.0
    for row, (u, v, a) in zip(t.itertuples(), CASES):
        assert abs(row.rlnDefocusU / u - 1) < 0.02 and abs(row.rlnDefocusV / v - 1) < 0.02
        assert abs((row.rlnDefocusAngle - a + 90) % 180 - 90) < 5.0
        assert (out / row.rlnCtfImage).stat().st_size > 10000
        assert 0 < row.rlnCtfFigureOfMerit <= 1


def test_ctf_estimate_star_input_keeps_rows_and_columns(mics, tmp_path, capsys):
    table = pd.DataFrame({"rlnMicrographName": ["mics/mic1.mrc", "mics/mic0.mrc"], "rlnOpticsGroup": [1, 1],
                          "myColumn": [7, 8]})
    optics = pd.DataFrame({"rlnOpticsGroupName": ["g1"], "rlnOpticsGroup": [1], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnMicrographPixelSize": [1.1]})
    write_star(tmp_path / "in.star", table, optics)
    out = tmp_path / "out"
    rc, so, err = _run(capsys, "ctf-estimate", tmp_path / "in.star", "-o", out, "--res-high", 6.0)
    assert rc == 0, err
    t = starfile.read(out / "micrographs_ctf.star", always_dict=True)["micrographs"]
    assert list(t.columns[:3]) == ["rlnMicrographName", "rlnOpticsGroup", "myColumn"]
    assert list(t["myColumn"]) == [7, 8]
    assert abs(t["rlnDefocusU"].iloc[0] / CASES[1][0] - 1) < 0.02


def test_ctf_estimate_bad_inputs(mics, tmp_path, capsys):
    rc, _, err = _run(capsys, "ctf-estimate", mics / "mic0.mrc", mics / "mic1.mrc")
    assert rc == 2 and err.count("\n") == 1 and "-o" in err
    rc, _, err = _run(capsys, "ctf-estimate", mics / "missing.mrc", "-o", tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
