"""``cryoprism micrograph-em`` end to end on a tiny simulated micrograph (outputs, resume, CTF STAR)."""

import csv
import json

import numpy as np
import pytest

from cryoprism.cli.main import main
from cryoprism.ctf.model import CTFParams
from cryoprism.io.mrc import read_mrc, write_mrc
from cryoprism.micrograph.sbasis import evaluate_volume, fit_volume, grid_points, make_basis
from cryoprism.micrograph.simulate import simulate_micrograph

L = 9
PX = 8.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mem")
    p = grid_points(L)
    vol = sum(a * np.exp(-np.sum((p - c) ** 2, 1) / (2 * 1.3**2)) for a, c in
              [(1.0, (1.5, 0, 0)), (0.8, (-1, 1.5, 0.5)), (0.6, (0, -1.5, -1.5))]).reshape(L, L, L)
    b = make_basis(L, 3)
    c = fit_volume(b, vol)
    ctf = CTFParams(defocus_u_A=15000.0, defocus_v_A=14500.0, defocus_angle_deg=10.0)
    sim = simulate_micrograph(b, c, (216, 216), 60, snr=2.0, rng=1, ctf=ctf, pixel_size_A=PX)
    write_mrc(d / "mic.mrc", sim.micrograph, PX)
    write_mrc(d / "truth.mrc", evaluate_volume(b, c).astype(np.float32), PX)
    from scipy.ndimage import gaussian_filter

    write_mrc(d / "init.mrc", gaussian_filter(vol, 1.2).astype(np.float32), PX)
    (d / "ctf.star").write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnVoltage #2\n_rlnSphericalAberration #3\n"
        "_rlnAmplitudeContrast #4\n_rlnMicrographPixelSize #5\n1 300.0 2.7 0.1 8.0\n\n"
        "data_micrographs\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\n_rlnDefocusU #3\n"
        "_rlnDefocusV #4\n_rlnDefocusAngle #5\nMicrographs/mic.mrc 1 15000.0 14500.0 10.0\n")
    return d


def test_cli_writes_outputs_and_resumes(files, tmp_path, capsys):
    d = files
    out = tmp_path / "run"
    args = ["micrograph-em", str(d / "mic.mrc"), "-o", str(out), "--particle-box", str(L), "--init",
            str(d / "init.mrc"), "--ctf-star", str(d / "ctf.star"), "--truth", str(d / "truth.mrc"),
            "--ell-max", "3", "--rotations", "40", "--iterations", "1,2", "--batch-fraction", "1", "--json"]
    assert main(args) == 0
    fig = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    vol, vs = read_mrc(out / "volume.mrc")
    assert vol.shape == (L, L, L) and abs(vs - PX) < 1e-3
    assert fig["filter_margin_px"] > 0 and fig["n_iterations"] == 3
    rows = list(csv.DictReader(open(out / "iterations.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert abs(float(rows[-1]["bandlimit_A"]) - PX / 0.5) < 1e-6
    assert (out / "fsc_per_iteration.png").stat().st_size > 1000
    fsc_rows = list(csv.reader(open(out / "fsc_per_iteration.csv")))
    assert len(fsc_rows) == 1 + 4  # header + initial + 3 iterations
    # the FSC with the truth improves on the (blurred) initial volume
    first = np.array(fsc_rows[1][1:], float)
    last = np.array(fsc_rows[-1][1:], float)
    assert last[1:].mean() > first[1:].mean()
    # resume of a finished run does no more iterations and keeps the table
    (out / "volume.mrc").unlink()
    assert main(args + ["--resume"]) == 0
    capsys.readouterr()
    assert (out / "volume.mrc").exists()
    assert len(list(csv.DictReader(open(out / "iterations.csv")))) == 3
    # resuming with other settings is refused with a one-line error
    assert main(args[:-1] + ["--rotations", "41", "--resume"]) == 2


def test_cli_resume_after_interruption(files, tmp_path, capsys, monkeypatch):
    import cryoprism.micrograph.em as em

    d = files
    out = tmp_path / "run2"
    args = ["micrograph-em", str(d / "mic.mrc"), "-o", str(out), "--particle-box", str(L), "--ell-max", "3",
            "--rotations", "30", "--iterations", "3", "--batch-fraction", "0.5", "--no-whiten",
            "--init", str(d / "init.mrc")]
    real = em.solve_normal_equations
    calls = {"n": 0}

    def flaky(H, r, ridge=1e-6):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(H, r, ridge)

    monkeypatch.setattr(em, "solve_normal_equations", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):  # crash during iteration 2
        main(args)
    assert len(list(csv.DictReader(open(out / "iterations.csv")))) == 1
    monkeypatch.setattr(em, "solve_normal_equations", real)
    assert main(args + ["--resume"]) == 0
    rows = list(csv.DictReader(open(out / "iterations.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]


def test_cli_bad_input(tmp_path, capsys):
    img = tmp_path / "small.mrc"
    write_mrc(img, np.zeros((12, 12), np.float32), 1.0)
    assert main(["micrograph-em", str(img), "-o", str(tmp_path / "o"), "--particle-box", "9"]) == 2
    assert "smaller than two particle boxes" in capsys.readouterr().err
