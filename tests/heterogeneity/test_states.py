"""The split-sample eigenvalue test: its null distribution, its false-positive rate on homogeneous
data and its count on simulated states (known number of states and labels)."""

import numpy as np
from scipy.stats import norm

from cryoprism.forward import project
from cryoprism.heterogeneity.covariance import SubspaceSystem, estimate_mean
from cryoprism.heterogeneity.data import compute_residuals, prepare
from cryoprism.heterogeneity.states import (
    null_eigenvalues,
    sequential_count,
    split_test,
)
from cryoprism.io import ParticleStack

from .conftest import blob_states, simulate


def test_sequential_count_and_normal_tail():
    null = norm.ppf((np.arange(200) + 0.5) / 200, loc=10.0, scale=1.0)
    lam = np.array([30.0, 20.0, 10.5, 14.0])
    C, p = sequential_count(lam, null, alpha=1e-3)
    assert C == 3  # the run stops at the first eigenvalue inside the null (10.5)
    np.testing.assert_allclose(p, norm.sf((lam - null.mean()) / null.std(ddof=1)))


def test_null_eigenvalues_match_a_pure_noise_system():
    """Under pure noise c_s ~ N(0, σ² G_s): the null replicates' top eigenvalue has the distribution of
    the estimate computed from an independent pure-noise draw (same G, σ²)."""
    rng = np.random.default_rng(0)
    n, m, s2 = 3000, 6, 2.0
    X = rng.standard_normal((n, 10, m))
    G = np.einsum("sai,saj->sij", X, X)
    top = []
    for r in range(30):
        e = rng.standard_normal((n, 10)) * np.sqrt(s2)
        S, _ = SubspaceSystem(G, np.einsum("sai,sa->si", X, e), s2).solve()
        top.append(np.linalg.eigvalsh(S)[-1])
    null = null_eigenvalues(SubspaceSystem(G, np.zeros((n, m)), s2), replicates=30, seed=1)[:, 0]
    se = np.sqrt(np.var(top) / 30 + np.var(null) / 30)
    assert abs(np.mean(top) - np.mean(null)) < 4 * se
    assert 0.5 < np.std(null) / np.std(top) < 2.0


def _prepared(imgs, rot, p, px, N):
    d = prepare(ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, ctf=p),
        N, oversample=1.5, progress=False)
    A = estimate_mean(d, progress=False)
    compute_residuals(d, A.mean, progress=False)
    return d, A


def test_split_test_one_state_on_homogeneous_data():
    vol = blob_states(16)[0]
    _, rot, _, p, _, _, px = simulate(blob_states(16), 1500, 0.05, seed=4)
    from cryoprism.ctf.model import ctf_2d

    clean = project(vol, rot, None, ctf_2d(16, px, p))
    imgs = clean + np.random.default_rng(1).standard_normal(clean.shape) * clean.std() * 3
    d, A = _prepared(imgs.astype(np.float32), rot, p, px, 8)
    t = split_test(d, A, progress=False)
    assert t.n_states == 1
    assert t.p_values[0] > 1e-3


def test_two_states_counted_by_the_test_and_the_bic():
    """Eigenvalue 1 is significant (p < 1e-6); among the counts the test allows the BIC of the state
    mixture picks the true 2, and the pipeline uses it."""
    from cryoprism.heterogeneity.pipeline import analyze

    vols = blob_states(16)
    imgs, rot, org, p, lab, s2, px = simulate(vols, 1500, 0.05, seed=3)
    res = analyze(ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, ctf=p),
        8, reconstruct=False, refine_full=False, progress=False)
    t = res.state_test
    assert t.p_values[0] < 1e-6 and t.n_states_eig >= 2
    assert t.n_states_bic == 2 and res.n_states == 2
    assert "2 state(s)" in t.summary()
