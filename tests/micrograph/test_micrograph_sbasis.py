"""Spherical-Bessel basis: expansion, Wigner-D rotation and projection against independent truths."""

import numpy as np
import pytest
from scipy.ndimage import affine_transform

from cryoprism.geometry import sphere_grid, uniform_rotations
from cryoprism.micrograph.sbasis import (
    evaluate_volume,
    fit_volume,
    grid_points,
    make_basis,
    project_coefficients,
    projection_images,
    real_sph_harm,
    rotate_coefficients,
    spherical_bessel_zeros,
    volume_matrix,
    wigner_real,
)

L = 13


def _gaussian(mu, cov):
    """Analytic anisotropic 3-D Gaussian (unit mass) and its projections."""
    Si = np.linalg.inv(cov)
    norm = 1.0 / np.sqrt((2 * np.pi) ** 3 * np.linalg.det(cov))

    def f(p):
        d = np.asarray(p) - mu
        return norm * np.exp(-0.5 * np.einsum("ni,ij,nj->n", d, Si, d))

    def proj(A, size):
        S = (A @ cov @ A.T)[:2, :2]
        m = (A @ mu)[:2]
        yy, xx = np.meshgrid(np.arange(size) - size // 2, np.arange(size) - size // 2, indexing="ij")
        d = np.stack([xx - m[0], yy - m[1]], -1)
        return np.exp(-0.5 * np.einsum("...i,ij,...j", d, np.linalg.inv(S), d)) / (
            2 * np.pi * np.sqrt(np.linalg.det(S)))

    return f, proj


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    Q = uniform_rotations(1, rng)[0]
    cov = Q @ np.diag([1.9, 1.3, 1.5]) ** 2 @ Q.T
    mu = np.array([0.7, -0.4, 0.3])
    f, proj = _gaussian(mu, cov)
    basis = make_basis(L, 8)
    vol = f(grid_points(L)).reshape(L, L, L)
    coef = fit_volume(basis, vol)
    return basis, coef, f, proj, vol


def test_real_sph_harm_orthonormal():
    u = sphere_grid(12000)
    Y = real_sph_harm(7, u)
    G = Y.T @ Y * 4 * np.pi / len(u)
    assert np.abs(G - np.eye(G.shape[0])).max() < 1e-3


def test_spherical_bessel_zeros_known_values():
    # j_0(x) = sin x / x has zeros at kπ; first zero of j_1 is 4.4934 (tan x = x)
    np.testing.assert_allclose(spherical_bessel_zeros(0, 10.0), [np.pi, 2 * np.pi, 3 * np.pi], rtol=1e-10)
    assert abs(spherical_bessel_zeros(1, 5.0)[0] - 4.493409457909064) < 1e-9


def test_radial_normalisation():
    # ∫_0^c (N j_ℓ(z k / c))² k² dk = 1 for the closed-form N of every radial function
    from scipy.integrate import quad
    from scipy.special import spherical_jn

    b = make_basis(11, 4, bandlimit=0.4)
    for j in range(0, b.n, 7):
        ell, z, N, c = b.ells[j], b.zeros[j], b.norms[j], b.bandlimit
        val, _ = quad(lambda k: (N * spherical_jn(ell, z * k / c)) ** 2 * k * k, 0, c, limit=200)
        assert abs(val - 1) < 1e-8


def test_expansion_of_smooth_volume_off_grid(setup):
    basis, coef, f, _, vol = setup
    rng = np.random.default_rng(0)
    pts = rng.uniform(-3.0, 3.0, (400, 3))  # off-grid points inside the support
    est = volume_matrix(basis, pts) @ coef
    truth = f(pts)
    assert np.linalg.norm(est - truth) / np.linalg.norm(truth) < 0.01
    assert np.linalg.norm(evaluate_volume(basis, coef) - vol) / np.linalg.norm(vol) < 0.01


def test_wigner_matrices_orthogonal_and_compose():
    rng = np.random.default_rng(1)
    A, B = uniform_rotations(2, rng)
    DA, DB, DAB = (wigner_real(6, R[None]) for R in (A, B, B @ A))
    for ell in range(7):
        M = DA[ell][0]
        np.testing.assert_allclose(M @ M.T, np.eye(2 * ell + 1), atol=1e-10)
        # Y(Aᵀ Bᵀ u) = M_A Y(Bᵀ u) = M_A M_B Y(u)
        np.testing.assert_allclose(DAB[ell][0], DA[ell][0] @ DB[ell][0], atol=1e-10)


def test_rotation_of_coefficients_equals_rotated_volume(setup):
    basis, coef, f, _, vol = setup
    A = uniform_rotations(1, np.random.default_rng(5))[0]
    rot = rotate_coefficients(basis, coef, A[None])[0]
    pts = grid_points(L)
    truth = f(pts @ A).reshape(L, L, L)  # V(Aᵀ r): row r → (Aᵀ r)ᵀ = rᵀ A
    est = evaluate_volume(basis, rot)
    assert np.linalg.norm(est - truth) / np.linalg.norm(truth) < 0.01
    # the same against scipy.ndimage resampling of the voxel map (interpolation-limited)
    c = np.full(3, L // 2)
    # output voxel [z,y,x] ↦ input voxel: (x,y,z) = Aᵀ (x,y,z)_out; in zyx order use P Aᵀ P
    P = np.eye(3)[::-1]
    M = P @ A.T @ P
    resampled = affine_transform(vol, M, offset=c - M @ c, order=3)
    corr = np.sum(resampled * est) / np.linalg.norm(resampled) / np.linalg.norm(est)
    assert corr > 0.995


def test_projection_matches_analytic_gaussian(setup):
    basis, coef, _, proj, _ = setup
    rots = uniform_rotations(3, np.random.default_rng(11))
    imgs = project_coefficients(basis, coef, rots, size=L)
    for A, im in zip(rots, imgs):
        truth = proj(A, L)
        assert np.linalg.norm(im - truth) / np.linalg.norm(truth) < 0.01


def test_basis_projection_matches_numerical_line_integral():
    b = make_basis(9, 4)
    size = 9
    Phi = projection_images(b, size)
    yy, xx = np.meshgrid(np.arange(size) - size // 2, np.arange(size) - size // 2, indexing="ij")
    z = np.arange(-40, 40.0001, 0.5)
    S = b.n_radial
    # (ℓ, m, s) = (0,0,1), (2,0,1), (3,1,2), (4,-2,1): ℓ + |m| even, so the projection is non-zero
    pts = np.stack([np.repeat(xx.ravel(), z.size), np.repeat(yy.ravel(), z.size),
                    np.tile(z, size * size)], 1)
    Psi = volume_matrix(b, pts)
    for j in [0, b.blocks[2].start + 2 * S[2], b.blocks[3].start + 4 * S[3] + 1,
              b.blocks[4].start + 2 * S[4]]:
        assert (b.ells[j] + abs(b.ms[j])) % 2 == 0
        vals = Psi[:, j].reshape(size * size, z.size)
        line = np.trapezoid(vals, z, axis=1).reshape(size, size)
        assert np.linalg.norm(Phi[:, :, j] - line) / np.linalg.norm(line) < 0.03, j
