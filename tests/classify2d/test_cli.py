"""CLI: classify2d and denoise on a small simulated STAR set (analytic blob projections, with CTF)."""

import numpy as np
import pandas as pd
import pytest

from cryoprism.cli.main import main
from cryoprism.io import read_particles, write_particles

from .test_classify2d import project_blobs, uniform_rotations


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    d = tmp_path_factory.mktemp("c2d")
    rng = np.random.default_rng(5)
    n = 120
    rots = uniform_rotations(n, rng)
    img = project_blobs(rots)
    img = (img + rng.normal(0, img.std(), img.shape)).astype(np.float32)
    table = pd.DataFrame({"rlnDefocusU": 15000.0, "rlnDefocusV": 15000.0, "rlnDefocusAngle": 0.0,
                          "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                          "rlnAmplitudeContrast": 0.1, "rlnImagePixelSize": 4.0,
                          "rlnImageName": [f"{i + 1}@x.mrcs" for i in range(n)]}, index=range(n))
    s, _ = write_particles(d / "p.star", d / "p.mrcs", img, table, pixel_size_A=4.0)
    return s


def test_classify2d_cli_writes_neighbours_and_averages(star, tmp_path):
    out = tmp_path / "out"
    rc = main(["classify2d", str(star), "-o", str(out), "--method", "mfvdm", "--neighbors", "5",
               "--k-max", "3", "--eigs", "10", "--classes", "8", "--radius", "14"])
    assert rc == 0
    t = pd.read_csv(out / "neighbors.csv")
    assert list(t.columns) == ["i", "j", "angle_deg", "reflected", "score"]
    assert len(t) == 120 * 5
    assert t["i"].between(0, 119).all() and t["j"].between(0, 119).all() and (t["i"] != t["j"]).all()
    assert t["angle_deg"].abs().max() <= 180
    assert (out / "gallery.png").stat().st_size > 0
    from cryoprism.io import read_mrc
    avg, px = read_mrc(out / "class_averages.mrcs")
    assert avg.shape == (8, 32, 32) and np.isfinite(avg).all()
    st = read_particles(out / "class_averages.star")  # the averages feed abinitio as a particle file
    assert st.n == 8 and st.box == 32 and np.allclose(st.images(np.arange(8)), avg)


def test_denoise_cli_spca(star, tmp_path):
    out = tmp_path / "den"
    assert main(["denoise", str(star), "-o", str(out), "--method", "spca", "--radius", "14"]) == 0
    st = read_particles(out / "denoised.star")
    assert st.n == 120 and st.box == 32
    x = st.images(np.arange(5))
    assert np.isfinite(x).all() and x.std() > 0


def test_bad_method_is_input_error(star, tmp_path):
    assert main(["classify2d", str(star), "-o", str(tmp_path / "o"), "--method", "kmeans"]) == 2


def test_classify2d_interrupted_after_rid_resumes_with_same_neighbours(star, tmp_path, monkeypatch):
    import cryoprism.classify2d.pipeline as pl

    args = ["classify2d", str(star), "--method", "mfvdm", "--neighbors", "5", "--k-max", "3", "--eigs", "10",
            "--classes", "4", "--radius", "14"]
    ref = tmp_path / "ref"
    assert main(args + ["-o", str(ref)]) == 0
    out = tmp_path / "out"
    real = pl.neighbors

    def interrupt_after_rid(prep, method, *a, **k):
        if method != "rir":
            raise KeyboardInterrupt("hook: stop after the RID stage")
        return real(prep, method, *a, **k)

    monkeypatch.setattr(pl, "neighbors", interrupt_after_rid)
    assert main(args + ["-o", str(out)]) not in (0, 2)   # interrupted
    assert not (out / "neighbors.csv").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["prepare.ckpt.npz", "rid.ckpt.npz"]

    # resuming must not redo the finished stages
    def no_prepare(*a, **k):
        raise AssertionError("prepare re-run on resume")

    def only_mfvdm(prep, method, *a, **k):
        assert method != "rir", "RID re-run on resume"
        return real(prep, method, *a, **k)

    monkeypatch.setattr(pl, "prepare", no_prepare)
    monkeypatch.setattr(pl, "neighbors", only_mfvdm)
    assert main(args + ["-o", str(out), "--resume"]) == 0
    a, b = pd.read_csv(ref / "neighbors.csv"), pd.read_csv(out / "neighbors.csv")
    assert (a[["i", "j", "reflected"]].values == b[["i", "j", "reflected"]].values).all()
    np.testing.assert_allclose(a["angle_deg"], b["angle_deg"], atol=1e-3)


def test_classify2d_resume_with_other_settings_is_input_error(star, tmp_path):
    args = ["classify2d", str(star), "-o", str(tmp_path / "o"), "--method", "rir", "--neighbors", "5",
            "--classes", "4", "--radius", "14"]
    assert main(args) == 0
    assert main(args[:-1] + ["13", "--resume"]) == 2
    assert main(["classify2d", str(star), "-o", str(tmp_path / "new"), "--radius", "14", "--resume"]) == 2


def test_classify2d_centre_checkpoints_and_resumes(star, tmp_path, monkeypatch):
    """--centre runs through the CLI; on --resume the saved centring is reused, not recomputed."""
    import cryoprism.classify2d.pipeline as P

    out = tmp_path / "c"
    args = ["classify2d", str(star), "-o", str(out), "--neighbors", "5", "--k-max", "3", "--eigs", "10",
            "--classes", "4", "--radius", "14", "--centre"]
    assert main(args) == 0
    first = pd.read_csv(out / "neighbors.csv")
    assert (out / "checkpoints" / "centring.ckpt.npz").exists()
    (out / "checkpoints" / "prepare.ckpt.npz").unlink()     # as if interrupted after the centring

    def no_centring(*a, **k):
        raise AssertionError("centring re-run on resume")

    monkeypatch.setattr(P, "centre_shifts", no_centring)
    monkeypatch.setattr(P, "refine_centre_shifts", no_centring)
    monkeypatch.setattr(P, "sync_centre_shifts", no_centring)
    assert main(args + ["--resume"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "neighbors.csv"), first)
    # the translated copies for the translation-tolerant pair search are saved with the prepare stage
    # and restored from it: neighbours redone from that checkpoint are the same
    with np.load(out / "checkpoints" / "prepare.ckpt.npz") as z:
        assert len(z["shift_offsets_px"]) == 12 and "shifted_k0" in z.files
    for stage in ("rid", "neighbors"):
        (out / "checkpoints" / f"{stage}.ckpt.npz").unlink()
    monkeypatch.setattr(P, "shifted_projections", no_centring)
    assert main(args + ["--resume"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "neighbors.csv"), first)
