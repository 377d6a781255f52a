"""The image/CTF commands end to end: files in, files out, figures as JSON."""

import json
import shutil

import numpy as np
import pytest

from cryoprism.cli.main import main
from cryoprism.ctf import CTFParams, ctf_2d
from cryoprism.fourier import fft2c, ifft2c, radial_power_spectrum, radius_grid
from cryoprism.io import read_mrc, read_star, write_mrc


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _cosines(L, waves, n=None):
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    img = sum(a * np.cos(2 * np.pi * (ky * yy + kx * xx) / L + p) for a, (ky, kx), p in waves)
    return img if n is None else np.stack([img * (i + 1) for i in range(n)])


def test_downsample_stack_and_volume(tmp_path, capsys):
    waves = [(1.0, (3, -2), 0.4), (0.5, (0, 6), 1.0), (1.5, (0, 0), 0.0)]
    write_mrc(tmp_path / "in.mrcs", _cosines(40, waves, n=3).astype(np.float32), 2.0, is_stack=True)
    rc, out, err = _run(capsys, "downsample", tmp_path / "in.mrcs", tmp_path / "out.mrcs", "--box", 20,
                        "--json")
    assert rc == 0, err
    fig = json.loads(out)
    assert fig["pixel_size_out_A"] == pytest.approx(4.0) and fig["n_images"] == 3 and fig["box_out"] == 20
    y, px = read_mrc(tmp_path / "out.mrcs")
    assert px == pytest.approx(4.0) and y.shape == (3, 20, 20)
    assert np.allclose(y, _cosines(20, waves, n=3), atol=1e-4)
    # a cubic volume
    zz, yy, xx = np.meshgrid(*[np.arange(24) - 12] * 3, indexing="ij")
    v = np.cos(2 * np.pi * (2 * xx + 3 * zz) / 24).astype(np.float32)
    write_mrc(tmp_path / "v.mrc", v, 1.5)
    rc, out, err = _run(capsys, "downsample", tmp_path / "v.mrc", tmp_path / "v12.mrc", "--box", 12)
    assert rc == 0, err
    w, pxv = read_mrc(tmp_path / "v12.mrc")
    z2, y2, x2 = np.meshgrid(*[np.arange(12) - 6] * 3, indexing="ij")
    assert np.allclose(w, np.cos(2 * np.pi * (2 * x2 + 3 * z2) / 12), atol=1e-5) and pxv == pytest.approx(3.0)
    rc, _, err = _run(capsys, "downsample", tmp_path / "v.mrc", tmp_path / "big.mrc", "--box", 30)
    assert rc == 2 and "larger" in err and not (tmp_path / "big.mrc").exists()


def test_filter_and_normalize(tmp_path, capsys):
    L = 64
    x = _cosines(L, [(1.0, (0, 8), 0.0)], n=2).astype(np.float32)  # k = 8 → 64·2/8 = 16 Å at 2 Å/px
    write_mrc(tmp_path / "c.mrcs", x, 0.0, is_stack=True)  # unknown pixel size in the header
    rc, _, err = _run(capsys, "filter", tmp_path / "c.mrcs", tmp_path / "f.mrcs", "--lowpass", 16)
    assert rc == 2 and "pixel size" in err
    rc, out, err = _run(capsys, "filter", tmp_path / "c.mrcs", tmp_path / "f.mrcs", "--lowpass", 16,
                        "--pixel-size", 2.0, "--json")
    assert rc == 0, err
    y, _ = read_mrc(tmp_path / "f.mrcs")
    assert np.allclose(np.abs(y).max(axis=(1, 2)), [0.5, 1.0], atol=1e-5)  # half amplitude at the cutoff
    rng = np.random.default_rng(0)
    z = rng.normal(3.0, 2.0, size=(4, L, L)).astype(np.float32)
    write_mrc(tmp_path / "z.mrcs", z, 1.0, is_stack=True)
    rc, _, err = _run(capsys, "normalize", tmp_path / "z.mrcs", tmp_path / "zn.mrcs", "--radius", 20)
    assert rc == 0, err
    zn, _ = read_mrc(tmp_path / "zn.mrcs")
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    bg = np.hypot(xx, yy) > 20
    assert np.allclose(zn[:, bg].mean(axis=1), 0, atol=1e-5)
    assert np.allclose(zn[:, bg].std(axis=1), 1, atol=1e-4)


