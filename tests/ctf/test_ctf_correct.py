"""CTF zeros, phase flipping, Wiener filtering and B-factors against independent computations."""

import numpy as np

from cryoprism.ctf import CTFParams, apply_bfactor, ctf_1d, ctf_2d, phase_flip, wiener_filter
from cryoprism.fourier import fft2c, ifft2c, radius_grid
from cryoprism.image import circular_mask, gaussian_blur

# relativistic wavelength at 300 kV from h, m0, e, c (computed here, not by cryoprism)
_V = 300e3
_H, _M0, _E, _C = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
LAM_300 = _H / np.sqrt(2 * _M0 * _E * _V * (1 + _E * _V / (2 * _M0 * _C**2))) * 1e10


def _zeros(n, df, cs_mm, q, lam=LAM_300):
    """s of the n-th zero: γ = nπ with γ = πλΔf s² − (π/2) Cs λ³ s⁴ + asin(Q) (quadratic in s²)."""
    cs = cs_mm * 1e7
    w = np.arcsin(q)
    a, b, c = 0.5 * np.pi * cs * lam**3, -np.pi * lam * df, n * np.pi - w
    u = (-b - np.sqrt(b * b - 4 * a * c)) / (2 * a)  # the smaller root: the n-th ring from the centre
    return np.sqrt(u)


def test_ctf_zeros_at_analytic_frequencies():
    p = CTFParams(15000.0, 15000.0, 0.0, 300.0, 2.7, 0.07)
    for n in range(1, 8):
        s0 = _zeros(n, 15000.0, 2.7, 0.07)
        v = ctf_1d(np.array([s0 * 0.999, s0, s0 * 1.001]), p)
        assert abs(v[1]) < 1e-6
        assert np.sign(v[0]) != np.sign(v[2])  # a sign change, not a touch
    # astigmatism: along the U direction the zero follows U, along V it follows V
    pa = CTFParams(20000.0, 12000.0, 30.0, 300.0, 2.7, 0.1)
    for df, ang in [(20000.0, 30.0), (12000.0, 120.0)]:
        s0 = _zeros(2, df, 2.7, 0.1)
        assert abs(ctf_1d(np.array([s0]), pa, np.deg2rad(ang))[0]) < 1e-6


def _object(rng, L):
    return gaussian_blur(rng.standard_normal((L, L)), 1.5) * circular_mask(L, L * 0.3, 4)


def test_phase_flip_and_wiener_restore_a_simulated_image(rng):
    L, px = 128, 1.5
    ps = CTFParams(np.array([12000.0, 20000.0]), np.array([11000.0, 19000.0]), np.array([10.0, 70.0]),
                   300.0, 2.7, 0.1)
    obj = np.stack([_object(rng, L), _object(rng, L)])
    C = ctf_2d(L, px, ps)
    clean = ifft2c(fft2c(obj) * C).real
    noisy = clean + 0.3 * clean.std() * rng.standard_normal(clean.shape)

    def mse(a):
        return float(((a - obj) ** 2).mean())

    def corr(a):
        return float(np.corrcoef(a.ravel(), obj.ravel())[0, 1])

    flipped = phase_flip(noisy, ps, px)
    # flipping gives the object filtered by |CTF| (independent computation of the expectation)
    # (up to the unpaired Nyquist row of the even box, where an astigmatic CTF grid is not symmetric)
    expect = ifft2c(fft2c(obj) * np.abs(C)).real
    assert np.allclose(phase_flip(clean, ps, px), expect, atol=3e-3 * np.abs(expect).max())
    wien = wiener_filter(noisy, ps, px, ssnr=10.0)
    assert corr(flipped) > corr(noisy) + 0.2
    assert mse(wien) < 0.5 * mse(noisy)
    assert mse(wien) < mse(flipped)
    # flipping twice is the identity (sign² = 1 away from exact zeros), away from the Nyquist row and
    # column of the even box (index 0), which have no Hermitian partner
    twice = fft2c(phase_flip(flipped, ps, px))[:, 1:, 1:]
    assert np.allclose(twice, fft2c(noisy)[:, 1:, 1:], atol=1e-6 * np.abs(twice).max())
    # a radial SSNR profile of constant value equals the scalar
    w2 = wiener_filter(noisy, ps, px, ssnr=np.full(L, 10.0))
    assert np.allclose(w2, wien, atol=1e-9)
    assert np.allclose(wiener_filter(noisy, ps, px, 0.0), 0)


def test_bfactor_broadens_a_gaussian_analytically():
    L, px, sigma, B = 96, 1.0, 3.0, 200.0
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    g = np.exp(-(xx**2 + yy**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    out = apply_bfactor(g, B, px)
    # FT multiplies exp(−2π²σ²s²) by exp(−B s²/4): σ'² = σ² + B/(8π²)
    s2 = sigma**2 + B / (8 * np.pi**2)
    expect = np.exp(-(xx**2 + yy**2) / (2 * s2)) / (2 * np.pi * s2)
    assert np.abs(out - expect).max() < 1e-6
    # sharpening back by −B amplifies the round-off of `out` by up to e^(B s_max²/4) at the corner
    # frequency s_max² = 2 (1/(2 px))²: the tolerance follows from that conditioning, not one FFT build
    amp = np.exp(B * 2 * (0.5 / px) ** 2 / 4)
    tol = 4 * np.finfo(float).eps * amp * np.abs(out).max()
    assert tol < 1e-4 * g.max()  # still a sharp test of the inverse
    assert np.abs(apply_bfactor(out, -B, px) - g).max() < tol
    # volumes too
    v = np.random.default_rng(0).standard_normal((16, 16, 16))
    s = radius_grid((16, 16, 16), 2.0)
    assert np.allclose(apply_bfactor(v, 50.0, 2.0, ndim=3),
                       np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(np.fft.fftshift(np.fft.fftn(
                           np.fft.ifftshift(v))) * np.exp(-50.0 * s**2 / 4)))).real, atol=1e-9)
