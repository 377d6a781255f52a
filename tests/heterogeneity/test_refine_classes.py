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


def test_difference_ssnr_is_data_over_prior_precision():
    """A constant kernel K̂ = κ and prior Λ = λ give SSNR κ/λ on every shell; doubling Λ halves it."""
    from cryoprism.heterogeneity.refine_classes import difference_ssnr
    from cryoprism.reconstruct.mean import MeanKernel

    L = 8
    ker = MeanKernel(L, np.full((2 * L, 2 * L, L + 1), 6.0))
    lam = np.full((L, L, L // 2 + 1), 2.0)
    s = difference_ssnr(ker, lam)
    assert s.shape == (L // 2 + 1,)
    np.testing.assert_allclose(s, 3.0)
    np.testing.assert_allclose(difference_ssnr(ker, 2 * lam), 1.5)


def test_automatic_box_doubles_only_while_the_edge_has_snr():
    """Started at box 8 on 16² images: with threshold 0 it doubles to the full box, with an unreachable
    threshold it stays at 8; both classify near the oracle at their box."""
    vols = blob_states(16)
    imgs, rot, org, p, lab, s2, px = simulate(vols, 800, 0.05, seed=5)
    src = ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, ctf=p)
    c = ctf_2d(16, px, p)
    res = np.stack([np.sum((imgs - project(v, rot, None, c)) ** 2, axis=(1, 2)) for v in vols], 1)
    oracle = float(np.mean(np.argmin(res, 1) == lab))
    up = refine_classes(src, lab, 2, s2, start_box=8, box_ssnr=0.0, max_iterations=4, progress=False)
    stay = refine_classes(src, lab, 2, s2, start_box=8, box_ssnr=np.inf, max_iterations=4, progress=False)
    assert [st["box"] for st in up.info["stages"]] == [8, 16] and up.box == 16
    assert up.volumes.shape == (2, 16, 16, 16)
    assert [st["box"] for st in stay.info["stages"]] == [8] and stay.volumes.shape == (2, 8, 8, 8)
    assert matched_accuracy(lab, up.labels) > oracle - 0.03
    assert matched_accuracy(lab, stay.labels) > oracle - 0.05
