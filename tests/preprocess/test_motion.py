"""Motion correction: dose weights, the sum, the local model, global alignment, movies and the CLI."""

import json

import numpy as np
import pytest

from cryoprism.cli.main import main
from cryoprism.errors import InputError
from cryoprism.io import write_mrc
from cryoprism.preprocess.motion import (
    LocalMotionModel,
    align_movie,
    dose_filters,
    fit_local_model,
    read_trajectory_star,
    sum_frames,
    trajectory_star,
)
from cryoprism.preprocess.movies import critical_exposure_e_A2, read_movie


def _texture(N, rng, corner=0.05):
    """Smooth random image (numpy FFT, independent of the package)."""
    f = np.fft.fftfreq(N)
    s = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    t = np.fft.ifft2(np.fft.fft2(rng.standard_normal((N, N))) / (1 + (s / corner) ** 2)).real
    return t / t.std()


def _shift(img, dx, dy):
    """Move the content of ``img`` by (+dx, +dy) pixels (Fourier shift, periodic)."""
    ky = np.fft.fftfreq(img.shape[0])[:, None]
    kx = np.fft.fftfreq(img.shape[1])[None, :]
    return np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (kx * dx + ky * dy))).real


def test_critical_exposure_grant_grigorieff():
    s = np.array([0.05, 0.1, 0.25])
    want = 0.245 * s**-1.665 + 2.81
    assert np.allclose(critical_exposure_e_A2(s, 300), want)
    assert np.allclose(critical_exposure_e_A2(s, 200), 0.8 * want)
    assert np.isinf(critical_exposure_e_A2(0.0))
    q = dose_filters(3, s, 2.0, 300.0)
    assert np.allclose(q[1], np.exp(-3.0 / (2 * want)), rtol=1e-6)  # frame 2: mid-frame exposure 3 e/Å²


def test_sum_frames_undoes_known_shifts_and_weights_by_dose():
    rng = np.random.default_rng(0)
    N, n, px, dose = 192, 4, 1.5, 3.0
    img = _texture(N, rng)
    d = np.array([[0.0, 0.0], [3.4, -1.2], [-5.0, 2.7], [7.25, 4.5]])
    frames = np.stack([_shift(img, *di) for di in d]).astype(np.float32)
    disp = lambda x, y: np.broadcast_to(d[:, None, None, :], (n,) + np.shape(x) + (2,))  # noqa: E731
    dw, plain = sum_frames(frames, disp, px, dose, tile_px=64, margin_px=32)
    inner = (slice(24, -24), slice(24, -24))  # away from the borders the shifts pulled in
    rel = lambda a, b: np.sqrt(((a - b) ** 2).mean() / (b**2).mean())  # noqa: E731
    # integer shifts are exact; fractional ones go through a Lanczos-16 kernel (~1 % near Nyquist)
    assert rel(plain[inner], n * img[inner]) < 0.015
    # dose weighting, written independently on the whole frame: √n Σ q_t F / √(Σ q_t²)
    f = np.fft.fftfreq(N, d=px)
    s = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    ne = np.where(s > 0, 0.245 * np.where(s > 0, s, 1) ** -1.665 + 2.81, np.inf)
    q = np.exp(-(np.arange(n) + 0.5)[:, None, None] * dose / (2 * ne[None]))
    F = np.fft.fft2(img)
    want = np.fft.ifft2(np.sqrt(n) * q.sum(0) / np.sqrt((q**2).sum(0)) * F).real
    assert rel(dw[inner], want[inner]) < 0.015
    dw0, plain0 = sum_frames(frames[[0]].repeat(2, 0), lambda x, y: np.zeros((2,) + np.shape(x) + (2,)), px, 0.0,
                             tile_px=64)
    assert np.allclose(plain0, 2 * img, atol=1e-4) and np.allclose(dw0, 2 * img, atol=1e-4)


def test_local_model_fit_recovers_polynomial_and_offsets():
    rng = np.random.default_rng(1)
    H, W, n = 1000, 1200, 12
    truth = LocalMotionModel(rng.normal(0, 1, (2, 3, 6)), 2, (H, W), n)
    cx, cy = np.meshgrid(np.linspace(100, 1100, 4), np.linspace(100, 900, 4))
    c = np.column_stack([cx.ravel(), cy.ravel()])
    t = np.arange(n)
    lx, ly = truth(c[None, :, 0], c[None, :, 1], t[:, None])
    off = rng.normal(0, 3, (len(c), 2))
    resid = np.stack([lx.T, ly.T], axis=-1) + off[:, None, :]
    resid[3, 5] += 40.0  # one outlier
    fit = fit_local_model(c, resid, (H, W))
    assert np.allclose(fit.coef, truth.coef, atol=1e-6)
    assert fit.n_outliers >= 1
    # measurements at fractional times (groups of frames at their mean index)
    tg = np.array([0.5, 2.5, 4.5, 6.5, 8.5, 10.5])
    gx, gy = truth(c[None, :, 0], c[None, :, 1], tg[:, None])
    fit = fit_local_model(c, np.stack([gx.T, gy.T], axis=-1) + off[:, None, :], (H, W), times=tg, n_frames=n)
    assert np.allclose(fit.coef, truth.coef, atol=1e-6) and fit.n_frames == n