def test_whiten_flattens_coloured_noise(tmp_path, capsys):
    L, n = 48, 200
    rng = np.random.default_rng(1)
    h = 1.0 / (1.0 + (radius_grid((L, L)) / 0.1) ** 2) + 0.05
    x = ifft2c(fft2c(rng.standard_normal((n, L, L))) * h).real.astype(np.float32)
    write_mrc(tmp_path / "n.mrcs", x, 1.0, is_stack=True)
    rc, out, err = _run(capsys, "whiten", tmp_path / "n.mrcs", tmp_path / "w.mrcs", "--radius", 15, "--json",
                        "--batch-size", 64)
    assert rc == 0, err
    w, _ = read_mrc(tmp_path / "w.mrcs")
    _, ps = radial_power_spectrum(w, average=True)
    assert ps[2:].max() / ps[2:].min() < 1.4 and abs(ps[2:].mean() - 1) < 0.1
    assert len(json.loads(out)["noise_power_spectrum"]) > L // 2


def test_phase_flip_star_twice_is_identity(tmp_path, capsys, data_dir):
    src = data_dir / "particles" / "relion31"
    rc, out, err = _run(capsys, "phase-flip", src / "relion31.star", tmp_path / "pf.star", "--json")
    assert rc == 0, err
    star = read_star(tmp_path / "pf.star")
    assert star.particles["rlnImageName"].str.endswith("pf.mrcs").all()
    assert "rlnDefocusU" in star.particles.columns
    rc, out, err = _run(capsys, "phase-flip", tmp_path / "pf.star", tmp_path / "pf2.star")
    assert rc == 0, err
    orig, _ = read_mrc(src / "relion31.mrcs")
    twice, _ = read_mrc(tmp_path / "pf2.mrcs")
    Fa, Fb = fft2c(orig)[:, 1:, 1:], fft2c(twice)[:, 1:, 1:]  # Nyquist row/column excluded (even box)
    assert np.abs(Fa - Fb).max() < 1e-4 * np.abs(Fa).max()
    # an MRC stack needs the CTF as options; the result flips the phases of exactly the CTF's sign
    stack = tmp_path / "s.mrcs"
    shutil.copy(src / "relion31.mrcs", stack)
    rc, _, err = _run(capsys, "phase-flip", stack, tmp_path / "x.mrcs", "--pixel-size", 2.806)
    assert rc == 2 and "--defocus-u" in err


def _micrograph(N, px, p, snr, seed):
    """Smooth random texture × CTF (numpy FFTs) + white noise."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(N, d=px)
    s = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    tex = np.fft.fft2(rng.standard_normal((N, N))) / np.sqrt(1 + (s / 0.02) ** 2)
    img = np.fft.ifft2(tex * np.fft.ifftshift(ctf_2d(N, px, p))).real
    return (img / img.std() + rng.standard_normal((N, N)) / np.sqrt(snr)).astype(np.float32)


def test_ctf_estimate_cli(tmp_path, capsys):
    p = CTFParams(14000.0, 12500.0, 25.0, 300.0, 2.7, 0.1, bfactor_A2=60.0)
    write_mrc(tmp_path / "mic.mrc", _micrograph(1024, 1.1, p, 0.4, seed=2), 1.1)
    rc, out, err = _run(capsys, "ctf-estimate", tmp_path / "mic.mrc", "--json", "--plot",
                        tmp_path / "fit.png")
    assert rc == 0, err
    fig = json.loads(out)
    assert abs(fig["defocus_u_A"] / 14000 - 1) < 0.02 and abs(fig["defocus_v_A"] / 12500 - 1) < 0.02
    assert (tmp_path / "fit.png").stat().st_size > 1000
    rc, _, err = _run(capsys, "ctf-estimate", tmp_path / "missing.mrc")
    assert rc == 2 and err.count("\n") == 1
