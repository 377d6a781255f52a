"""Ab-initio Gibbs defaults adapt to the data's box: no refinement sweeps when the images are not
finer than the initial stage (the count-model chain would only drift from the reconstruction's
mixture, docs/defaults.md)."""

import numpy as np

from cryoprism.abinitio import pipeline
from cryoprism.abinitio.gmm import render_volume
from cryoprism.forward import gaussian_blob_volume, project
from cryoprism.geometry import uniform_rotations
from cryoprism.io import ParticleStack

TINY = dict(method="gibbs", K_initial=8, K_refine=12, restarts=1, n_alternations=1, n_rotations=40,
            n_counts_initial=200, n_counts_refine=500, progress=False)


def _images(L=16, n=8):
    rng = np.random.default_rng(2)
    vol = gaussian_blob_volume(L, [(2, 1, 0), (-2, -1, 2), (0, 3, -2)], [1.5, 2.0, 1.5])
    return project(vol, uniform_rotations(n, rng)).astype(np.float64)


def _source():
    return ParticleStack.from_arrays(_images(), pixel_size_A=8.0)


def test_gibbs_refinement_is_skipped_when_the_box_is_not_finer():
    res = pipeline.run_abinitio(_source(), initial_box=16, refine_box=16, seed=0, **TINY)
    assert res.refinement_trace == []          # no sweeps: the reconstruction's mixture is the result
    np.testing.assert_allclose(res.volume, render_volume(res.mixture, 16, 8.0), rtol=1e-5, atol=1e-8)


def test_gibbs_refinement_runs_when_the_box_is_finer_or_asked_for():
    finer = pipeline.run_abinitio(_source(), initial_box=8, refine_box=16, seed=0, **TINY)
    assert len(finer.refinement_trace) > 0
    asked = pipeline.run_abinitio(_source(), initial_box=16, refine_box=16, refine_sweeps=2, thin=1,
                                  seed=0, **TINY)
    assert len(asked.refinement_trace) > 0
