"""ML 3-D classification with fixed poses, against simulated labels and the oracle (true volumes)."""

import numpy as np

from cryoprism.ctf.model import ctf_2d
from cryoprism.forward import project
from cryoprism.heterogeneity.classify import matched_accuracy
from cryoprism.heterogeneity.refine_classes import _posteriors, refine_classes
from cryoprism.io import ParticleStack

from .conftest import blob_states, simulate


def test_posteriors_are_normalised_bayes():
    ll = np.array([[0.0, -1.0], [-3.0, -3.0]])
    g, lm = _posteriors(ll, np.log([0.25, 0.75]))
    p0 = 0.25 / (0.25 + 0.75 * np.exp(-1.0))
    np.testing.assert_allclose(g[0], [p0, 1 - p0])
    np.testing.assert_allclose(g[1], [0.25, 0.75])
    np.testing.assert_allclose(lm, np.log([0.25 + 0.75 * np.exp(-1.0), np.exp(-3.0)]))


def test_refinement_reaches_the_oracle_from_corrupted_labels():
    """Started from labels with 30 % flipped, the EM recovers the oracle's accuracy (true volumes,
    true poses and CTF) within 1.5 points, and its log-likelihood does not decrease."""
    vols = blob_states(16)
    imgs, rot, org, p, lab, s2, px = simulate(vols, 1500, 0.02, seed=3)
    c = ctf_2d(16, px, p)
    res = np.stack([np.sum((imgs - project(v, rot, None, c)) ** 2, axis=(1, 2)) for v in vols], 1)
    oracle = float(np.mean(np.argmin(res, 1) == lab))
    init = np.where(np.random.default_rng(0).random(lab.size) < 0.3, 1 - lab, lab)
    r = refine_classes(ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, ctf=p),
        init, 2, s2, progress=False)
    acc = matched_accuracy(lab, r.labels)
    assert acc > oracle - 0.015
    assert matched_accuracy(lab, init) < 0.75
    assert np.all(np.diff(r.log_likelihood) > -1e-6 * abs(r.log_likelihood[-1]))
    assert r.volumes.shape == (2, 16, 16, 16)
    np.testing.assert_allclose(r.proportions, np.bincount(lab) / lab.size, atol=0.05)
