"""fourier.resample: radial averages, power spectra, crop/pad, Fourier resampling (analytic truths)."""

import numpy as np
import pytest

from cryoprism.fourier import (
    crop,
    downsample,
    pad,
    power_spectrum,
    radial_average,
    radial_power_spectrum,
    shells_to_grid,
    upsample,
)


def _cosines(L, waves, ndim=2):
    """Σ a cos(2π k·x / L + φ) sampled at x = i − L//2 (array-axis order of k)."""
    grids = np.meshgrid(*[np.arange(L) - L // 2] * ndim, indexing="ij")
    out = np.zeros((L,) * ndim)
    for a, k, phi in waves:
        out += a * np.cos(2 * np.pi * sum(ki * g for ki, g in zip(k, grids)) / L + phi)
    return out


def test_radial_average_of_radius_is_radius():
    L = 32
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    r = np.hypot(xx, yy)
    prof = radial_average(np.stack([r, 2 * r]))  # batched
    assert prof.shape == (2, L // 2 + 1)
    k = np.arange(L // 2 + 1)
    assert np.all(np.abs(prof[0] - k) <= 0.5)  # shells are round(r) == k
    assert np.allclose(prof[0][3:], k[3:], atol=0.15)
    assert np.isclose(prof[0][1], (4 * 1 + 4 * np.sqrt(2)) / 8)  # r = 1 (4 pixels) and √2 (4 pixels)
    assert np.allclose(prof[1], 2 * prof[0])
    # 3-D, and back to a grid
    z, y, x = np.meshgrid(*[np.arange(16) - 8] * 3, indexing="ij")
    f = np.exp(-(x**2 + y**2 + z**2) / 20.0)
    p = radial_average(f, ndim=3)
    assert abs(p[0] - 1) < 1e-12 and abs(p[3] - np.exp(-9 / 20)) < 0.03
    g = shells_to_grid(np.arange(9.0), (16, 16, 16))
    assert np.isclose(g[8, 8, 8 + 5], 5) and np.isclose(g[8, 8 + 3, 8 + 4], 5)


def test_power_spectrum_of_white_noise(rng):
    x = rng.normal(0, 3.0, size=(20, 64, 64))
    f, ps = radial_power_spectrum(x, pixel_size_A=2.0, average=True)
    assert np.isclose(f[-1], 0.25)  # Nyquist of 2 Å pixels
    assert abs(ps[2:].mean() / 9.0 - 1) < 0.03
    # Parseval: mean of the 2-D PS equals the mean square
    assert np.isclose(power_spectrum(x).mean(), (x**2).mean())


def test_crop_pad_keep_the_centre():
    for L, M in [(16, 9), (17, 10), (15, 8)]:
        x = np.zeros((2, L, L))
        x[:, L // 2, L // 2] = 1
        x[:, L // 2 - 2, L // 2 + 3] = 2
        c = crop(x, M)
        assert c.shape == (2, M, M) and c[0, M // 2, M // 2] == 1 and c[1, M // 2 - 2, M // 2 + 3] == 2
        p = pad(c, L)
        assert np.array_equal(p, x)
    with pytest.raises(ValueError):
        crop(np.zeros((8, 8)), 10)


@pytest.mark.parametrize("L,M", [(64, 32), (64, 33), (63, 40), (48, 20)])
def test_downsample_band_limited_image_is_analytic(L, M):
    waves = [(1.0, (3, 5), 0.3), (0.5, (-7, 2), -1.1), (0.25, (0, 9), 0.7), (2.0, (0, 0), 0.0)]
    assert all(max(abs(k[0]), abs(k[1])) < M / 2 for _, k, _ in waves)
    x = _cosines(L, waves)
    y, px = downsample(np.stack([x, 2 * x]).astype(np.float32), M, pixel_size_A=1.5)
    # the same continuous function sampled at M points over the same field of view
    expect = _cosines(M, waves)
    assert np.allclose(y[0], expect, atol=1e-4)
    assert np.allclose(y[1], 2 * expect, atol=2e-4)
    assert np.isclose(px, 1.5 * L / M)
    assert y.dtype == np.float32
    # upsampling back gives the original
    z, px2 = upsample(y[0], L, pixel_size_A=px)
    assert np.allclose(z, x, atol=1e-4) and np.isclose(px2, 1.5)


def test_downsample_volume_and_mean():
    L, M = 24, 12
    waves = [(1.0, (1, 2, 3), 0.2), (0.7, (-4, 0, 5), 1.0), (3.0, (0, 0, 0), 0.0)]
    x = _cosines(L, waves, ndim=3)
    y, px = downsample(x, M, ndim=3, pixel_size_A=1.0)
    assert np.allclose(y, _cosines(M, waves, ndim=3), atol=1e-9)
    assert np.isclose(y.mean(), x.mean()) and np.isclose(px, 2.0)


def test_downsample_removes_frequencies_above_new_nyquist():
    L, M = 64, 32
    x = _cosines(L, [(1.0, (3, 1), 0.0), (1.0, (20, 0), 0.0)])  # 20 > M/2: must vanish, not alias
    y, _ = downsample(x, M)
    assert np.allclose(y, _cosines(M, [(1.0, (3, 1), 0.0)]), atol=1e-9)


@pytest.mark.parametrize("ndim", [2, 3])
def test_upsample_then_downsample_is_identity(rng, ndim):
    for L, M in [(16, 24), (16, 25), (17, 24), (15, 30)]:
        x = rng.standard_normal((2,) + (L,) * ndim).astype(np.float32)
        y, _ = upsample(x, M, ndim)
        z, _ = downsample(y, L, ndim)
        assert np.abs(z - x).max() < 1e-5, (L, M)
    c = rng.standard_normal((12, 12)) + 1j * rng.standard_normal((12, 12))
    assert np.allclose(downsample(upsample(c, 20)[0], 12)[0], c)


def test_downsample_samples_a_cosine_at_the_new_nyquist():
    # cos(π(x' + y')) on the new grid: the ±M/2 frequencies alias onto one and are summed
    L, M = 32, 16
    x = _cosines(L, [(1.0, (M // 2, M // 2), 0.0), (0.5, (0, M // 2), 0.0)])
    y, _ = downsample(x, M)
    assert np.allclose(y, _cosines(M, [(1.0, (M // 2, M // 2), 0.0), (0.5, (0, M // 2), 0.0)]), atol=1e-9)
