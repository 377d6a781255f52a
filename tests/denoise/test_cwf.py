"""CWF: CTF blocks against image-domain filtering, covariance recovery, denoising vs phase flip and sPCA."""

from pathlib import Path

import numpy as np
import pytest

from cryoprism.basis import fb_basis_2d
from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.denoise.cwf import CWFModel, ctf_blocks, cwf_denoise, fit_cwf
from cryoprism.io import ParticleStack

MAP = Path(__file__).resolve().parents[1] / "data" / "maps" / "50S_states" / "vol_018.mrc"
PX = 6.55 * 2        # 64³ map resampled to 32³


def _ctf(defoci):
    d = np.asarray(defoci, dtype=np.float64)
    return CTFParams(defocus_u_A=d, defocus_v_A=d, voltage_kV=200.0, cs_mm=2.0, amplitude_contrast=0.1)


def test_ctf_block_matches_image_domain_ctf():
    """H_k applied to coefficients = expand(CTF ∗ evaluate(coefficients)) for a radially symmetric CTF."""
    L = 48
    b = fb_basis_2d(L, radius_px=L // 2)
    rng = np.random.default_rng(1)
    # low k and q only, so the image and its CTF-filtered version (delocalised by the CTF's point
    # spread, ~ λ Δf s_max) stay inside the box: the FFT filter is then the continuous one
    a = np.zeros(b.n_coef, complex)
    sel = (b.qs < 6) & (b.ks < 8)
    a[sel] = rng.standard_normal(sel.sum()) + 1j * rng.standard_normal(sel.sum())
    a[b.ks == 0] = a[b.ks == 0].real
    img = b.evaluate(a)
    ctf = _ctf([15000.0])
    px = 6.0
    C = ctf_2d(L, px, ctf.take(0), dtype=np.float64)
    from cryoprism.fourier.core import fft2c, ifft2c

    filtered = ifft2c(fft2c(img) * C).real
    a_ref = b.expand(filtered)
    H = ctf_blocks(b, ctf, px)
    a_H = np.concatenate([H[k][0] @ a[sl] for k, sl in enumerate(b.k_slices)])
    err = np.linalg.norm(a_H - a_ref) / np.linalg.norm(a_ref)
    assert err < 2e-2, err
    # the CTF actually changes the coefficients (the test can fail)
    assert np.linalg.norm(a - a_ref) / np.linalg.norm(a_ref) > 0.3


def test_covariance_recovers_low_rank_eigenvalues():
    """Noise-free limit: known low-rank model seen through 5 defocus groups; eigenvalues recovered.

    With noise variance ε² ≪ signal, the estimator's error is the sampling error of the sample
    covariance: an eigenvalue ℓ estimated from n samples has relative s.d. ≈ √(2/n) (real) / √(1/n)
    (complex). n = 4000: ≈ 2.2 %; tolerance 4 s.d. ≈ 9 %, plus the de-biasing (negligible here).
    Spurious eigenvalues: each group sees its own sample covariance of x (error ~ ℓ₁/√n_g entrywise),
    and the least-squares combination of the G inconsistent group moments is not exactly rank r; its
    extra eigenvalues are bounded by 2 ℓ₁/√n_g (n_g = n/G = 800: 2.1, well below ℓ_r = 10). Frequencies
    without signal must come out exactly zero (no eigenvalue passes the noise edge).
    """
    b = fb_basis_2d(32, radius_px=12)
    rng = np.random.default_rng(3)
    n = 4000
    G = 5
    H = ctf_blocks(b, _ctf(np.linspace(1e4, 3e4, G)), 5.0)
    labels = rng.integers(0, G, n)
    true = {0: [30.0, 10.0], 2: [20.0]}
    eps = 1e-2
    x = np.zeros((n, b.n_coef), complex)
    Us = {}
    for k, ell in true.items():
        sl = b.k_slices[k]
        p = sl.stop - sl.start
        r = len(ell)
        # eigenvectors in the low radial frequencies, where the CTF blocks are well conditioned
        if k == 0:
            U = np.linalg.qr(rng.standard_normal((3, r)))[0]
        else:
            U = np.linalg.qr(rng.standard_normal((3, r)) + 1j * rng.standard_normal((3, r)))[0]
        U = np.vstack([U, np.zeros((p - 3, r))])
        Us[k] = U
        z = rng.standard_normal((n, r)) * np.sqrt(ell)
        if k:
            z = z * np.exp(2j * np.pi * rng.random((n, r)))
        x[:, sl] = z @ U.T
    a = np.zeros_like(x)
    for k, sl in enumerate(b.k_slices):
        a[:, sl] = np.einsum("nij,nj->ni", H[k][labels], x[:, sl])
    noise = (rng.standard_normal(a.shape) + 1j * rng.standard_normal(a.shape)) / np.sqrt(2)
    noise[:, b.ks == 0] = rng.standard_normal((n, int((b.ks == 0).sum())))
    m = fit_cwf((a + eps * noise) / eps, labels, b, H)   # whitened: unit noise
    for k, sl in enumerate(b.k_slices):
        lam = np.sort(np.linalg.eigvalsh(m.cov[k] * eps**2))[::-1]
        ref = np.array(true.get(k, []))
        if len(ref):
            assert np.allclose(lam[: len(ref)], ref, rtol=0.09), (k, lam[:3], ref)
            assert lam[len(ref)] < 2 * ref[0] / np.sqrt(n / G), (k, lam[: len(ref) + 1])
        else:
            assert lam[0] == 0.0, (k, lam[0])
    assert isinstance(m, CWFModel)


@pytest.fixture(scope="module")
def sim():
    from cryoprism.forward import project
    from cryoprism.fourier import fourier_resize
    from cryoprism.geometry.rotations import uniform_rotations
    from cryoprism.io.mrc import read_mrc

    vol, _ = read_mrc(MAP)
    vol = np.asarray(fourier_resize(np.asarray(vol, np.float64), 32, ndim=3)[0], dtype=np.float32)
    rng = np.random.default_rng(0)
    n = 2000
    rots = uniform_rotations(n, rng)
    defoci = np.linspace(1e4, 4e4, 8)[rng.integers(0, 8, n)]
    ctf = _ctf(defoci)
    clean = project(vol, rots)
    dirty = project(vol, rots, ctf=ctf_2d(32, PX, ctf))
    sigma = np.sqrt(dirty.var(axis=(1, 2)).mean() / 0.05)
    noisy = (dirty + rng.normal(0, sigma, dirty.shape)).astype(np.float32)
    return dict(noisy=noisy, clean=clean, ctf=ctf)


def _mse(d, c):
    return float(np.mean((d - c) ** 2) / np.mean(c.var(axis=(1, 2))))


def test_cwf_beats_phase_flip_and_spca(sim):
    from cryoprism.classify2d.pipeline import prepare, spca_denoise
    from cryoprism.ctf.correct import phase_flip

    noisy, clean, ctf = sim["noisy"], sim["clean"], sim["ctf"]
    den = cwf_denoise(ParticleStack.from_arrays(noisy, pixel_size_A=PX, ctf=ctf), mask_radius_px=12.8)
    flipped = phase_flip(noisy, ctf, PX)
    # sPCA on whitened phase-flipped images, Wiener-type CTF correction (the existing pipeline)
    prep = prepare(ParticleStack.from_arrays(noisy, pixel_size_A=PX, ctf=ctf), mask_radius_px=12.8)
    sp = spca_denoise(prep)
    # scores against the clean CTF-free projections, compared with their mean removed (the sPCA
    # pipeline subtracts each image's mean)
    c0 = clean - clean.mean(axis=(1, 2), keepdims=True)
    e_cwf = _mse(den - den.mean(axis=(1, 2), keepdims=True), c0)
    e_flip = _mse(flipped - flipped.mean(axis=(1, 2), keepdims=True), c0)
    e_spca = _mse(sp - sp.mean(axis=(1, 2), keepdims=True), c0)
    assert e_cwf < 0.2 * e_flip, (e_cwf, e_flip)
    assert e_cwf < e_spca, (e_cwf, e_spca)
    assert e_cwf < 0.6, e_cwf


def test_cwf_scale_equivariant(sim):
    x = sim["noisy"][:400]
    ctf = sim["ctf"].take(np.arange(400))
    d1 = cwf_denoise(ParticleStack.from_arrays(x, pixel_size_A=PX, ctf=ctf), mask_radius_px=12.8)
    d2 = cwf_denoise(ParticleStack.from_arrays(x * 1e3, pixel_size_A=PX, ctf=ctf), mask_radius_px=12.8)
    assert np.allclose(d2, d1 * 1e3, rtol=1e-3, atol=1e-3 * 1e3 * np.abs(d1).max())


def test_denoise_cli_cwf(sim, tmp_path):
    """``cryoprism denoise --method cwf``: STAR keeps the input rows/columns, images match the library."""
    import pandas as pd

    from cryoprism.cli.main import main
    from cryoprism.io import read_particles, write_particles

    n = 300
    x = sim["noisy"][:n]
    d = np.asarray(sim["ctf"].defocus_u_A)[:n]
    table = pd.DataFrame({"rlnDefocusU": d, "rlnDefocusV": d, "rlnDefocusAngle": 0.0, "rlnVoltage": 200.0,
                          "rlnSphericalAberration": 2.0, "rlnAmplitudeContrast": 0.1,
                          "rlnImagePixelSize": PX, "rlnMyTag": np.arange(n),
                          "rlnImageName": [f"{i + 1}@x.mrcs" for i in range(n)]}, index=range(n))
    star, _ = write_particles(tmp_path / "p.star", tmp_path / "p.mrcs", x, table, pixel_size_A=PX)
    out = tmp_path / "den"
    assert main(["denoise", str(star), "-o", str(out), "--method", "cwf", "--radius", "12.8"]) == 0
    st = read_particles(out / "denoised.star")
    assert st.n == n and st.box == 32
    assert (st.star.particles["rlnMyTag"].to_numpy() == np.arange(n)).all()
    src = ParticleStack.from_arrays(x, pixel_size_A=PX, ctf=sim["ctf"].take(np.arange(n)))
    ref = cwf_denoise(src, mask_radius_px=12.8)
    got = st.images(np.arange(n))
    assert np.allclose(got, ref, atol=1e-4 * np.abs(ref).max())
