"""Gold standard: the support of the half-map reconstructions must not give the halves shared content.

A hard support that cuts into the particle multiplies its density by the same sharp edge in both
half-maps: that edge has power at every frequency, so the half-map FSC stays high where the truth has
no power at all (the refinement's gold-standard FSC claimed Nyquist; docs/refine.md, "Gold standard:
independence of the halves"). The truth here is a sum of Gaussian blobs (σ = 2.5 px): its power beyond
shell 12 of a 32³ box is below exp(−35) of its peak, so the FSC of two half-maps with independent
noise has mean 0 and standard deviation ≈ 1/√N_shell there.
"""

import numpy as np

from cryoprism.metrics.fsc import fsc
from cryoprism.reconstruct.mean import sphere_mask
from cryoprism.refine.pipeline import _support_radius

L = 32


def _blobs(rng, n=12, radius=9.0, sigma=2.5):
    g = np.arange(L) - L // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    c = rng.standard_normal((n, 3))
    c *= radius * rng.random(n)[:, None] ** (1 / 3) / np.linalg.norm(c, axis=1, keepdims=True)
    return sum(np.exp(-((z - a) ** 2 + (y - b) ** 2 + (x - d) ** 2) / (2 * sigma ** 2)) for a, b, d in c)


def _high_shell_fsc(h1, h2, lo=12, hi=15):
    f = fsc(h1, h2, 1.0)
    n = np.asarray(f.n_voxels[lo:hi + 1], float)
    z = float(np.sum(np.asarray(f.curve[lo:hi + 1]) * n) / n.sum())  # voxel-weighted mean over the band
    return z, 1.0 / np.sqrt(n.sum() / 2)  # (both Friedel halves counted: N/2 independent coefficients)


def test_support_cutting_the_particle_inflates_fsc_and_the_chosen_support_does_not():
    rng = np.random.default_rng(0)
    truth = _blobs(rng)
    noise = 0.3 * truth.std()
    halves = [truth + noise * rng.standard_normal(truth.shape) for _ in range(2)]
    # a support inside the particle: the shared edge correlates the halves far beyond the truth's band
    cut = sphere_mask(L, 6.0)
    z_cut, sd = _high_shell_fsc(*(h * cut for h in halves))
    assert z_cut > 10 * sd
    # the refinement's support (the joint radius) keeps the particle whole: FSC consistent with 0
    # (noisier halves, so that the radius comes from the data rather than the cap L/2 - 2)
    halves = [truth + 4 * truth.std() * rng.standard_normal(truth.shape) for _ in range(2)]
    r = _support_radius(halves, L)
    assert 9.0 <= r <= L / 2 - 2
    m = sphere_mask(L, r)
    z, sd = _high_shell_fsc(*(h * m for h in halves))
    assert abs(z) < 4 * sd
