"""Guinier B-factor, B-factor application, MSE/PSNR/SSIM against analytic or independent values."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryoprism.metrics import apply_bfactor, guinier_bfactor, mse, psnr, ssim

HB = Path(__file__).parents[1] / "data" / "maps" / "emd_3488_hemoglobin.mrc"


@pytest.fixture(scope="module")
def hb():
    with mrcfile.open(HB, permissive=True) as m:
        return m.data.astype(np.float64), float(m.voxel_size.x)


def _ft(x):
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x)))


def test_apply_bfactor_matches_gaussian_envelope(rng):
    L, px, B = 32, 1.5, 80.0
    x = rng.standard_normal((L, L, L))
    y = apply_bfactor(x, px, B)
    k = np.meshgrid(*[np.arange(L) - L // 2] * 3, indexing="ij")
    s2 = sum(g.astype(float) ** 2 for g in k) / (L * px) ** 2
    ratio = _ft(y) / _ft(x)
    assert np.allclose(ratio, np.exp(-B * s2 / 4), atol=1e-10)
    assert np.allclose(apply_bfactor(y, px, -B), x, atol=1e-8)  # sharpening undoes blurring


def test_guinier_recovers_applied_bfactor(hb):
    v, px = hb
    b0 = guinier_bfactor(v, px, d_low_A=10.0, d_high_A=4.0).bfactor_A2
    for B in (50.0, 150.0):
        b1 = guinier_bfactor(apply_bfactor(v, px, B), px, d_low_A=10.0, d_high_A=4.0).bfactor_A2
        assert abs((b1 - b0) - B) < 0.03 * B


def test_guinier_of_gaussian_blob():
    # a Gaussian exp(−r²/2a²) has |F| ∝ exp(−2π² a² s²) ⇒ B = 8π² a²
    L, px, a = 64, 1.0, 1.5
    g = np.meshgrid(*[np.arange(L) - L // 2] * 3, indexing="ij")
    blob = np.exp(-sum(c.astype(float) ** 2 for c in g) / (2 * a ** 2))
    fit = guinier_bfactor(blob, px, d_low_A=20.0, d_high_A=4.0)
    assert fit.bfactor_A2 == pytest.approx(8 * np.pi ** 2 * a ** 2, rel=0.03)


def test_mse_psnr(rng):
    ref = rng.uniform(0, 1, (5, 16, 16))
    noise = 0.1 * rng.standard_normal((5, 16, 16))
    x = ref + noise
    assert np.allclose(mse(x, ref, ndim=2), (noise ** 2).mean(axis=(1, 2)))
    assert np.isclose(mse(x, ref), (noise ** 2).mean())
    p = psnr(x, ref, data_range=1.0, ndim=2)
    assert np.allclose(p, -10 * np.log10((noise ** 2).mean(axis=(1, 2))))


def _ssim_direct(x, y, sigma, D, k1=0.01, k2=0.03):
    """Brute-force SSIM at every interior pixel with an explicit 2-D Gaussian window."""
    r = int(3.5 * sigma + 0.5)
    t = np.arange(-r, r + 1)
    w = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma ** 2))
    w /= w.sum()
    c1, c2 = (k1 * D) ** 2, (k2 * D) ** 2
    vals = []
    for i in range(r, x.shape[0] - r):
        for j in range(r, x.shape[1] - r):
            px = x[i - r:i + r + 1, j - r:j + r + 1]
            py = y[i - r:i + r + 1, j - r:j + r + 1]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return np.mean(vals)


def test_ssim_matches_direct_computation(rng):
    ref = rng.uniform(0, 1, (3, 24, 24))
    x = ref + 0.2 * rng.standard_normal(ref.shape) + 0.05
    got = ssim(x, ref, data_range=1.0)
    assert got.shape == (3,)
    want = [_ssim_direct(x[i], ref[i], 1.5, 1.0) for i in range(3)]
    assert np.allclose(got, want, atol=1e-10)
    assert np.allclose(ssim(ref, ref), 1.0)
    # noisier copies score lower
    assert np.all(ssim(ref + 0.5 * rng.standard_normal(ref.shape), ref, data_range=1.0) < got)
