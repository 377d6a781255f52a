"""Filters hit their cutoffs; masks and blur match analytic shapes."""

import numpy as np
import pytest

from cryoprism.image import (
    bandpass,
    circular_mask,
    gaussian_blur,
    highpass,
    lowpass,
    radial_mask,
    spherical_mask,
)


def _wave(L, k):
    x = np.arange(L) - L // 2
    return np.broadcast_to(np.cos(2 * np.pi * k * x / L), (L, L)).copy()  # along x


@pytest.mark.parametrize("edge", ["cosine", "gaussian"])
def test_lowpass_highpass_cutoffs(edge):
    L, px = 128, 2.0
    k_cut = 16  # cutoff at 16 Fourier pixels: s = 16 / (128·2) = 1/16 1/Å → 16 Å
    res = L * px / k_cut
    for k, lo_expect in [(16, 0.5), (4, 1.0), (40, 0.0)]:
        w = _wave(L, k)
        gain_lo = np.abs(lowpass(w, px, resolution_A=res, edge=edge)).max()
        gain_hi = np.abs(highpass(w, px, freq_invA=1 / res, edge=edge)).max()
        if edge == "cosine" or k == k_cut:
            assert abs(gain_lo - lo_expect) < 1e-6
        assert abs(gain_lo + gain_hi - 1) < 1e-6
    # Gaussian edge: exp(−ln2 (s/fc)²)
    g = np.abs(lowpass(_wave(L, 8), px, resolution_A=res, edge="gaussian")).max()
    assert abs(g - 2 ** (-0.25)) < 1e-6


def test_bandpass_and_width():
    L, px = 128, 1.0
    res_lo, res_hi = L / 4, L / 32  # k = 4 and k = 32
    for k, expect in [(2, 0.0), (4, 0.5), (12, 1.0), (32, 0.5), (50, 0.0)]:
        gain = np.abs(bandpass(_wave(L, k), px, low_resolution_A=res_lo, high_resolution_A=res_hi,
                               width_invA=2 / L)).max()
        assert abs(gain - expect) < 1e-6, (k, gain)
    # raised cosine of width 8 Fourier pixels: ½(1+cos(π·(k−(fc−w/2))/w)) at k = fc − 2
    gain = np.abs(lowpass(_wave(L, 30), px, resolution_A=L / 32, width_invA=8 / L)).max()
    assert abs(gain - 0.5 * (1 + np.cos(np.pi * 2 / 8))) < 1e-6
    with pytest.raises(ValueError):
        lowpass(_wave(L, 3), px)


def test_gaussian_blur_of_delta_is_gaussian():
    L, sigma = 64, 2.5
    x = np.zeros((2, L, L))
    x[:, L // 2, L // 2] = 1
    y = gaussian_blur(x, sigma)
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    g = np.exp(-(xx**2 + yy**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    assert np.abs(y - g).max() < 1e-5
    assert np.isclose(y[0].sum(), 1.0)


def test_masks():
    L, r, e = 64, 20.0, 6.0
    m = circular_mask(L, r, e)
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    rr = np.hypot(xx, yy)
    assert np.all(m[rr <= r] == 1) and np.all(m[rr >= r + e] == 0)
    assert np.isclose(m[L // 2, L // 2 + 23], 0.5 * (1 + np.cos(np.pi * 3 / 6)), atol=1e-6)
    hard = spherical_mask(48, 15.0)
    assert abs(hard.sum() / (4 / 3 * np.pi * 15**3) - 1) < 0.02
    soft = spherical_mask(48, 12.0, 4.0)
    assert soft[24, 24, 24] == 1 and soft[24, 24, 24 + 14] == pytest.approx(0.5, abs=1e-6)
    off = radial_mask((32, 32), 3.0, center=(10, 20))
    assert off[10, 20] == 1 and off[10, 24] == 0 and off[16, 16] == 0
