"""3-D spherical-Bessel basis: orthonormality, analytic values, expansion of a smooth volume."""

import numpy as np
from scipy.special import spherical_jn

from cryoprism.basis.sb3d import sb_basis_3d, spherical_bessel_zeros


def test_zeros_are_zeros():
    for ell in (0, 1, 4):
        z = spherical_bessel_zeros(ell, 30.0)
        assert len(z) > 3
        assert np.abs(spherical_jn(ell, z)).max() < 1e-10
    # j_0(x) = sin x / x: zeros at sπ
    assert np.allclose(spherical_bessel_zeros(0, 20.0), np.pi * np.arange(1, 7))


def test_basis_nearly_orthonormal_and_expands_smooth_volume():
    b = sb_basis_3d(24, radius_px=10, bandlimit=0.2)
    G = b.matrix.T @ b.matrix                       # voxel sums approximate the ball integrals
    assert np.abs(np.diag(G) - 1).max() < 0.1
    off = G - np.diag(np.diag(G))
    assert np.abs(off).max() < 0.1
    # the ℓ = 0, s = 1 function is N sin(πr/R)/(πr/R) · Y_0^0 (analytic)
    k = np.flatnonzero((b.labels[:, 0] == 0) & (b.labels[:, 2] == 0))[0]
    c = np.zeros(b.n_basis)
    c[k] = 1.0
    v = b.evaluate(c)
    g = np.arange(24) - 12
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    N = np.sqrt(2.0) / (10 ** 1.5 * abs(spherical_jn(1, np.pi)))
    truth = np.where(r <= 10, N * np.sinc(r / 10) / np.sqrt(4 * np.pi), 0)
    assert np.allclose(v, truth, atol=1e-10)
    # a smooth off-centre Gaussian inside the ball is represented to a few per cent
    gauss = np.exp(-(((g[:, None, None] - 2) ** 2 + (g[None, :, None] + 1) ** 2 + g[None, None, :] ** 2)
                     / (2 * 2.5 ** 2)))
    rec = b.evaluate(b.expand(gauss))
    inner = r <= 8
    assert np.linalg.norm((rec - gauss)[inner]) / np.linalg.norm(gauss[inner]) < 0.05
