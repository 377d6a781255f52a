"""The split-sample eigenvalue test: its null distribution, its false-positive rate on homogeneous
data and its count on simulated states (known number of states and labels)."""

import numpy as np
from scipy.stats import norm

from cryoprism.forward import project
from cryoprism.heterogeneity.covariance import SubspaceSystem, estimate_mean
from cryoprism.heterogeneity.data import compute_residuals, prepare
from cryoprism.heterogeneity.states import (
    LEAKAGE_FLOOR,
    null_eigenvalues,
    sequential_count,
    sequential_test,
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


def _synthetic_system(centres, n=3000, q=10, s2=1.0, seed=0):
    """Galerkin statistics of states ``centres (C, m)`` (equal proportions) seen through random
    per-particle operators ``X_s (q × m)``, with white noise of variance ``s2``: the true number of
    states is ``C``."""
    rng = np.random.default_rng(seed)
    m = centres.shape[1]
    X = rng.standard_normal((n, q, m))
    x = centres[rng.integers(0, len(centres), n)]
    x = x - centres.mean(0)
    z = np.einsum("sai,si->sa", X, x) + rng.standard_normal((n, q)) * np.sqrt(s2)
    sy = SubspaceSystem(np.einsum("sai,saj->sij", X, X), np.einsum("sai,sa->si", X, z), s2)
    return sy, sy.solve()[0]


def test_pure_noise_null_overcounts_a_strong_state_the_conditional_null_does_not():
    """Two states far above the noise: the cross terms between the first direction and the noise lift
    the later eigenvalues above the pure-noise null (the demo's failure), and the null that holds the
    two states (sequential_test) puts them back inside it."""
    m = 6
    sy, S = _synthetic_system(np.array([np.eye(m)[0] * 3.0, -np.eye(m)[0] * 3.0]))
    lam = np.sort(np.linalg.eigvalsh(S))[::-1]
    C0, _ = sequential_count(lam, null_eigenvalues(sy, 20, seed=1)[:, 0])
    assert C0 > 2
    C, p, _, nulls = sequential_test(sy, S, seed=1)
    assert C == 2 and p[0] < 1e-6 and p[1] > 0.01
    assert nulls[1].mean() > 2 * nulls[0].mean()  # the conditional null sits above the pure-noise one


def test_conditional_null_keeps_a_weaker_third_state():
    """Three states, the third direction's eigenvalue 8 % of the first (the weakest measured on 50S):
    still significant under the null of two states and above the leakage floor."""
    e = np.eye(6)
    sy, S = _synthetic_system(np.array([3.0 * e[0], -3.0 * e[0], 1.5 * e[1]]), n=4000)
    C, p, _, _ = sequential_test(sy, S, seed=1)
    assert C == 3 and p[1] < 1e-3 and p[2] > 1e-3


def test_leakage_floor_drops_a_significant_but_tiny_direction():
    """A third state whose eigenvalue is 1 % of the first is significant against the noise (p < α) but
    under LEAKAGE_FLOOR · λ_1, the size of a strong difference's model error: not counted, unless the
    floor is 0."""
    e = np.eye(6)
    sy, S = _synthetic_system(np.array([3.0 * e[0], -3.0 * e[0], 0.6 * e[1]]), n=4000)
    lam = np.sort(np.linalg.eigvalsh(S))[::-1]
    assert lam[1] < LEAKAGE_FLOOR * lam[0]
    C, p, _, _ = sequential_test(sy, S, seed=1)
    assert C == 2 and p[1] < 1e-3
    assert sequential_test(sy, S, seed=1, leakage_floor=0.0)[0] == 3


def test_null_with_signal_matches_independent_draws():
    """The null replicates of eigenvalue 2 under one known state direction have the distribution of
    eigenvalue 2 from independent simulations of that hypothesis (same operators)."""
    e = np.eye(5)
    centres = np.array([2.0 * e[0], -2.0 * e[0]])
    sy, _ = _synthetic_system(centres, n=2000, seed=0)
    rng = np.random.default_rng(5)
    # the same G_s with independent states and noise: c_s = G_s x_s + N(0, G_s)
    L = np.linalg.cholesky(sy.G)
    lam2 = []
    for r in range(30):
        x = centres[rng.integers(0, 2, sy.G.shape[0])]
        c = np.einsum("sij,sj->si", sy.G, x) + np.einsum("sij,sj->si", L, rng.standard_normal((sy.G.shape[0], 5)))
        lam2.append(np.sort(np.linalg.eigvalsh(SubspaceSystem(sy.G, c, 1.0).solve()[0]))[-2])
    null = null_eigenvalues(sy, 30, seed=2, top=2, signal=(centres, np.array([0.5, 0.5])))[:, 1]
    se = np.sqrt(np.var(lam2) / 30 + np.var(null) / 30)
    assert abs(np.mean(lam2) - np.mean(null)) < 4 * se
    assert 0.5 < np.std(null) / np.std(lam2) < 2.0
