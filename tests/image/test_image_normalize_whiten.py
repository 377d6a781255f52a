"""Normalisation from the background; noise spectrum, whitening and recolouring."""

import numpy as np

from cryoprism.fourier import fft2c, ifft2c, radial_power_spectrum, radius_grid
from cryoprism.image import circular_mask, noise_power_spectrum, normalize, recolour, whiten


def test_normalize_background(rng):
    L, R = 64, 20
    x = rng.normal(5.0, 3.0, size=(4, L, L))
    x += 50 * circular_mask(L, R)  # a bright particle inside the radius must not matter
    y = normalize(x.astype(np.float32), R)
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    bg = np.hypot(xx, yy) > R
    assert np.allclose(y[:, bg].mean(axis=1), 0, atol=1e-5)
    assert np.allclose(y[:, bg].std(axis=1), 1, atol=1e-5)
    assert y.dtype == np.float32
    v = rng.normal(-2, 0.5, size=(24, 24, 24))
    w = normalize(v, 8, ndim=3)
    z, yv, xv = np.meshgrid(*[np.arange(24) - 12] * 3, indexing="ij")
    bgv = np.sqrt(z**2 + yv**2 + xv**2) > 8
    assert abs(w[bgv].mean()) < 1e-9 and abs(w[bgv].std() - 1) < 1e-9


def _coloured_noise(rng, n, L):
    s = radius_grid((L, L))  # cycles/pixel
    h = 1.0 / (1.0 + (s / 0.08) ** 2) + 0.05  # known amplitude response
    x = ifft2c(fft2c(rng.standard_normal((n, L, L))) * h).real
    return x, h


def test_noise_spectrum_and_whitening(rng):
    L, n, R = 64, 300, 20
    x, h = _coloured_noise(rng, n, L)
    x += 5 * circular_mask(L, R - 2)[None]  # a "particle" inside the radius: the estimate ignores it
    nps = noise_power_spectrum(x, R, batch_size=64)
    k = np.arange(2, L // 2)
    truth = h[L // 2, L // 2 + k] ** 2  # PS of filtered unit white noise = h²
    rel = nps[k] / truth
    assert np.all(np.abs(rel - 1) < 0.15), rel
    # whitening flattens the spectrum of the noise (outside the particle)
    noise_only = x - 5 * circular_mask(L, R - 2)[None]
    _, ps_before = radial_power_spectrum(noise_only, average=True)
    _, ps_after = radial_power_spectrum(whiten(noise_only, nps), average=True)
    assert ps_before[2:].max() / ps_before[2:].min() > 50
    assert ps_after[2:].max() / ps_after[2:].min() < 1.4
    assert abs(ps_after[2:].mean() - 1) < 0.1
    # recolouring inverts whitening
    assert np.allclose(recolour(whiten(x[:3], nps), nps), x[:3], atol=1e-6 * np.abs(x).max())
