"""Mixture model: analytic projection, rendering, fitting, CSV round trip (independent truths)."""

import numpy as np
import pytest

from cryoprism.abinitio import gmm
from cryoprism.geometry.euler import euler_to_matrix
from cryoprism.geometry.rotations import uniform_rotations


def _density_3d(points, mix):
    """h(r) evaluated directly from the definition (the test's own formula)."""
    s = mix.precision_invA2
    d2 = ((points[..., None, :] - mix.means_A) ** 2).sum(-1)
    return (mix.weights * (s / (2 * np.pi)) ** 1.5 * np.exp(-0.5 * s * d2)).sum(-1)


def test_projection_equals_line_integral(rng):
    """Analytic projection == numerical integral of h(Aᵀ(x, y, z)) along z, with origins applied as
    image = shift(projection, −origin) (docs/conventions.md)."""
    K, L, px = 6, 20, 3.0
    mix = gmm.GaussianMixture(rng.normal(scale=12, size=(K, 3)), 1 / 30.0, rng.dirichlet(np.ones(K)))
    A = uniform_rotations(2, rng)
    origins = rng.normal(scale=4, size=(2, 2))
    img = gmm.project_mixture(mix, A, L, px, origins)
    x = (np.arange(L) - L // 2) * px
    z = np.linspace(-120, 120, 2401)
    X, Y = np.meshgrid(x, x, indexing="xy")          # X varies along the last (x) axis
    for i in range(2):
        # image(x) = projection(x + origin); particle-frame point p → volume point Aᵀ p
        p = np.stack([np.broadcast_to(X[..., None] + origins[i, 0], X.shape + z.shape),
                      np.broadcast_to(Y[..., None] + origins[i, 1], X.shape + z.shape),
                      np.broadcast_to(z, X.shape + z.shape)], -1)
        num = np.trapezoid(_density_3d(p @ A[i], mix), z, axis=-1)
        assert np.abs(num - img[i]).max() < 1e-6 * np.abs(img[i]).max()


def test_projection_rotation_convention():
    """A single off-centre Gaussian at μ = (20, 0, 0) Å seen with tilt 90° (RELION matrix) lands at
    (A μ)_xy, computed by hand from the matrix formula in docs/conventions.md."""
    mix = gmm.GaussianMixture(np.array([[20.0, 0.0, 0.0]]), 1 / 4.0, np.ones(1))
    A = euler_to_matrix(0.0, 90.0, 0.0)          # rows: (0,0,-1), (0,1,0), (1,0,0)
    img = gmm.project_mixture(mix, A[None], 41, 1.0)[0]
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    # A μ = (0, 0, 20): the Gaussian sits at the image centre
    assert (iy, ix) == (20, 20)
    A = euler_to_matrix(0.0, 0.0, 90.0)          # rows: (0,1,0), (-1,0,0), (0,0,1)
    img = gmm.project_mixture(mix, A[None], 41, 1.0)[0]
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    assert (ix - 20, iy - 20) == (0, -20)        # A μ = (0, −20, 0)


def test_render_volume_matches_definition(rng):
    K, L, px = 8, 24, 2.5
    mix = gmm.GaussianMixture(rng.normal(scale=6, size=(K, 3)), 1 / 9.0, rng.dirichlet(np.ones(K)))
    vol = gmm.render_volume(mix, L, px)
    assert abs(vol.sum() * px ** 3 - 1) < 1e-3          # 5σ cut-off loses < 1e-3 of the mass
    c = (np.arange(L) - L // 2) * px
    pts = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)[..., ::-1]   # [z,y,x] → (x, y, z)
    direct = _density_3d(pts.reshape(-1, 3), mix).reshape(L, L, L)
    assert np.abs(vol - direct).max() < 1e-4 * direct.max()


def test_em_fit_recovers_separated_mixture(rng):
    L, px = 32, 2.0
    means = np.array([[-15.0, 0, 0], [15, 0, 0], [0, 15, 5], [0, -12, -10]])
    truth = gmm.GaussianMixture(means, 1 / 9.0, np.array([0.2, 0.3, 0.25, 0.25]))
    vol = gmm.render_volume(truth, L, px)
    fit = gmm.fit_mixture_em(vol, px, 4, n_iter=80, rng=1)
    d = np.linalg.norm(fit.means_A[:, None] - means[None], axis=-1)
    assert np.all(d.min(0) < 0.5)
    assert abs(fit.sigma_A - 3.0) < 0.2
    assert np.allclose(np.sort(fit.weights), np.sort(truth.weights), atol=0.02)


def test_gibbs_fit_to_map(rng):
    L, px = 24, 2.0
    means = np.array([[-10.0, 0, 0], [10, 0, 0]])
    truth = gmm.GaussianMixture(means, 1 / 9.0, np.array([0.5, 0.5]))
    vol = gmm.render_volume(truth, L, px)
    last, samples = gmm.fit_mixture_gibbs(vol, px, 2, n_sweeps=40, n_counts=4000, rng=2)
    m = np.mean([s.means_A for s in samples], axis=0)
    order = np.argsort(m[:, 0])
    assert np.abs(m[order] - means).max() < 0.8
    # voxel discretisation adds px²/12 of variance per axis
    assert abs(last.sigma_A - np.sqrt(9 + px ** 2 / 12)) < 0.3


def test_mixture_csv_roundtrip(tmp_path, rng):
    mix = gmm.GaussianMixture(rng.normal(size=(5, 3)) * 10, 1 / 16.0, rng.dirichlet(np.ones(5)))
    gmm.write_mixture_csv(tmp_path / "m.csv", mix)
    back = gmm.read_mixture_csv(tmp_path / "m.csv")
    assert np.allclose(back.means_A, mix.means_A, atol=1e-3)
    assert np.allclose(back.weights, mix.weights, rtol=1e-6)
    assert back.sigma_A == pytest.approx(4.0, abs=1e-3)


def test_mixture_to_mrc(tmp_path, rng):
    from cryoprism.io.mrc import read_mrc

    mix = gmm.GaussianMixture(rng.normal(size=(4, 3)) * 2, 1 / 9.0, np.ones(4) / 4)
    gmm.write_mixture_mrc(tmp_path / "m.mrc", mix, 24, 2.0)
    vol, vs = read_mrc(tmp_path / "m.mrc")
    assert vs == pytest.approx(2.0)
    assert abs(float(vol.sum()) * 8.0 - 1.0) < 1e-3
