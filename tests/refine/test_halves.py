"""Gold standard: the two halves start from independent copies of the reference, and the FSC counts as
validated only what they found beyond the start they shared.

Refined from one start, pure-noise particles reproduce that start in both halves (Einstein from noise),
and a hard reconstruction support spreads the shared band into every shell: the uncorrected half-map
FSC then claims resolution beyond the start's low-pass (docs/refine.md, "The gold standard and the
shared start").
"""

import numpy as np

from cryoprism.ctf import CTFParams
from cryoprism.fourier import fft3c, radial_index
from cryoprism.io import ParticleStack
from cryoprism.metrics.fsc import fsc
from cryoprism.refine import refine
from cryoprism.refine.pipeline import half_starts, independent_from_shell, initial_lowpass_A, shell_index

L, PX = 32, 5.0  # 160 Å box: the start is low-passed to 160/6 = 26.7 Å (shell 6)


def _blobs(rng, n=10, sigma=2.0):
    g = np.arange(L) - L // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    v = np.zeros((L,) * 3, np.float32)
    for c in rng.uniform(-L / 5, L / 5, (n, 3)):
        v += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * sigma ** 2)).astype(np.float32)
    return v


def test_half_starts_share_the_start_below_its_limit_and_nothing_beyond():
    rng = np.random.default_rng(3)
    start = _blobs(rng, sigma=1.0)
    k0 = 6
    a, b = half_starts(start, k0, seed=1)
    k = radial_index(start.shape)
    F, A, B = fft3c(start), fft3c(a), fft3c(b)
    low = k < k0
    assert np.allclose(A[low], F[low], atol=1e-3 * np.abs(F).max())       # the start itself below k0
    assert np.allclose(B[low], F[low], atol=1e-3 * np.abs(F).max())
    assert np.allclose(np.abs(A[~low]), np.abs(F[~low]), rtol=1e-3, atol=1e-4 * np.abs(F).max())  # amplitudes
    c = fsc(a, b, 1.0).curve
    n = fsc(a, b, 1.0).n_voxels
    for s in range(k0 + 1, L // 2):  # independent phases: FSC ~ N(0, 1/√(N/2))
        assert abs(c[s]) < 5 / np.sqrt(n[s] / 2)


def _noise_stack(n, rng):
    df = rng.uniform(1.0e4, 2.5e4, n)
    imgs = rng.standard_normal((n, L, L)).astype(np.float32)
    return ParticleStack.from_arrays(imgs, pixel_size_A=PX, ctf=CTFParams(df, df))


KW = dict(max_iterations=2, grid_size=576, regrid_size=576, coarse_grid_size=576, progress=False)


def test_pure_noise_refined_from_one_start_claims_no_resolution_beyond_the_start():
    rng = np.random.default_rng(0)
    start = _blobs(rng)
    r = refine(_noise_stack(300, rng), start, PX, **KW)
    k_start = shell_index(initial_lowpass_A(L, PX), L, PX)
    first_free = independent_from_shell(initial_lowpass_A(L, PX), L, PX)
    assert r.info["independent_from_shell"] == first_free == int(k_start) + 1
    k143 = shell_index(r.resolution_A, L, PX)
    # the halves agree on the start they shared (Einstein from noise), and on nothing beyond it
    assert k_start - 1 < k143 < first_free
    assert not r.info["resolution_validated"]
    assert r.fsc.curve[first_free] < 0.143


def test_real_signal_is_validated_beyond_the_start():
    from cryoprism.forward import simulate_particles

    rng = np.random.default_rng(1)
    truth = _blobs(rng, sigma=1.0)
    sim = simulate_particles(truth, 300, PX, snr=1.0, defocus_range_A=(1.0e4, 2.5e4), rng=2, progress=False)
    r = refine(sim.particles, truth, PX, **KW)
    assert r.info["resolution_validated"]
    assert shell_index(r.resolution_A, L, PX) > r.info["independent_from_shell"] + 2
