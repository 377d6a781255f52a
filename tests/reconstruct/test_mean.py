"""Least-squares mean: Toeplitz normal operator and reconstruction of known volumes."""

import numpy as np
import pytest

from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.forward import backproject, gaussian_blob_volume, project
from cryoprism.geometry import uniform_rotations
from cryoprism.io import ParticleStack
from cryoprism.reconstruct import apply_kernel, conjugate_gradient, mean_kernel, reconstruct_mean


def _src(imgs, A, org, p, px):
    """The particles as a ParticleSource (origins given in pixels)."""
    return ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=A,
                                     origins_A=None if org is None else np.asarray(org) * px, ctf=p)



def _sym_ctf(rng, n, L):
    """A random CTF-like grid, even under k → -k on the kept frequencies (as a real CTF is)."""
    c = rng.uniform(-1, 1, (n, L, L))
    sh = -1 if L % 2 == 0 else 0
    return 0.5 * (c + np.flip(np.roll(c, sh, axis=(1, 2)), axis=(1, 2)))


@pytest.mark.parametrize("L", [12, 13])
def test_toeplitz_kernel_equals_PtP(rng, L):
    n = 40
    A = uniform_rotations(n, rng)
    ctf = _sym_ctf(rng, n, L)
    x = rng.standard_normal((L, L, L))
    ref = backproject(project(x, A, None, ctf), A, None, ctf)
    k = mean_kernel(A, L, ctf, dtype=np.float64, progress=False, batch_size=16)
    got = apply_kernel(k, x)
    assert np.linalg.norm(got - ref) <= 1e-9 * np.linalg.norm(ref)


def test_cg_solves_spd_system(rng):
    M = rng.standard_normal((30, 30))
    M = M @ M.T + 0.1 * np.eye(30)
    b = rng.standard_normal(30)
    x, info = conjugate_gradient(lambda v: M @ v, b, tol=1e-10, maxiter=300)
    np.testing.assert_allclose(x, np.linalg.solve(M, b), rtol=1e-6, atol=1e-8)
    assert info.converged


def test_reconstruct_blob_from_noiseless_projections_with_ctf(rng):
    L, n, px = 24, 600, 2.0
    vol = gaussian_blob_volume(L, [(3.0, 1.0, -2.0), (-3.0, 2.0, 2.0)], [2.0, 2.5], [1.0, 0.6])
    A = uniform_rotations(n, rng)
    org = rng.normal(0, 1.5, (n, 2))
    p = CTFParams(rng.uniform(8e3, 2e4, n), rng.uniform(8e3, 2e4, n), rng.uniform(0, 180, n))
    imgs = project(vol, A, org, ctf_2d(L, px, p))
    res = reconstruct_mean(_src(imgs, A, org, p, px), tol=1e-6, maxiter=200, progress=False)
    err = np.linalg.norm(res.volume - vol) / np.linalg.norm(vol)
    assert err < 2e-3, err
    # half-maps reconstruct the same blob from disjoint halves
    res2 = reconstruct_mean(_src(imgs, A, org, p, px), halfmaps=True, tol=1e-6, maxiter=200, progress=False)
    for h in res2.half_maps:
        assert np.linalg.norm(h - vol) / np.linalg.norm(vol) < 5e-3


def test_auto_regularization_estimates_noise_and_beats_plain_ls():
    L, n, px = 24, 800, 3.0
    vol = gaussian_blob_volume(L, [(3.0, 1.0, -2.0), (-3.0, 2.0, 2.0), (0.0, -4.0, 0.0)], [2.0, 2.5, 1.5],
                               [1.0, 0.6, 0.8])
    from cryoprism.forward import simulate_particles

    sim = simulate_particles(vol, n, px, snr=0.05, rng=21, progress=False, n_defocus_groups=8)
    plain = reconstruct_mean(sim.particles, regularization=0.0, maxiter=60, progress=False)
    auto = reconstruct_mean(sim.particles, regularization="auto", progress=False)
    assert abs(auto.info["noise_var_per_pixel"] / sim.noise_sigma**2 - 1) < 0.1
    e_plain = np.linalg.norm(plain.volume - vol) / np.linalg.norm(vol)
    e_auto = np.linalg.norm(auto.volume - vol) / np.linalg.norm(vol)
    assert e_auto < 0.8 * e_plain, (e_auto, e_plain)
