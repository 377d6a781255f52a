"""Automatic centring (``classify2d`` default ``centre="auto"``): on when the particles sit off-centre,
off when they are centred (analytic blob projections, known translations)."""

import numpy as np

from cryoprism.classify2d.pipeline import CENTRE_AUTO_RMS_PX, prepare
from cryoprism.io import ParticleStack

from .test_classify2d import L, project_blobs, project_blobs_shifted, uniform_rotations

FAST = dict(centre="auto", centre_refine_rounds=0, centre_sync_rounds=0, shift_search_px=(0, 0))


def _images(shift_sigma_px, rng, n=120):
    rots = uniform_rotations(n, rng)
    t = rng.normal(0, shift_sigma_px, (n, 2))
    clean = project_blobs_shifted(rots, t) if shift_sigma_px > 0 else project_blobs(rots)
    imgs = (clean + rng.normal(0, 0.5 * clean.std(), clean.shape)).astype(np.float32)
    return ParticleStack.from_arrays(imgs, pixel_size_A=1.0)


def test_auto_centring_stays_off_for_centred_particles():
    got = prepare(_images(0.0, np.random.default_rng(3)), **FAST).extras["centring_auto"]
    assert got["centre"] is False, got
    assert got["excess_rms_px"] < CENTRE_AUTO_RMS_PX


def test_auto_centring_turns_on_for_shifted_particles():
    prep = prepare(_images(3.0, np.random.default_rng(3)), **FAST)
    got = prep.extras["centring_auto"]
    assert got["centre"] is True, got
    # true rms offset 3·√2 ≈ 4.2 px: the excess over the null estimates it
    assert 2.5 < got["excess_rms_px"] < 6.0, got
    assert "centre_shifts_px" in prep.extras      # and the images were centred
    assert L == prep.basis.L
