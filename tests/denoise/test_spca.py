"""Steerable PCA: rank detection and Wiener denoising on a synthetic low-rank steerable model."""

import numpy as np

from cryoprism.basis import fb_basis_2d
from cryoprism.denoise import fit_spca


def test_spca_finds_rank_and_denoises():
    b = fb_basis_2d(32, radius_px=12)
    rng = np.random.default_rng(0)
    n = 3000
    clean = np.zeros((n, b.n_coef), complex)
    true_rank = {0: 2, 1: 2, 3: 1}
    for k, r in true_rank.items():
        sl = b.k_slices[k]
        p = sl.stop - sl.start
        U = np.linalg.qr(rng.standard_normal((p, r)) + 1j * rng.standard_normal((p, r)))[0]
        if k == 0:
            U = np.linalg.qr(rng.standard_normal((p, r)))[0]
        z = rng.standard_normal((n, r)) * np.sqrt([20.0, 8.0][:r])
        if k:
            z = z * np.exp(2j * np.pi * rng.random((n, r)))   # uniform in-plane rotations
        clean[:, sl] = z @ U.T
    clean[:, b.k_slices[0]] += 3.0                            # a mean in k = 0
    noise = (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)) / np.sqrt(2)
    noise[:, b.ks == 0] = rng.standard_normal((n, int((b.ks == 0).sum())))
    noisy = clean + noise                                     # unit noise variance per coefficient
    sp = fit_spca(noisy, b.k_slices, noise_var=1.0)
    for k in range(len(b.k_slices)):
        assert sp.ranks[k] == true_rank.get(k, 0), (k, sp.ranks[k])
    den = sp.denoise(noisy)
    err_noisy = np.mean(np.abs(noisy - clean) ** 2)
    err_den = np.mean(np.abs(den - clean) ** 2)
    assert err_den < 0.05 * err_noisy
    # scale equivariance: scaling data and noise variance together scales the result
    sp2 = fit_spca(noisy * 1e-4, b.k_slices, noise_var=1e-8)
    assert np.allclose(sp2.denoise(noisy * 1e-4), den * 1e-4, rtol=1e-6, atol=1e-10)
