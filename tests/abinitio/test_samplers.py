"""Gibbs / HMC samplers: invariances, gradients, matrix-Fisher moments, rotation recovery, resume."""

import numpy as np
import pytest

from cryoprism.abinitio import gibbs, gmm, hmc, pipeline, so3
from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.geometry.rotations import angular_distance_deg, quaternion_to_matrix, uniform_rotations
from cryoprism.io import ParticleStack

J = np.diag([1.0, 1.0, -1.0])


def _small_problem(rng, n=4, K=7, L=20, px=4.0):
    mix = gmm.GaussianMixture(rng.normal(scale=12, size=(K, 3)), 1 / 36.0, rng.dirichlet(np.ones(K) * 3))
    R = uniform_rotations(n, rng)
    img = gmm.project_mixture(mix, R, L, px)
    return mix, R, img


def test_bingham_quadratic_form(rng):
    F = rng.normal(size=(5, 3, 3))
    q = rng.normal(size=(5, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    lhs = np.einsum("nab,nab->n", F, quaternion_to_matrix(q))
    rhs = np.einsum("ni,nij,nj->n", q, so3.fisher_to_bingham(F), q)
    assert np.allclose(lhs, rhs, atol=1e-12)


def _fisher_moments_by_quadrature(F, n=72):
    """E[R] under p(R) ∝ exp(tr(Fᵀ R)) by ZYZ Euler quadrature with the Haar density sin θ."""
    a = (np.arange(n) + 0.5) * 2 * np.pi / n
    b = (np.arange(n // 2) + 0.5) * np.pi / (n // 2)
    A, B, G = np.meshgrid(a, b, a, indexing="ij")
    from scipy.spatial.transform import Rotation

    R = Rotation.from_euler("ZYZ", np.stack([A.ravel(), B.ravel(), G.ravel()], 1)).as_matrix()
    logp = np.einsum("ab,nab->n", F, R)
    w = np.exp(logp - logp.max()) * np.sin(B.ravel())
    return np.einsum("n,nab->ab", w, R) / w.sum()


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])
def test_matrix_fisher_moments(rng, scale):
    G = uniform_rotations(1, rng)[0]
    F = scale * (G @ np.diag([1.0, 0.6, 0.2]) @ uniform_rotations(1, rng)[0])
    ref = _fisher_moments_by_quadrature(F)
    S = so3.sample_matrix_fisher(np.repeat(F[None], 40000, 0), rng)
    se = S.std(0) / np.sqrt(len(S))
    assert np.all(np.abs(S.mean(0) - ref) < 5 * se + 2e-3)


def test_count_log_posterior_invariances(rng):
    mix, R, img = _small_problem(rng)
    data = gibbs.count_data(gibbs.images_to_counts(img, 500), 4.0)
    pri = gibbs.default_priors(data)
    st = gibbs.ChainState(mix.means_A, mix.precision_invA2, mix.weights, R, np.zeros((4, 2)))
    lp = gibbs.log_posterior(st, data, pri)
    G = uniform_rotations(1, rng)[0]
    rot = gibbs.ChainState(mix.means_A @ G.T, mix.precision_invA2, mix.weights, R @ G.T, np.zeros((4, 2)))
    mir = gibbs.ChainState(mix.means_A @ J, mix.precision_invA2, mix.weights, J @ R @ J, np.zeros((4, 2)))
    assert gibbs.log_posterior(rot, data, pri) == pytest.approx(lp, rel=1e-10)
    assert gibbs.log_posterior(mir, data, pri) == pytest.approx(lp, rel=1e-10)
    # and it can tell a wrong rotation
    bad = gibbs.ChainState(mix.means_A, mix.precision_invA2, mix.weights, uniform_rotations(4, rng),
                           np.zeros((4, 2)))
    assert gibbs.log_posterior(bad, data, pri) < lp - 10


def _hmc_setup(rng, ctf=True):
    n, L, px, K = 3, 22, 4.0, 6
    c = None
    if ctf:
        c = ctf_2d(L, px, CTFParams(np.array([12000.0, 18000, 24000]), np.array([11000.0, 19000, 24500]),
                                    np.array([0.0, 40, 80]))).astype(np.float64)
    data = hmc.GaussData(rng.normal(size=(n, L, L)), px, c)
    st = hmc.HMCState(rng.normal(scale=12, size=(K, 3)), 1 / 40.0, rng.uniform(1, 2, n), 1.5,
                      uniform_rotations(n, rng), rng.normal(size=(n, 2)))
    return data, st, hmc.HMCPriors(1 / 300.0)


def test_hmc_log_posterior_invariances(rng):
    data, st, pri = _hmc_setup(rng)
    lp = hmc.log_posterior(st, data, pri)
    G = uniform_rotations(1, rng)[0]
    a = st.copy()
    a.means_A = st.means_A @ G.T
    a.rotations = st.rotations @ G.T
    b = st.copy()
    b.means_A = st.means_A @ J
    b.rotations = J @ st.rotations @ J
    assert hmc.log_posterior(a, data, pri) == pytest.approx(lp, rel=1e-10)
    assert hmc.log_posterior(b, data, pri) == pytest.approx(lp, rel=1e-10)


@pytest.mark.parametrize("ctf", [False, True])
def test_hmc_gradients_finite_differences(rng, ctf):
    data, st, pri = _hmc_setup(rng, ctf)
    E, g = hmc.energy_means(st.means_A, st, data, pri)
    h = 1e-5
    num = np.zeros_like(g)
    for k in range(g.shape[0]):
        for j in range(3):
            m = st.means_A.copy()
            m[k, j] += h
            ep = hmc.energy_means(m, st, data, pri)[0]
            m[k, j] -= 2 * h
            num[k, j] = (ep - hmc.energy_means(m, st, data, pri)[0]) / (2 * h)
    assert np.abs(num - g).max() < 1e-5 * np.abs(g).max()
    E, g = hmc.energy_rotations(st.rotations, st, data)
    num = np.zeros_like(g)
    for a in range(3):
        v = np.zeros((len(E), 3))
        v[:, a] = h
        ep = hmc.energy_rotations(so3.expmap(v) @ st.rotations, st, data)[0]
        em = hmc.energy_rotations(so3.expmap(-v) @ st.rotations, st, data)[0]
        num[:, a] = (ep - em) / (2 * h)
    assert np.abs(num - g).max() < 1e-5 * np.abs(g).max()


def test_global_rotation_energy_matches_direct(rng):
    data, st, pri = _hmc_setup(rng)
    cand = uniform_rotations(5, rng)
    E = hmc.global_rotation_energy(st.means_A, st.precision_invA2, st.beta, cand, st.shifts_A, data)
    for m in range(5):
        R = np.repeat(cand[m][None], data.n, 0)
        yt = hmc.model_images(st.means_A, st.precision_invA2, R, st.shifts_A, data.L, data.pixel_size_A,
                              data.ctf)
        # profile λ in closed form, directly in real space
        lam = (yt * data.images).sum((1, 2)) / (yt * yt).sum((1, 2))
        res = data.images - lam[:, None, None] * yt
        direct = 0.5 * st.beta * (res ** 2).sum((1, 2)) + 0.5 * np.log(st.beta * (yt * yt).sum((1, 2)))
        # Fourier shifts are circular; tolerance covers the wrap of the tiny shifts used here
        assert np.allclose(E[:, m], direct, rtol=2e-3)


def test_gibbs_recovers_rotations_with_known_mixture(rng):
    """Tiny rotations-only run: 6 images, the generating mixture known, 3000 counts per image."""
    K, L, px, n = 30, 24, 5.0, 6
    mix = gmm.GaussianMixture(rng.normal(scale=[25, 15, 10], size=(K, 3)), 1 / 30.0,
                              rng.dirichlet(np.ones(K) * 5))
    R = uniform_rotations(n, rng)
    data = gibbs.count_data(gibbs.images_to_counts(gmm.project_mixture(mix, R, L, px), 3000), px)
    pri = gibbs.default_priors(data)
    st = gibbs.ChainState(mix.means_A.copy(), mix.precision_invA2, mix.weights.copy(),
                          uniform_rotations(n, rng), np.zeros((n, 2)))
    st = gibbs.run_initial_stage(data, K, pri, rng, gibbs.StageSettings(
        n_alternations=1, n_rotations=2000, proposal_scales_deg=(5, 3, 2, 1, 0.5), local_rotation_sweeps=3),
        state=st, known_mixture=True)
    err = angular_distance_deg(st.rotations, R)
    assert np.median(err) < 3.0


def test_gibbs_conditionals_move_toward_truth(rng):
    """With rotations known, mixture sweeps from a prior draw fit the images (likelihood rises to
    within a few % of the generating mixture's)."""
    mix, R, img = _small_problem(rng, n=6)
    data = gibbs.count_data(gibbs.images_to_counts(img, 2000), 4.0)
    pri = gibbs.default_priors(data)
    st = gibbs.initial_state(data, 7, pri, rng)
    st.rotations = R.copy()
    truth = gibbs.ChainState(mix.means_A, mix.precision_invA2, mix.weights, R, np.zeros((6, 2)))
    ll_true = gibbs.image_log_likelihood(mix, R, truth.shifts_A, data.counts, 4.0).sum()
    ll0 = gibbs.image_log_likelihood(st.mixture, R, st.shifts_A, data.counts, 4.0).sum()
    for _ in range(60):
        gibbs.mixture_sweep(st, data, pri, rng)
    ll1 = gibbs.image_log_likelihood(st.mixture, R, st.shifts_A, data.counts, 4.0).sum()
    assert ll1 > ll0
    assert (ll_true - ll1) < 0.02 * abs(ll_true)


def test_shift_conditional_recovers_origins(rng):
    """Translations: with mixture and rotations known, the t-conditional finds t = −origin."""
    mix, R, _ = _small_problem(rng, n=5)
    origins = rng.normal(scale=6, size=(5, 2))
    img = gmm.project_mixture(mix, R, 20, 4.0, origins)
    data = gibbs.count_data(gibbs.images_to_counts(img, 3000), 4.0)
    st = gibbs.ChainState(mix.means_A, mix.precision_invA2, mix.weights, R, np.zeros((5, 2)))
    for _ in range(30):
        lat = gibbs.sample_latents(st, data, rng)
        gibbs.update_shifts(st, lat, rng)
    assert np.abs(st.shifts_A + origins).max() < 1.0


def test_checkpoint_resume_is_exact(tmp_path, rng):
    mix, R, img = _small_problem(rng, n=4)
    job = dict(method="gibbs", images=img, pixel_size_A=4.0, ctf=None, K=5, n_counts=300, seed=7,
               n_rotations=50)
    from cryoprism.io.checkpoint import Checkpoints

    straight = pipeline.run_restart(pipeline.RestartJob(n_alternations=2, **job))[0]
    ck = tmp_path / "ck"
    pipeline.run_restart(pipeline.RestartJob(n_alternations=1, checkpoints=Checkpoints(ck, {"t": 1}), **job))
    resumed = pipeline.run_restart(pipeline.RestartJob(n_alternations=2, checkpoints=Checkpoints(ck, {"t": 1}, True),
                                                       **job))[0]
    assert resumed.iteration == 2
    assert np.allclose(resumed.means_A, straight.means_A)
    assert np.allclose(resumed.rotations, straight.rotations)


def test_rotation_set_alignment_handles_mirror(rng):
    R = uniform_rotations(10, rng)
    G = uniform_rotations(1, rng)[0]
    T, err, mirrored = so3.best_alignment(R, J @ R @ J @ G.T)
    assert mirrored and err.max() < 1e-6
    mu = rng.normal(size=(4, 3))
    assert np.allclose(T @ (G @ J @ mu.T), mu.T)


def test_hmc_candidate_energy_matches_global(rng):
    """Per-image candidate energies equal the shared-candidate (Fourier) global energies."""
    data, st, pri = _hmc_setup(rng)
    st.shifts_A = np.zeros_like(st.shifts_A)
    cand = uniform_rotations(4, rng)
    E = hmc.global_rotation_energy(st.means_A, st.precision_invA2, st.beta, cand, st.shifts_A, data)
    Ec = hmc.candidate_energy(st, data, np.repeat(cand[None], data.n, 0))
    assert np.allclose(E, Ec, rtol=1e-8)


def test_ctf_model_images_match_rendered_projection(rng):
    """CTF-affected analytic projection (hmc.model_images) vs rendering the mixture, projecting it by
    the Fourier-slice route of cryoprism.forward with the CTF of cryoprism.ctf (independent path)."""
    from cryoprism.forward.projection import project

    K, L, px, n = 12, 48, 2.0, 3
    means = rng.normal(scale=8, size=(K, 3))
    s = 1 / 36.0
    R = uniform_rotations(n, rng)
    org = rng.normal(scale=3, size=(n, 2))
    ctf = ctf_2d(L, px, CTFParams(np.array([8000.0, 12000, 16000]), np.array([8500.0, 11000, 16500]),
                                  np.array([0.0, 30, 120]))).astype(np.float64)
    a = hmc.model_images(means, s, R, -org, L, px, ctf)
    vol = gmm.render_volume(gmm.GaussianMixture(means, s, np.full(K, 1.0 / K)), L, px).astype(np.float64)
    # render_volume is a density (per Å³); the model uses unnormalised Gaussians of unit weight:
    # Σ_k exp(−s/2 ‖x − c_k‖²) = K (2π/s) × (projected density per Å²)
    b = project(vol, R, origins_px=org / px, ctf=ctf) * px * K * 2 * np.pi / s
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-3
    # and the CTF matters: without it the two disagree
    assert np.linalg.norm(hmc.model_images(means, s, R, -org, L, px) - b) / np.linalg.norm(b) > 0.1


def test_wiener_nonnegative_recovers_projection(rng):
    mix, R, img = _small_problem(rng, n=3, K=10, L=32, px=4.0)
    ctf = ctf_2d(32, 4.0, CTFParams(np.full(3, 15000.0), np.full(3, 15000.0), np.zeros(3))).astype(np.float64)
    y = hmc.apply_ctf(img, ctf)
    y = y + 0.02 * y.std() * rng.standard_normal(y.shape)
    w = hmc.wiener_nonnegative(hmc.GaussData(y, 4.0, ctf), eps=0.01, threshold_sd=0.0)
    assert w.min() >= 0
    for i in range(3):
        assert np.corrcoef(w[i].ravel(), img[i].ravel())[0, 1] > 0.9
        assert np.corrcoef(y[i].ravel(), img[i].ravel())[0, 1] < np.corrcoef(w[i].ravel(), img[i].ravel())[0, 1]


def test_count_model_initialisation_picks_best_chain(rng, monkeypatch):
    mix, R, img = _small_problem(rng, n=5, K=8, L=24, px=4.0)
    data = hmc.GaussData(img * 1e3, 4.0, None)
    pri = hmc.default_priors(data)
    lps = []
    orig = gibbs.log_posterior

    def spy(st, d, p):
        v = orig(st, d, p)
        lps.append((v, st.rotations.copy()))
        return v

    monkeypatch.setattr(gibbs, "log_posterior", spy)
    st = hmc.count_model_initialisation(data, 8, pri, np.random.default_rng(0), hmc.HMCSettings(
        count_init_tries=3, count_init_alternations=2, n_rotations=50))
    # each chain logs its posterior after each of its 2 alternations, then is ranked by one more call
    ranked = lps[2::3]
    assert len(lps) == 9 and len(ranked) == 3
    best = max(ranked, key=lambda t: t[0])[1]
    assert np.allclose(st.rotations, best)
    assert st.means_A.shape == (8, 3) and st.beta > 0 and np.all(np.isfinite(st.scales))


def test_reconstruction_mixture_recovers_map(rng):
    """Mixture fitted to the reconstruction from CTF-affected projections with known rotations and
    shifts: its rendered map matches the generating mixture's (independent: rendered directly)."""
    K, L, px, n = 12, 24, 4.0, 150
    mix = gmm.GaussianMixture(rng.normal(scale=[12, 8, 6], size=(K, 3)), 1 / 25.0, np.full(K, 1.0 / K))
    R = uniform_rotations(n, rng)
    t = rng.normal(scale=6.0, size=(n, 2))
    p = CTFParams(rng.uniform(8e3, 1.5e4, n), rng.uniform(8e3, 1.5e4, n), rng.uniform(0, 180, n))
    ctf = ctf_2d(L, px, p, dtype=np.float64)
    y = hmc.model_images(mix.means_A, mix.precision_invA2, R, t, L, px, ctf)
    y = y + 0.05 * y.std() * rng.standard_normal(y.shape)

    def source(shifts_A):  # HMC translations t are minus the RELION origins
        return ParticleStack.from_arrays(y, pixel_size_A=px, rotations=R, origins_A=-shifts_A, ctf=p)

    fit = pipeline.reconstruction_mixture(source(t), K, n_iter=40, rng=0)
    assert fit.K == K
    ref = gmm.render_volume(mix, L, px).ravel()
    cc = np.corrcoef(gmm.render_volume(fit, L, px).ravel(), ref)[0, 1]
    assert cc > 0.95
    # wrong shifts (sign flipped) give a worse map: the translations are used
    bad = pipeline.reconstruction_mixture(source(-t), K, n_iter=40, rng=0)
    assert np.corrcoef(gmm.render_volume(bad, L, px).ravel(), ref)[0, 1] < 0.9
