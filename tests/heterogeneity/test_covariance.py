"""Covariance estimators against ground truth the tests compute: the simulated difference volume,
the simulated labels, and the forward model's own project/backproject."""

import numpy as np
import pytest

from cryoprism.forward import backproject, project
from cryoprism.fourier.resample import downsample
from cryoprism.heterogeneity.classify import matched_accuracy
from cryoprism.heterogeneity.covariance import (
    apply_data_term,
    covariance_full,
    covariance_lowrank,
    estimate_mean,
    per_image_backprojections,
    per_image_kernels,
)
from cryoprism.heterogeneity.data import compute_residuals, prepare, subspace_statistics
from cryoprism.heterogeneity.pipeline import analyze
from cryoprism.reconstruct import kernel_spatial

from .conftest import as_particles, blob_states, simulate


def _prepared(imgs, rot, org, p, px, N, oversample=1.0):
    d = prepare(as_particles(imgs, rot, org, p, px), N, oversample=oversample, progress=False)
    A = estimate_mean(d, progress=False)
    compute_residuals(d, A.mean, progress=False)
    return d, A


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_noise_variance_from_background(two_state_16):
    vols, imgs, rot, org, p, lab, sigma2, px = two_state_16
    d = prepare(as_particles(imgs, rot, org, p, px), 8, progress=False)
    # signal leaks little into the corners of a 16-px box with blobs of radius ~6 px
    assert d.info["noise_var_L"] == pytest.approx(sigma2, rel=0.08)
    assert d.noise_var == pytest.approx(d.info["noise_var_L"] * (8 / 16) ** 2)


def test_batched_operators_equal_forward_model():
    vols = blob_states(16)
    imgs, rot, org, p, lab, sigma2, px = simulate(vols, 120, 1.0, seed=1, origins_std_px=1.0)
    d = prepare(as_particles(imgs, rot, org, p, px), 9, progress=False)
    d.residuals = d.images.copy()
    V = np.random.default_rng(0).standard_normal((3, 9, 9, 9))
    G, c = subspace_statistics(d, V, progress=False)
    ctf = d.ctf_grid(0, d.n)
    P = np.stack([project(v, d.rotations, d.origins_px, ctf) for v in V])
    np.testing.assert_allclose(G, np.einsum("ibyx,jbyx->bij", P, P), rtol=1e-4, atol=1e-4 * np.abs(G).max())
    np.testing.assert_allclose(c, np.einsum("ibyx,byx->bi", P, d.residuals), atol=1e-4 * np.abs(c).max())
    D = apply_data_term(d, V)
    cc = np.einsum("ibyx,byx->ib", P, d.residuals)
    D2 = np.stack([backproject(d.residuals * cc[i][:, None, None], d.rotations, d.origins_px, ctf)
                   for i in range(3)]) / d.n
    np.testing.assert_allclose(D, D2, atol=1e-4 * np.abs(D2).max())
    # per-image pieces of the dense estimator
    g = per_image_backprojections(d, 0, 5)
    for s in range(5):
        ref = backproject(d.residuals[s:s + 1].astype(np.float64), d.rotations[s:s + 1],
                          d.origins_px[s:s + 1], ctf[s:s + 1])
        np.testing.assert_allclose(g[s].reshape(9, 9, 9), ref, atol=1e-6 * np.abs(ref).max())
    k = per_image_kernels(d, 0, 2)
    ref = kernel_spatial(d.rotations[:2], 9, ctf[:2], dtype=np.float64)
    np.testing.assert_allclose(k.sum(0).reshape(18, 18, 18), ref, atol=1e-6 * np.abs(ref).max())


def test_lowrank_eigenvector_and_classes(two_state_16):
    vols, imgs, rot, org, p, lab, sigma2, px = two_state_16
    res = analyze(as_particles(imgs, rot, org, p, px), 8, method="lowrank", reconstruct=False,
                  n_boot=10, progress=False)
    diff = _unit(downsample(vols[1] - vols[0], 8, ndim=3)[0])
    u = res.covariance.eigenvolumes[0]
    u = _unit(downsample(u, 8, ndim=3)[0]) if u.shape[-1] > 8 else _unit(u)  # measured band only
    assert abs(np.sum(u * diff)) > 0.9
    assert res.n_states == 2
    assert matched_accuracy(lab, res.labels) > 0.9


def test_full_and_lowrank_agree(two_state_16):
    vols, imgs, rot, org, p, lab, sigma2, px = two_state_16
    d, A = _prepared(imgs, rot, org, p, px, 6)
    full = covariance_full(d, maxiter=10, progress=False)
    low = covariance_lowrank(d, A, progress=False)
    diff = _unit(downsample(vols[1] - vols[0], 6, ndim=3)[0])
    assert abs(np.sum(full.eigenvolumes[0] * diff)) > 0.9
    assert abs(np.sum(full.eigenvolumes[0] * low.eigenvolumes[0])) > 0.9
    # one dominant eigenvalue in both, comparable sizes
    assert full.eigenvalues[0] > 2 * full.eigenvalues[1]
    assert low.eigenvalues[0] > 2 * low.eigenvalues[1]
    assert low.eigenvalues[0] == pytest.approx(full.eigenvalues[0], rel=0.35)


def test_homogeneous_data_gives_one_state():
    vols = blob_states(16)[:1]
    vols = np.concatenate([vols, vols])  # two identical "states"
    imgs, rot, org, p, lab, sigma2, px = simulate(vols + 0.0, 1200, 1.0, seed=5)
    # SNR_het is undefined (no heterogeneity): simulate() scaled noise on 0/0; use a fixed level
    rng = np.random.default_rng(0)
    clean = project(vols[0], rot, None, None)
    imgs = (clean + rng.standard_normal(clean.shape) * clean.std() * 3).astype(np.float32)
    res = analyze(as_particles(imgs, rot, None, None, px), 8, method="lowrank", reconstruct=False,
                  n_boot=5, progress=False)
    assert res.n_states == 1


def test_support_ball_confines_and_does_not_hurt(two_state_16):
    """With the particle inside the inscribed ball, restricting Σ to the ball leaves nothing outside it
    and finds the true difference volume at least as well as the unrestricted estimate."""
    from cryoprism.heterogeneity.covariance import support_ball

    vols, imgs, rot, org, p, lab, sigma2, px = two_state_16
    d, A = _prepared(imgs, rot, org, p, px, 6)
    diff = _unit(downsample(vols[1] - vols[0], 6, ndim=3)[0])
    g = np.arange(6) - 3
    outside = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) > 9
    np.testing.assert_array_equal(support_ball(6, 1.0) == 0, outside)
    assert support_ball(6, None) is None
    for est in (lambda s: covariance_full(d, maxiter=10, progress=False, support_radius=s),
                lambda s: covariance_lowrank(d, A, progress=False, support_radius=s)):
        on, off = est(1.0), est(None)
        u_on, u_off = on.eigenvolumes[0], off.eigenvolumes[0]
        assert np.abs(u_on[outside]).max() < 1e-8 * np.abs(u_on).max()
        assert np.abs(u_off[outside]).max() > 1e-3 * np.abs(u_off).max()  # the test can tell them apart
        assert abs(np.sum(u_on * diff)) > 0.9
        assert abs(np.sum(u_on * diff)) >= abs(np.sum(u_off * diff)) - 0.02
