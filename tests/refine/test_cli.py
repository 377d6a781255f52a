"""``cryoprism refine`` end to end on a small simulated set (truth known), and its bad-input paths."""

import numpy as np
import pytest

from cryoprism.cli.main import main
from cryoprism.forward import simulate_particles
from cryoprism.geometry import angular_distance_deg
from cryoprism.io import read_particles, read_star, write_mrc

L, PX = 24, 3.5


def _volume():
    """Adenylate kinase (the shipped model) at 8 Å: compact and without pseudo-symmetry."""
    from importlib.resources import files

    from cryoprism.forward.volumes import volume_from_pdb

    return volume_from_pdb(files("cryoprism.data") / "adk_closed.pdb.gz", L, PX, 8.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("refine")
    vol = _volume()
    sim = simulate_particles(vol, 160, PX, snr=2.0, shift_std_A=1.0 * PX, rng=3, out_star=d / "p.star",
                             out_mrcs=d / "p.mrcs", progress=False)
    write_mrc(d / "ref.mrc", vol, PX)
    return d, sim


def test_refine_cli_recovers_poses_and_keeps_rows(dataset, tmp_path, capsys):
    d, sim = dataset
    out = tmp_path / "out"
    rc = main(["refine", str(d / "p.star"), "--ref", str(d / "ref.mrc"), "-o", str(out), "--iter", "2",
               "--grid", "600", "--initial-lowpass", "15", "--json"])
    assert rc in (0, None)
    for f in ("particles.star", "refined.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "iterations.csv",
              "refine.png", "summary.json", "checkpoints/refine.ckpt.npz"):
        assert (out / f).exists(), f
    src = read_star(d / "p.star").particles
    got = read_star(out / "particles.star").particles
    assert list(got.columns[:len(src.columns)]) == list(src.columns)
    assert list(got["rlnMicrographName"]) == list(src["rlnMicrographName"])
    assert set(got["rlnRandomSubset"]) == {1, 2}
    ps = read_particles(out / "particles.star")  # image paths resolve from OUT
    err = angular_distance_deg(sim.rotations, ps.rotations())
    assert np.median(err) < 8.0
    shift_err = np.hypot(*((ps.origins_A() - sim.origins_A) / PX).T)
    assert np.median(shift_err) < 0.75


def test_refine_resume_continues_after_the_last_iteration(dataset, tmp_path):
    d, _ = dataset
    out = tmp_path / "out"
    args = ["refine", str(d / "p.star"), "--ref", str(d / "ref.mrc"), "-o", str(out), "--grid", "300",
            "--initial-lowpass", "15", "--json"]
    assert main(args + ["--iter", "1"]) in (0, None)
    assert main(args + ["--iter", "2", "--resume"]) in (0, None)
    import pandas as pd

    it = pd.read_csv(out / "iterations.csv")
    assert list(it["iteration"]) == [1, 2]
    from cryoprism.io.checkpoint import load_npz

    assert load_npz(out / "checkpoints" / "refine.ckpt.npz")[1]["iteration"] == 1  # 0-based: the second


def test_refine_refuses_a_reference_of_another_box(dataset, tmp_path, capsys):
    d, _ = dataset
    write_mrc(tmp_path / "small.mrc", np.zeros((8, 8, 8), np.float32), PX)
    rc = main(["refine", str(d / "p.star"), "--ref", str(tmp_path / "small.mrc"), "-o", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "box" in err[0]
    assert not (tmp_path / "o").exists()


def test_refine_resamples_a_reference_of_another_pixel_size_with_a_warning(dataset, tmp_path, capsys):
    d, _ = dataset
    from cryoprism.fourier.resample import downsample
    from cryoprism.io.mrc import read_mrc

    vol, _ = read_mrc(d / "ref.mrc")
    write_mrc(tmp_path / "coarse.mrc", downsample(vol, 12, ndim=3)[0], 2 * PX)  # same extent, 2× the pixel
    out = tmp_path / "o"
    rc = main(["refine", str(d / "p.star"), "--ref", str(tmp_path / "coarse.mrc"), "-o", str(out), "--iter", "1",
               "--grid", "200", "--initial-lowpass", "15", "--json"])
    assert rc in (0, None)
    err = capsys.readouterr().err
    assert "warning" in err and "resampled" in err and "box 12 → 24" in err
    assert (out / "refined.mrc").exists()


def test_refine_refuses_a_reference_whose_pixel_size_cannot_be_resampled(dataset, tmp_path, capsys):
    d, _ = dataset
    write_mrc(tmp_path / "tiny.mrc", np.ones((24, 24, 24), np.float32), 0.5)  # 12 Å across: 3 particle pixels
    rc = main(["refine", str(d / "p.star"), "--ref", str(tmp_path / "tiny.mrc"), "-o", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pixel size" in err[0]
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_refine_without_ctf_columns_warns(dataset, tmp_path, capsys):
    d, _ = dataset
    from cryoprism.io import write_star

    st = read_star(d / "p.star")
    t = st.particles.drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"])
    t["rlnImageName"] = [f"{v.split('@')[0]}@{d / 'p.mrcs'}" for v in t["rlnImageName"]]
    write_star(tmp_path / "noctf.star", t, st.optics)
    rc = main(["refine", str(tmp_path / "noctf.star"), "--ref", str(d / "ref.mrc"), "-o", str(tmp_path / "o"),
               "--iter", "1", "--grid", "200", "--json"])
    assert rc in (0, None)
    assert "without CTF" in capsys.readouterr().err


def test_refine_with_classes_writes_class_maps_and_column(dataset, tmp_path):
    d, _ = dataset
    out = tmp_path / "out"
    rc = main(["refine", str(d / "p.star"), "--ref", str(d / "ref.mrc"), "-o", str(out), "--iter", "1",
               "--grid", "300", "--initial-lowpass", "15", "--classes", "2", "--class-resolution", "12", "--json"])
    assert rc in (0, None)
    assert (out / "class001.mrc").exists() and (out / "class002.mrc").exists()
    got = read_star(out / "particles.star").particles
    assert set(got["rlnClassNumber"]) <= {1, 2}
    assert got["rlnMaxValueProbDistribution"].between(0.5, 1.0).all()
