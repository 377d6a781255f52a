"""The refinement's final reconstruction step as a function of the poses (the benchmark's fair oracle).

``reconstruct_gold_standard`` is the one code path of the final half-maps and full map: ``refine``
calls it at its own poses, the benchmark at the true poses. Ground truth here: a sum of Gaussian blobs
simulated at known poses with noise.
"""

import numpy as np

from cryoprism.forward import simulate_particles
from cryoprism.geometry.rotations import rotvec_to_matrix
from cryoprism.metrics.fsc import fsc
from cryoprism.refine.pipeline import reconstruct_gold_standard

L, PX = 24, 5.0


def _blobs(rng, n=10, radius=6.0, sigma=1.0):
    g = np.arange(L) - L // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    c = rng.standard_normal((n, 3))
    c *= radius * rng.random(n)[:, None] ** (1 / 3) / np.linalg.norm(c, axis=1, keepdims=True)
    v = sum(np.exp(-((z - a) ** 2 + (y - b) ** 2 + (x - d) ** 2) / (2 * sigma ** 2)) for a, b, d in c)
    return v.astype(np.float32)


def _data(n=600, snr=1.0):
    rng = np.random.default_rng(3)
    vol = _blobs(rng)
    sim = simulate_particles(vol, n, PX, snr=snr, shift_std_A=1.0 * PX, rng=4, progress=False)
    return vol, sim


def _mean_fsc(a, b, lo=6, hi=12):
    return float(np.mean(fsc(a, b, PX).curve[lo:hi + 1]))


def test_oracle_at_the_true_poses_beats_perturbed_poses_and_keeps_the_split():
    vol, sim = _data()
    stack = sim.particles
    rot, org = stack.rotations(np.arange(stack.n)), stack.origins_A(np.arange(stack.n))
    halves = np.arange(stack.n) % 2  # a split given explicitly is used as is
    g = reconstruct_gold_standard(stack, rot, org, halves)
    # the support radius comes from the data (the blobs reach ~6 + 3σ = 9 px), within the references' sphere
    assert 6.0 <= g.support_px <= L / 2 - 2
    good = _mean_fsc(g.volume, vol)
    assert good > 0.7
    # the halves are independent reconstructions of the two subsets: each agrees with the truth less
    # than the full map does
    assert all(_mean_fsc(h, vol) < good for h in g.half_maps)
    # poses rotated by 10° about random axes (each particle its own): worse against the truth
    rng = np.random.default_rng(5)
    v = rng.standard_normal((stack.n, 3))
    dr = rotvec_to_matrix(np.deg2rad(10.0) * v / np.linalg.norm(v, axis=1, keepdims=True))
    bad = reconstruct_gold_standard(stack, dr @ rot, org, halves, support_px=g.support_px)
    assert _mean_fsc(bad.volume, vol) < good - 0.05
    # given the radius the rule chose, the same maps come back (one radius for both halves and the full map)
    again = reconstruct_gold_standard(stack, rot, org, halves, support_px=g.support_px)
    np.testing.assert_allclose(again.volume, g.volume, atol=1e-4 * np.abs(g.volume).max())


def test_refine_final_maps_are_the_gold_standard_step_at_its_poses():
    from cryoprism.refine import refine

    vol, sim = _data(n=300, snr=1.0)
    stack = sim.particles
    r = refine(stack, vol, PX, progress=False, max_iterations=1, grid_size=576, regrid_size=576,
               coarse_grid_size=72)
    g = reconstruct_gold_standard(stack, r.rotations, r.origins_A, r.subsets - 1, support_px=r.info["support_px"])
    scale = np.abs(r.volume).max()
    np.testing.assert_allclose(g.volume, r.volume, atol=1e-4 * scale)
    for a, b in zip(g.half_maps, r.half_maps):
        np.testing.assert_allclose(a, b, atol=1e-4 * scale)