def test_global_alignment_recovers_subpixel_shifts():
    rng = np.random.default_rng(2)
    N, n = 256, 8
    img = 20.0 * (1 + 0.2 * _texture(N, rng))
    d = np.cumsum(rng.uniform(-2.5, 2.5, (n, 2)), axis=0)
    d -= d[0]
    frames = np.stack([rng.poisson(np.maximum(_shift(img, *di), 0)) for di in d]).astype(np.float32)
    res = align_movie(frames, 1.0, dose_per_frame_e_A2=20.0, patches=0)
    err = res.shifts_px - d
    err -= err.mean(axis=0)
    assert np.sqrt((err**2).sum(1).mean()) < 0.1
    assert res.local_model is None
    # the RELION trajectory stores the aligning shifts, −d; reading back gives d
    blocks = trajectory_star(res, "m.mrc")
    assert np.allclose(-blocks["global_shift"]["rlnMicrographShiftX"], res.shifts_px[:, 0])


@pytest.mark.slow
def test_simulated_1k_movie_trajectory_within_0_4_px():
    """1024² (3 × 3 patches) has a quarter of the signal of the 2048² benchmark movies (0.16 px there)."""
    from cryoprism.preprocess.movies import simulate_movie

    sim = simulate_movie((1024, 1024), 40, 1.0, 1.0, drift_px=20, local_px=2.0, rng=3)
    res = align_movie(sim.frames, 1.0, dose_per_frame_e_A2=1.0, patches=(3, 3))
    yy, xx = np.mgrid[64:1024:128, 64:1024:128]
    e = res.displacement(xx, yy) - sim.displacement(xx, yy)
    e -= e.reshape(-1, 2).mean(0)
    assert np.sqrt((e**2).sum(-1).mean()) < 0.4


def test_simulate_movie_truth_is_consistent():
    from cryoprism.preprocess.movies import simulate_movie

    sim = simulate_movie((128, 160), 6, 1.0, 1.0, drift_px=12, local_px=2.0, interp_order=1, rng=4)
    assert sim.frames.shape == (6, 128, 160) and sim.frames.dtype == np.uint8
    assert abs(sim.frames.mean() - 1.0) < 0.05  # 1 e/Å² per frame at 1 Å/px
    assert np.allclose(sim.global_px[0], 0) and 10 < np.hypot(*sim.global_px[-1]) < 14
    d = sim.displacement(np.array([0.0, 80.0]), np.array([0.0, 64.0]))
    assert d.shape == (6, 2, 2) and np.allclose(d[0], 0)
    yy, xx = np.mgrid[0:128:8, 0:160:8]
    local = sim.displacement(xx, yy)[-1] - sim.global_px[-1]
    assert abs(np.hypot(local[..., 0], local[..., 1]).max() - 2.0) < 0.2


# ----------------------------------------------------------------------------- reading movies
def test_read_movie_mrc_tiff_gain_defects(tmp_path):
    import tifffile

    rng = np.random.default_rng(5)
    frames = rng.poisson(3.0, (3, 40, 50)).astype(np.float32)
    write_mrc(tmp_path / "m.mrcs", frames, 1.3, is_stack=True)
    gain = rng.uniform(0.5, 1.5, (40, 50)).astype(np.float32)
    write_mrc(tmp_path / "gain.mrc", gain, 1.3)
    (tmp_path / "defects.txt").write_text("# x y w h\n10 5 3 2\n")
    got, px = read_movie(tmp_path / "m.mrcs", tmp_path / "gain.mrc", defects=tmp_path / "defects.txt")
    assert px == pytest.approx(1.3, rel=1e-6)
    want = frames * gain
    bad = np.zeros((40, 50), bool)
    bad[5:7, 10:13] = True
    assert np.allclose(got[:, ~bad], want[:, ~bad], rtol=1e-6)
    assert np.allclose(got[:, bad], want[:, ~bad].mean(axis=1, keepdims=True), rtol=1e-5)
    tifffile.imwrite(tmp_path / "m.tif", frames.astype(np.uint8), photometric="minisblack")
    got, px = read_movie(tmp_path / "m.tif")
    assert px is None and np.array_equal(got, frames)


