"""FSC/FRC, thresholds, resolution, SSNR and DPR against independently computed expectations."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryoprism.metrics import dpr, fsc, full_map_fsc, resolution_at, ssnr_from_fsc, threshold_curve

HB = Path(__file__).parents[1] / "data" / "maps" / "emd_3488_hemoglobin.mrc"


@pytest.fixture(scope="module")
def hb():
    with mrcfile.open(HB, permissive=True) as m:
        return m.data.astype(np.float64), float(m.voxel_size.x)


def _kgrid(L, ndim):
    k = np.meshgrid(*[np.arange(L) - L // 2] * ndim, indexing="ij")
    return np.sqrt(sum(g.astype(float) ** 2 for g in k))


def _ft(x):
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x)))


def test_fsc_with_itself_is_one(hb):
    v, px = hb
    r = fsc(v, v, px)
    assert r.curve.shape == (51,)
    assert np.allclose(r.curve, 1.0)
    assert np.isclose(r.freq_invA[-1], 1 / (2 * px))  # last shell is Nyquist
    # voxels per shell: the test counts them itself
    kr = np.rint(_kgrid(100, 3)).astype(int)
    assert np.array_equal(r.n_voxels, [np.sum(kr == k) for k in range(51)])
    assert resolution_at(r, 0.143) == pytest.approx(2 * px)  # never crosses: Nyquist


def test_frc_of_images_and_scale_invariance(rng):
    a = rng.standard_normal((64, 64))
    b = 3.0 * a + 0.0
    r = fsc(a, b, 2.0)
    assert np.allclose(r.curve[1:], 1.0)
    assert np.allclose(fsc(a, -a).curve[1:], -1.0)
    assert np.isclose(r.freq_invA[1], 1 / (64 * 2.0))


def test_fsc_of_noisy_copies_matches_noise_prediction(hb):
    v, px = hb
    L = v.shape[0]
    rng = np.random.default_rng(5)
    sigma = 0.06
    a = v + sigma * rng.standard_normal(v.shape)
    b = v + sigma * rng.standard_normal(v.shape)
    r = fsc(a, b, px)
    # expectation computed here: per shell, S = Σ|V̂|² of the clean map, N = n_shell · σ² · L³
    kr = np.rint(_kgrid(L, 3)).astype(int).ravel()
    P = (np.abs(_ft(v)) ** 2).ravel()
    S = np.array([P[kr == k].sum() for k in range(L // 2 + 1)])
    n = np.array([np.sum(kr == k) for k in range(L // 2 + 1)])
    N = n * sigma ** 2 * L ** 3
    expect = S / (S + N)
    sh = slice(3, None)
    tol = 4.0 / np.sqrt(n[sh] / 2)
    assert np.all(np.abs(r.curve[sh] - expect[sh]) < tol)
    # the curve spans the whole range, so the comparison above is not trivial
    assert expect[3] > 0.9 and expect[-1] < 0.05
    # and the spectral SNR estimated from the FSC is the true S/N where both are well measured
    snr = ssnr_from_fsc(r.curve)
    good = (expect > 0.2) & (expect < 0.9) & (np.arange(len(n)) >= 3)
    assert good.sum() > 5
    assert np.all(np.abs(np.log(snr[good] / (S / N)[good])) < 0.35)
    # the resolution at 0.143 lies where the predicted curve crosses 0.143 (within one shell)
    k_cross = np.nonzero(expect[1:] < 0.143)[0][0] + 1
    res = resolution_at(r, 0.143)
    assert abs(1 / res - k_cross / (L * px)) <= 1.5 / (L * px)


@pytest.mark.parametrize("cut", [12.3, 20.7, 30.5])
def test_lowpass_crosses_0143_at_the_cutoff(hb, cut):
    v, px = hb
    L = v.shape[0]
    lp = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(_ft(v) * (_kgrid(L, 3) <= cut)))).real
    r = fsc(v, lp, px)
    res = resolution_at(r, 0.143)
    s_cut = cut / (L * px)
    assert abs(1 / res - s_cut) <= 1.0 / (L * px)
    # and 0.5 too: a sharp filter makes the curve drop from ~1 to ~0 within one shell
    assert abs(1 / resolution_at(r, 0.5) - s_cut) <= 1.0 / (L * px)


def test_threshold_formulas():
    from cryoprism.metrics.fsc import FSCResult

    n = np.array([1, 100, 10000, 10 ** 12])
    r = FSCResult(freq_invA=np.arange(4.0), curve=np.zeros(4), n_voxels=n, pixel_size_A=1.0, box=8)
    hb = threshold_curve(r, "half-bit")
    # half-bit: (0.2071 + 1.9102/√n) / (1.2071 + 0.9102/√n) → 0.2071/1.2071 ≈ 0.1716 for large n
    assert np.isclose(hb[-1], 0.2071 / 1.2071, atol=1e-4)
    assert np.isclose(hb[1], (0.2071 + 0.19102) / (1.2071 + 0.09102))
    assert np.allclose(threshold_curve(r, "3sigma"), 3 / np.sqrt(n / 2))
    assert np.allclose(threshold_curve(r, 0.143), 0.143)
    with pytest.raises(ValueError):
        threshold_curve(r, "bogus")


def test_resolution_interpolates_linearly():
    from cryoprism.metrics.fsc import FSCResult

    f = np.arange(6) / 60.0  # L·px = 60 Å
    c = np.array([1.0, 0.9, 0.7, 0.3, 0.1, 0.0])
    r = FSCResult(freq_invA=f, curve=c, n_voxels=np.full(6, 1000), pixel_size_A=1.0, box=10)
    # 0.5 crosses halfway between shells 2 (0.7) and 3 (0.3): s = 2.5/60
    assert resolution_at(r, 0.5) == pytest.approx(60 / 2.5)
    # 0.143 between shells 3 (0.3) and 4 (0.1): frac = 0.157/0.2
    assert resolution_at(r, 0.143) == pytest.approx(60 / (3 + 0.157 / 0.2))


def test_ssnr_conversions():
    f = np.array([0.5, 0.0, -0.2, 0.8])
    assert np.allclose(ssnr_from_fsc(f), [1.0, 0.0, 0.0, 4.0])
    assert np.allclose(full_map_fsc(0.5), 2 / 3)
    assert np.allclose(ssnr_from_fsc(f, full_map=True), [2.0, 0.0, 0.0, 8.0])


def test_dpr(rng):
    L = 48
    a = rng.standard_normal((L, L, L))
    _, d0 = dpr(a, a)
    assert np.allclose(d0, 0.0, atol=1e-6)
    # perturb every phase by exactly ±δ (odd sign field keeps the map real)
    g = rng.standard_normal((L, L, L))
    g[1:, 1:, 1:] -= g[1:, 1:, 1:][::-1, ::-1, ::-1]  # g(−k) = −g(k) on the symmetric part
    sgn = np.sign(g)
    sgn[0, :, :] = sgn[:, 0, :] = sgn[:, :, 0] = 0  # unpaired Nyquist planes: leave unperturbed
    delta = np.deg2rad(25.0)
    bc = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(_ft(a) * np.exp(1j * delta * sgn))))
    assert np.allclose(bc.imag, 0, atol=1e-10)
    b = bc.real
    _, d = dpr(a, b)
    assert np.allclose(d[2:L // 2 - 1], 25.0, atol=1.0)
    # random phases: √(mean Δφ²) = 180/√3 ≈ 103.9°
    c = rng.standard_normal((L, L, L))
    _, dr = dpr(a, c)
    assert np.all(np.abs(dr[4:] - 180 / np.sqrt(3)) < 6.0)


def test_bad_input():
    with pytest.raises(ValueError):
        fsc(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)))
    with pytest.raises(ValueError):
        fsc(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), mask=np.ones((4, 4, 4)))
