"""CTF estimation on simulated micrographs (known CTF) and on a real micrograph."""

import time

import mrcfile
import numpy as np
import pytest

from cryoprism.ctf import CTFParams, ctf_2d, estimate_ctf


def simulate_micrograph(N, px, p: CTFParams, snr, seed):
    """Smooth random texture, convolved with the CTF, plus white noise (SNR = signal var / noise var).

    Built here from numpy FFTs (independent of cryoprism.forward and of the estimator)."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(N, d=px)
    s = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    tex = np.fft.fft2(rng.standard_normal((N, N))) / np.sqrt(1 + (s / 0.02) ** 2)  # smooth density
    C = np.fft.ifftshift(ctf_2d(N, px, p))
    img = np.fft.ifft2(tex * C).real
    img /= img.std()
    return (img + rng.standard_normal((N, N)) / np.sqrt(snr) + 10.0).astype(np.float32)


CASES = [  # U, V, angle, pixel size, SNR, B
    (15000.0, 13500.0, 30.0, 1.0, 0.1, 80.0),
    (8000.0, 7600.0, 120.0, 1.2, 0.05, 60.0),
    (25000.0, 24000.0, 75.0, 0.9, 0.1, 100.0),
    (6100.0, 4500.0, 143.0, 1.13, 0.07, 56.0),  # 30 % astigmatism: rings smear in the 1-D average
]


def _check(fit, u, v, a, tol):
    assert abs(fit.defocus_u_A / u - 1) < tol, fit
    assert abs(fit.defocus_v_A / v - 1) < tol, fit
    if u - v > 500:
        d = (fit.defocus_angle_deg - a + 90) % 180 - 90
        assert abs(d) < 3.0, fit


@pytest.mark.parametrize("case", CASES[:2] + CASES[3:])
def test_simulated_micrograph_within_2_percent(case):
    u, v, a, px, snr, B = case
    p = CTFParams(u, v, a, 300.0, 2.7, 0.1, bfactor_A2=B)
    m = simulate_micrograph(1024, px, p, snr * 4, seed=3)  # 1024² (fast); the slow test uses 2048²
    fit = estimate_ctf(m, px, 300.0, 2.7, 0.1)
    _check(fit, u, v, a, 0.02)
    assert 0.0 < fit.score <= 1.0
    assert fit.fit_resolution_A < 8.0


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_simulated_2048_micrograph_within_2_percent_and_fast(case):
    u, v, a, px, snr, B = case
    p = CTFParams(u, v, a, 300.0, 2.7, 0.1, bfactor_A2=B)
    m = simulate_micrograph(2048, px, p, snr, seed=1)
    t = time.perf_counter()
    fit = estimate_ctf(m, px, 300.0, 2.7, 0.1)
    assert time.perf_counter() - t < 20.0
    _check(fit, u, v, a, 0.02)


def test_fit_resolution_follows_the_envelope():
    px = 1.0
    good = estimate_ctf(simulate_micrograph(1024, px, CTFParams(12000, 11500, 40, bfactor_A2=20), 0.5, 5),
                        px, resolution_range_A=(30, 3))
    bad = estimate_ctf(simulate_micrograph(1024, px, CTFParams(12000, 11500, 40, bfactor_A2=1500), 0.5, 5),
                       px, resolution_range_A=(30, 3))
    assert good.fit_resolution_A < 4.0
    assert bad.fit_resolution_A > good.fit_resolution_A + 1.0


def test_real_micrograph_defocus(data_dir):
    """fei_crop2048.mrc: reference fitted defocus ≈ 1.07 µm (nominal 0.9 µm) → within 10 %."""
    with mrcfile.open(data_dir / "micrographs" / "fei_crop2048.mrc", permissive=True) as f:
        m = f.data.astype(np.float32)
    fit = estimate_ctf(m, 0.8538, 300.0, 2.7, 0.1)
    mean = 0.5 * (fit.defocus_u_A + fit.defocus_v_A)
    assert abs(mean / 10700.0 - 1) < 0.10, fit
    assert fit.defocus_u_A - fit.defocus_v_A < 0.1 * mean