def test_bad_movies_raise_one_line(tmp_path):
    import tifffile

    with tifffile.TiffWriter(tmp_path / "bad.tif") as w:
        w.write(np.zeros((40, 50), np.uint8))
        w.write(np.zeros((40, 48), np.uint8))
    with pytest.raises(InputError, match="disagree in size"):
        read_movie(tmp_path / "bad.tif")
    write_mrc(tmp_path / "m.mrcs", np.ones((3, 40, 50), np.float32), 1.0, is_stack=True)
    write_mrc(tmp_path / "g.mrc", np.ones((50, 40), np.float32), 1.0)
    with pytest.raises(InputError, match="gain reference"):
        read_movie(tmp_path / "m.mrcs", tmp_path / "g.mrc")
    (tmp_path / "x.eer").write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match="EER"):
        read_movie(tmp_path / "x.eer")


# ----------------------------------------------------------------------------- CLI
def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_motioncorr_cli_outputs_resume_and_bad_input(tmp_path, capsys):
    import starfile

    rng = np.random.default_rng(6)
    N, n = 192, 6
    img = 10.0 * (1 + 0.3 * _texture(N, rng))
    d = np.cumsum(rng.uniform(-2, 2, (n, 2)), axis=0)
    for k in range(2):
        frames = np.stack([rng.poisson(np.maximum(_shift(img, *(di * (k + 1))), 0)) for di in d])
        write_mrc(tmp_path / f"mov{k}.mrcs", frames.astype(np.float32), 1.0, is_stack=True)
    out = tmp_path / "out"
    movies = [tmp_path / "mov0.mrcs", tmp_path / "mov1.mrcs"]
    rc, so, err = _run(capsys, "motioncorr", *movies, "-o", out, "--dose-per-frame", 2.0, "--patches", "0",
                       "--json")
    assert rc == 0, err
    fig = json.loads(so)
    assert fig["corrected"] == 2 and fig["skipped"] == 0
    for k in range(2):
        for name in (f"mov{k}.mrc", f"mov{k}_noDW.mrc", f"mov{k}.star", f"mov{k}_shifts.png"):
            assert (out / name).stat().st_size > 0
    traj = read_trajectory_star(out / "mov1.star")
    err_ = traj - 2 * (d - d[0])
    assert np.abs(err_ - err_.mean(0)).max() < 0.3
    blocks = starfile.read(out / "mov0.star", always_dict=True)
    assert list(blocks["global_shift"].columns) == ["rlnMicrographFrameNumber", "rlnMicrographShiftX",
                                                    "rlnMicrographShiftY"]
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)
    assert list(mics["micrographs"]["rlnMicrographName"]) == ["mov0.mrc", "mov1.mrc"]
    assert mics["optics"]["rlnMicrographPixelSize"].iloc[0] == pytest.approx(1.0)
    rc, so, err = _run(capsys, "motioncorr", *movies, "-o", out, "--dose-per-frame", 2.0, "--patches", "0",
                       "--resume", "--json")
    assert rc == 0, err
    assert json.loads(so)["skipped"] == 2
    # bad input: a gain reference of another shape → one line, exit 2, no output folder
    write_mrc(tmp_path / "gain.mrc", np.ones((N, N + 2), np.float32), 1.0)
    rc, so, err = _run(capsys, "motioncorr", *movies, "-o", tmp_path / "out2", "--gain", tmp_path / "gain.mrc")
    assert rc == 2 and err.count("\n") == 1 and "gain" in err
    assert not (tmp_path / "out2").exists()


def test_motioncorr_cli_frames_of_different_sizes(tmp_path, capsys):
    import tifffile

    with tifffile.TiffWriter(tmp_path / "bad.tif") as w:
        w.write(np.zeros((40, 50), np.uint8))
        w.write(np.zeros((40, 48), np.uint8))
    rc, so, err = _run(capsys, "motioncorr", tmp_path / "bad.tif", "-o", tmp_path / "out", "--pixel-size", 1.0)
    assert rc == 2 and err.count("\n") == 1 and "disagree in size" in err
    assert not (tmp_path / "out").exists()
    tifffile.imwrite(tmp_path / "good.tif", np.ones((4, 40, 50), np.uint8), photometric="minisblack")
    rc, so, err = _run(capsys, "motioncorr", tmp_path / "good.tif", "-o", tmp_path / "out")
    assert rc == 2 and err.count("\n") == 1 and "--pixel-size" in err
    assert not (tmp_path / "out").exists()
