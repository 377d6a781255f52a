"""HMC within Gibbs for the Gaussian-noise mixture model (the Gaussian-mixture thesis, Algorithm 2), with the CTF.

Model (Å units, RELION rotations ``A_i`` = the thesis' ``R_i``, ``t_i = −origin_i``)::

    g_i(x)  = Σ_k exp(−s/2 ‖x − c_ik‖²),   c_ik = (A_i μ_k)_xy + t_i        (pixel centres x)
    ŷ_i     = λ_i C_i g_i                  C_i x = Re ifft2c(ctf_i · fft2c(x))   (identity without CTF)
    y_i     ~ N(ŷ_i, β⁻¹ I)

Beyond the thesis: the CTF operator ``C_i`` (a real, even filter, so ``C_iᵀ = C_i``) is part of the
model, so CTF-affected particles or class averages need no deconvolution, and every image has its
own scale ``λ_i`` (flat prior; integrated out in the global-rotation and ``s`` steps, drawn exactly
otherwise). Energy of the means / of image i's rotation:

    E = β/2 Σ_i ‖y_i − λ_i C_i g_i‖² + r/2 Σ_k ‖μ_k‖²

Gradients (with ``G_i = β λ_i C_i(y_i − ŷ_i)`` and ``v_ijk`` the Gaussian values):
``∂E/∂c_ik = −s Σ_j G_ij v_ijk (x_j − c_ik)``, ``∂E/∂μ_k = Σ_i A_i[:2]ᵀ ∂E/∂c_ik + r μ_k``, and for a
rotation perturbed as ``exp([v]×) A_i`` at ``v = 0``: ``∂E/∂v_a = Σ_k ∂E/∂c_ik · (e_a × A_i μ_k)_xy``.
All sums over pixels are separable (``gyᵀ G gx`` products), so a gradient costs O(n K L²).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import gammaln

from cryoprism.abinitio.gmm import GaussianMixture, categorical, pixel_coords_A, projected_centres_A
from cryoprism.abinitio.so3 import expmap
from cryoprism.fourier.core import fft2c, ifft2c
from cryoprism.geometry.rotations import uniform_rotations


@dataclass(frozen=True)
class GaussData:
    """Images ``(n, L, L)``, optional centred CTF grids ``(n, L, L)`` and the pixel size (Å)."""

    images: np.ndarray
    pixel_size_A: float
    ctf: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def L(self) -> int:
        return int(self.images.shape[-1])


@dataclass(frozen=True)
class HMCPriors:
    """``μ ~ N(0, r⁻¹)``, ``s ~ Gamma(a, rate b)`` (1/Å²), ``β ~ Gamma(a_β, rate b_β)``."""

    mean_precision_invA2: float
    s_shape: float = 10.0
    s_rate_A2: float = 1000.0
    beta_shape: float = 1.0
    beta_rate: float = 1e-3


@dataclass
class HMCState:
    means_A: np.ndarray
    precision_invA2: float
    scales: np.ndarray          # λ_i (n,)
    beta: float
    rotations: np.ndarray
    shifts_A: np.ndarray        # t_i = −origin_i (n, 2)
    eps_means: float = 0.1
    eps_rot: np.ndarray | None = None
    iteration: int = 0
    log_posterior: list = field(default_factory=list)

    @property
    def mixture(self) -> GaussianMixture:
        K = self.means_A.shape[0]
        return GaussianMixture(self.means_A, self.precision_invA2, np.full(K, 1.0 / K))

    def copy(self) -> "HMCState":
        return HMCState(self.means_A.copy(), float(self.precision_invA2), self.scales.copy(),
                        float(self.beta), self.rotations.copy(), self.shifts_A.copy(),
                        float(self.eps_means), None if self.eps_rot is None else self.eps_rot.copy(),
                        self.iteration, list(self.log_posterior))


# --------------------------------------------------------------------------------------------------
# forward model and gradients


def apply_ctf(x, ctf):
    """``Re ifft2c(ctf · fft2c(x))`` (identity when ``ctf`` is None); self-adjoint for real even CTFs."""
    if ctf is None:
        return x
    return np.real(ifft2c(ctf * fft2c(x)))


def _factors(means_A, rotations, shifts_A, s, L, pixel_size_A):
    c, _ = projected_centres_A(means_A, rotations, -np.asarray(shifts_A))
    x = pixel_coords_A(L, pixel_size_A)
    dx = x - c[..., 0:1]                                     # (n, K, L)
    dy = x - c[..., 1:2]
    return c, dx, dy, np.exp(-0.5 * s * dx * dx), np.exp(-0.5 * s * dy * dy)


def model_images(means_A, s, rotations, shifts_A, L, pixel_size_A, ctf=None):
    """``C_i g_i`` (without λ), ``(n, L, L)``."""
    _, _, _, gx, gy = _factors(means_A, rotations, shifts_A, s, L, pixel_size_A)
    g = np.matmul(np.swapaxes(gy, -1, -2), gx)
    return apply_ctf(g, ctf)


def centre_gradients(means_A, s, scales, beta, rotations, shifts_A, data: GaussData):
    """Per-image data energy ``β/2 ‖y − λ C g‖²`` (n,) and its gradient w.r.t. the centres (n, K, 2)."""
    L = data.L
    _, dx, dy, gx, gy = _factors(means_A, rotations, shifts_A, s, L, data.pixel_size_A)
    g = np.matmul(np.swapaxes(gy, -1, -2), gx)
    yt = apply_ctf(g, data.ctf)
    res = data.images - scales[:, None, None] * yt
    E = 0.5 * beta * np.einsum("nyx,nyx->n", res, res)
    G = beta * scales[:, None, None] * apply_ctf(res, data.ctf)     # (n, L(y), L(x))
    # Σ_j G_j v_jk (x_j − c_k): x part = Σ_y gy_k(y) Σ_x G(y,x) gx_k(x) dx_k(x)
    Gx = np.matmul(G, np.swapaxes(gx * dx, -1, -2))                 # (n, L(y), K)
    Gy = np.matmul(G, np.swapaxes(gx, -1, -2))                      # (n, L(y), K)
    sx = np.einsum("nky,nyk->nk", gy, Gx)
    sy = np.einsum("nky,nyk->nk", gy * dy, Gy)
    dE_dc = -s * np.stack([sx, sy], axis=-1)
    return E, dE_dc


def energy_means(means_A, state: HMCState, data: GaussData, priors: HMCPriors):
    """Energy of the means and its gradient (3K)."""
    E, dc = centre_gradients(means_A, state.precision_invA2, state.scales, state.beta,
                             state.rotations, state.shifts_A, data)
    r = priors.mean_precision_invA2
    grad = np.einsum("nka,naj->kj", dc, state.rotations[:, :2, :]) + r * means_A
    return float(E.sum() + 0.5 * r * np.sum(means_A ** 2)), grad


def energy_rotations(rotations, state: HMCState, data: GaussData):
    """Per-image energies (n,) and left-trivialised gradients (n, 3) at ``exp([v]×) R``, v = 0."""
    E, dc = centre_gradients(state.means_A, state.precision_invA2, state.scales, state.beta,
                             rotations, state.shifts_A, data)
    P = np.einsum("nab,kb->nka", rotations, state.means_A)        # A_i μ_k
    # (e_a × p)_xy for a = x, y, z:
    # e_x × p = (0, −p_z, p_y); e_y × p = (p_z, 0, −p_x); e_z × p = (−p_y, p_x, 0)
    gx = -dc[..., 1] * P[..., 2]
    gy = dc[..., 0] * P[..., 2]
    gz = -dc[..., 0] * P[..., 1] + dc[..., 1] * P[..., 0]
    return E, np.stack([gx.sum(1), gy.sum(1), gz.sum(1)], axis=-1)


# --------------------------------------------------------------------------------------------------
# HMC moves


def hmc_means(state: HMCState, data: GaussData, priors: HMCPriors, rng, n_leapfrog: int = 10,
              adapt: bool = True, factor: float = 1.02) -> bool:
    """One leapfrog-HMC move of all 3K mean coordinates; ε ×factor on accept, ÷factor on reject
    (the thesis uses ×1.02 / ×0.98)."""
    eps = state.eps_means
    q = state.means_A.copy()
    E0, g = energy_means(q, state, data, priors)
    p = rng.standard_normal(q.shape)
    H0 = E0 + 0.5 * np.sum(p * p)
    p = p - 0.5 * eps * g
    for step in range(n_leapfrog):
        q = q + eps * p
        E, g = energy_means(q, state, data, priors)
        if step < n_leapfrog - 1:
            p = p - eps * g
    p = p - 0.5 * eps * g
    H1 = E + 0.5 * np.sum(p * p)
    ok = bool(np.isfinite(H1) and np.log(rng.random()) < H0 - H1)
    if ok:
        state.means_A = q
    if adapt:
        state.eps_means = eps * (factor if ok else 1.0 / factor)
    return ok


def hmc_rotations(state: HMCState, data: GaussData, rng, n_leapfrog: int = 10, adapt: bool = True,
                  factor: float = 1.02):
    """Leapfrog HMC on every image's rotation in exponential coordinates (Lie-group leapfrog:
    ``R ← exp(ε[p]×) R``), independent accept per image; per-image adaptive ε."""
    n = state.rotations.shape[0]
    if state.eps_rot is None:
        state.eps_rot = np.full(n, 0.01)
    eps = state.eps_rot[:, None]
    R = state.rotations.copy()
    E0, g = energy_rotations(R, state, data)
    p = rng.standard_normal((n, 3))
    H0 = E0 + 0.5 * np.sum(p * p, 1)
    p = p - 0.5 * eps * g
    for step in range(n_leapfrog):
        R = expmap(eps * p) @ R
        E, g = energy_rotations(R, state, data)
        if step < n_leapfrog - 1:
            p = p - eps * g
    p = p - 0.5 * eps * g
    H1 = E + 0.5 * np.sum(p * p, 1)
    ok = np.isfinite(H1) & (np.log(rng.random(n)) < H0 - H1)
    state.rotations = np.where(ok[:, None, None], R, state.rotations)
    if adapt:
        state.eps_rot = state.eps_rot * np.where(ok, factor, 1.0 / factor)
    return ok


# --------------------------------------------------------------------------------------------------
# Gibbs / MH steps for λ, β, s, t


def sample_scales(state: HMCState, data: GaussData, rng) -> None:
    """``λ_i ~ N(Σ y ỹ / Σ ỹ², 1/(β Σ ỹ²))`` with ``ỹ = C_i g_i`` (flat prior)."""
    yt = model_images(state.means_A, state.precision_invA2, state.rotations, state.shifts_A, data.L,
                      data.pixel_size_A, data.ctf)
    a = np.einsum("nyx,nyx->n", yt, yt) + 1e-300
    b = np.einsum("nyx,nyx->n", yt, data.images)
    state.scales = b / a + rng.standard_normal(a.shape) / np.sqrt(state.beta * a)


def sample_beta(state: HMCState, data: GaussData, priors: HMCPriors, rng) -> None:
    """Exact draw ``β ~ Gamma(a_β + PN/2, rate b_β + ½ Σ residual²)``."""
    yt = model_images(state.means_A, state.precision_invA2, state.rotations, state.shifts_A, data.L,
                      data.pixel_size_A, data.ctf)
    res = data.images - state.scales[:, None, None] * yt
    state.beta = float(rng.gamma(priors.beta_shape + 0.5 * res.size,
                                 1.0 / (priors.beta_rate + 0.5 * float(np.sum(res * res)))))


def _marginal_energy(yt, y, beta):
    """``−log ∫ p(y | λ ỹ) dλ`` per image (flat prior on λ), up to a constant."""
    a = np.einsum("nyx,nyx->n", yt, yt) + 1e-300
    b = np.einsum("nyx,nyx->n", yt, y)
    c = np.einsum("nyx,nyx->n", y, y)
    return 0.5 * beta * (c - b * b / a) + 0.5 * np.log(beta * a)


def mh_precision(state: HMCState, data: GaussData, priors: HMCPriors, rng, n_steps: int = 5,
                 step: float = 0.05) -> int:
    """Random-walk MH on log s with λ integrated out; returns the number of accepts."""
    def energy(s):
        yt = model_images(state.means_A, s, state.rotations, state.shifts_A, data.L,
                          data.pixel_size_A, data.ctf)
        E = float(_marginal_energy(yt, data.images, state.beta).sum())
        # Gamma prior on s, plus the Jacobian of the log-s walk
        return E - (priors.s_shape - 1) * np.log(s) + priors.s_rate_A2 * s - np.log(s)

    acc = 0
    s0 = state.precision_invA2
    E0 = energy(s0)
    for _ in range(n_steps):
        s1 = s0 * np.exp(step * rng.standard_normal())
        E1 = energy(s1)
        if np.log(rng.random()) < E0 - E1:
            s0, E0 = s1, E1
            acc += 1
    state.precision_invA2 = float(s0)
    return acc


def mh_shifts(state: HMCState, data: GaussData, rng, step_A: float | None = None) -> np.ndarray:
    """Random-walk MH on every image's translation (flat prior), independent accepts."""
    step_A = data.pixel_size_A * 0.5 if step_A is None else step_A
    E0, _ = centre_gradients(state.means_A, state.precision_invA2, state.scales, state.beta,
                             state.rotations, state.shifts_A, data)
    t1 = state.shifts_A + step_A * rng.standard_normal(state.shifts_A.shape)
    E1, _ = centre_gradients(state.means_A, state.precision_invA2, state.scales, state.beta,
                             state.rotations, t1, data)
    ok = np.log(rng.random(len(E0))) < E0 - E1
    state.shifts_A = np.where(ok[:, None], t1, state.shifts_A)
    return ok


# --------------------------------------------------------------------------------------------------
# global rotations, posterior


def global_rotation_energy(means_A, s, beta, candidates, shifts_A, data: GaussData, chunk: int = 256):
    """Marginal energy (λ integrated out) of every image under every candidate rotation, ``(n, N_R)``.

    Candidate projections ``g_m`` are rendered once; with ``Ŷ_i`` the data transform shifted by
    ``−t_i`` (shifts commute with the CTF), ``⟨y_i, C_i g_m⟩ = Re Σ_k conj(Ŷ_i) ctf_i Ĝ_m / L²`` and
    ``‖C_i g_m‖² = Σ_k ctf_i² |Ĝ_m|² / L²`` are two matrix products.
    """
    L = data.L
    n = data.n
    Y = fft2c(data.images)
    t = np.asarray(shifts_A, dtype=np.float64) / data.pixel_size_A
    if np.any(t):
        k = np.arange(L) - L // 2
        ph = np.exp(2j * np.pi * (k[None, None, :] * t[:, 0, None, None]
                                  + k[None, :, None] * t[:, 1, None, None]) / L)
        Y = Y * ph          # moves the data by −t_i
    ctf = np.ones((n, L, L)) if data.ctf is None else np.broadcast_to(data.ctf, (n, L, L))
    A = (np.conj(Y) * ctf).reshape(n, -1)
    B = (ctf * ctf).reshape(n, -1)
    c = np.einsum("nyx,nyx->n", data.images, data.images)
    out = np.empty((n, len(candidates)))
    for m0 in range(0, len(candidates), chunk):
        Rm = candidates[m0:m0 + chunk]
        g = model_images(means_A, s, Rm, np.zeros((len(Rm), 2)), L, data.pixel_size_A)
        Gm = fft2c(g).reshape(len(Rm), -1)
        b = np.real(A @ Gm.T) / L ** 2
        a = (B @ (np.abs(Gm) ** 2).T) / L ** 2 + 1e-300
        out[:, m0:m0 + len(Rm)] = 0.5 * beta * (c[:, None] - b * b / a) + 0.5 * np.log(beta * a)
    return out


def update_rotations_global(state: HMCState, data: GaussData, n_rotations: int, rng) -> None:
    cand = uniform_rotations(n_rotations, rng)
    E = global_rotation_energy(state.means_A, state.precision_invA2, state.beta, cand,
                               state.shifts_A, data)
    state.rotations = cand[categorical(-E, rng)]


def candidate_energy(state: HMCState, data: GaussData, candidates, budget: int = 8_000_000) -> np.ndarray:
    """λ-marginal energy of per-image candidate rotations ``(n, M, 3, 3)`` → ``(n, M)``."""
    n, M = candidates.shape[:2]
    L = data.L
    K = state.means_A.shape[0]
    out = np.empty((n, M))
    step = max(1, budget // max(1, M * K * L))
    for i0 in range(0, n, step):
        Rc = candidates[i0:i0 + step]
        b = Rc.shape[0]
        sh = np.repeat(state.shifts_A[i0:i0 + b], M, axis=0)
        g = model_images(state.means_A, state.precision_invA2, Rc.reshape(-1, 3, 3), sh, L,
                         data.pixel_size_A).reshape(b, M, L, L)
        if data.ctf is not None:
            g = apply_ctf(g, data.ctf[i0:i0 + b, None])
        y = np.broadcast_to(data.images[i0:i0 + b, None], g.shape)
        out[i0:i0 + b] = _marginal_energy(g.reshape(-1, L, L), y.reshape(-1, L, L),
                                          state.beta).reshape(b, M)
    return out


def update_rotations_multiproposal(state: HMCState, data: GaussData, rng, n_proposals: int = 32,
                                   scale_deg: float = 2.0) -> float:
    """Multiple-proposal Metropolis move on every rotation (see ``gibbs.update_rotations_multiproposal``),
    with λ integrated out."""
    n = state.rotations.shape[0]
    sig = np.deg2rad(scale_deg)
    C = state.rotations @ expmap(sig * rng.standard_normal((n, 3)))
    P = C[:, None] @ expmap(sig * rng.standard_normal((n, n_proposals, 3)))
    cand = np.concatenate([state.rotations[:, None], P], axis=1)
    pick = categorical(-candidate_energy(state, data, cand), rng)
    state.rotations = cand[np.arange(n), pick]
    return float(np.mean(pick != 0))


def log_posterior(state: HMCState, data: GaussData, priors: HMCPriors) -> float:
    """Unnormalised log-posterior (λ at its current value; flat priors on λ and t, Haar on R)."""
    yt = model_images(state.means_A, state.precision_invA2, state.rotations, state.shifts_A, data.L,
                      data.pixel_size_A, data.ctf)
    res = data.images - state.scales[:, None, None] * yt
    b = state.beta
    N = res.size
    lp = -0.5 * b * float(np.sum(res * res)) + 0.5 * N * np.log(b / (2 * np.pi))
    r = priors.mean_precision_invA2
    K = state.means_A.shape[0]
    lp += -0.5 * r * float(np.sum(state.means_A ** 2)) + 1.5 * K * np.log(r / (2 * np.pi))
    a, bb, s = priors.s_shape, priors.s_rate_A2, state.precision_invA2
    lp += a * np.log(bb) - gammaln(a) + (a - 1) * np.log(s) - bb * s
    a, bb = priors.beta_shape, priors.beta_rate
    lp += a * np.log(bb) - gammaln(a) + (a - 1) * np.log(b) - bb * b
    return float(lp)


def default_priors(data: GaussData, **kw) -> HMCPriors:
    """``r`` from the spread of the positive image mass (phase-flipped images when there is a CTF)."""
    L = data.L
    x = pixel_coords_A(L, data.pixel_size_A)
    im = data.images if data.ctf is None else apply_ctf(data.images, np.sign(data.ctf))
    im = np.clip(im - np.median(im), 0, None)
    w = im.sum(0)
    w = w / w.sum()
    mx, my = (w.sum(0) * x).sum(), (w.sum(1) * x).sum()
    var = (w.sum(0) * (x - mx) ** 2).sum() + (w.sum(1) * (x - my) ** 2).sum()
    return HMCPriors(mean_precision_invA2=2.0 / max(var, 1e-6), **kw)


def initial_state(data: GaussData, K: int, priors: HMCPriors, rng, precision_invA2: float | None = None):
    means = rng.standard_normal((K, 3)) / np.sqrt(priors.mean_precision_invA2)
    s = priors.s_shape / priors.s_rate_A2 if precision_invA2 is None else precision_invA2
    st = HMCState(means, float(s), np.ones(data.n), 1.0, uniform_rotations(data.n, rng),
                  np.zeros((data.n, 2)), eps_means=0.1 * data.pixel_size_A)
    sample_scales(st, data, rng)
    st.scales = np.abs(st.scales)
    sample_beta(st, data, priors, rng)
    return st


@dataclass(frozen=True)
class HMCSettings:
    n_alternations: int = 10
    mixture_moves: int = 10
    rotation_moves: int = 10
    n_rotations: int = 1000
    n_leapfrog: int = 10
    #: step-size adaptation factor of the initial stage (faster than the thesis' 1.02: the stage is short)
    adapt_factor: float = 1.1
    #: multiple-proposal local moves after each global step (beyond the thesis)
    proposal_scales_deg: tuple = (5.0, 3.0, 2.0, 1.0)
    n_proposals: int = 32
    #: count-model initialisation (beyond the thesis; 0 tries = the thesis' random start, and then
    #: every alternation starts with a global rotation step): ``count_init_tries`` short Gibbs chains
    #: of ``count_init_alternations`` on Wiener-filtered images, the best by log-posterior kept
    count_init_tries: int = 4
    count_init_alternations: int = 20
    count_init_counts: int = 1000
    #: global rotation step in every alternation (default: only without the count initialisation)
    global_step: bool | None = None


def _mixture_block(state, data, priors, rng, settings):
    for _ in range(settings.mixture_moves):
        sample_scales(state, data, rng)
        hmc_means(state, data, priors, rng, settings.n_leapfrog, factor=settings.adapt_factor)
        mh_precision(state, data, priors, rng)
        sample_beta(state, data, priors, rng)


def run_initial_stage(data: GaussData, K: int, priors: HMCPriors, rng, settings: HMCSettings = HMCSettings(),
                      state: HMCState | None = None, checkpoint=None) -> HMCState:
    """Alternate HMC on the means (with λ, s, β) and rotation updates (global step, then HMC),
    translations fixed; resumable through ``state.iteration``."""
    rng = np.random.default_rng(rng)
    if state is None:
        if settings.count_init_tries > 0:
            state = count_model_initialisation(data, K, priors, rng, settings)
        else:
            state = initial_state(data, K, priors, rng)
    glob = settings.count_init_tries == 0 if settings.global_step is None else settings.global_step
    while state.iteration < settings.n_alternations:
        _mixture_block(state, data, priors, rng, settings)
        if glob:
            update_rotations_global(state, data, settings.n_rotations, rng)
        for sc in settings.proposal_scales_deg:
            update_rotations_multiproposal(state, data, rng, settings.n_proposals, sc)
        sample_scales(state, data, rng)
        for _ in range(settings.rotation_moves):
            hmc_rotations(state, data, rng, settings.n_leapfrog, factor=settings.adapt_factor)
        state.iteration += 1
        state.log_posterior.append(log_posterior(state, data, priors))
        if checkpoint is not None:
            checkpoint(state)
    return state


def wiener_nonnegative(data: GaussData, eps: float = 0.1, threshold_sd: float = 1.0) -> np.ndarray:
    """Non-negative images for the count model: Wiener CTF correction ``ctf·Y/(ctf² + eps)`` (no
    filter without a CTF), minus the background median plus ``threshold_sd`` background standard
    deviations (background = pixels outside radius ``L/2 − 2``), clipped at 0."""
    im = np.asarray(data.images, dtype=np.float64)
    if data.ctf is not None:
        im = np.real(ifft2c(data.ctf * fft2c(im) / (data.ctf ** 2 + eps)))
    L = data.L
    yy, xx = np.mgrid[:L, :L] - L // 2
    bg = im[:, np.hypot(xx, yy) > L // 2 - 2]
    off = np.median(bg, axis=1) + threshold_sd * bg.std(axis=1)
    return np.clip(im - off[:, None, None], 0.0, None)


def count_model_initialisation(data: GaussData, K: int, priors: HMCPriors, rng,
                               settings: HMCSettings = HMCSettings()) -> HMCState:
    """Start of the HMC chain from the count model (``gibbs``, thesis Algorithm 1) run on
    :func:`wiener_nonnegative` images: ``settings.count_init_tries`` chains of
    ``settings.count_init_alternations`` alternations, the one with the highest count-model
    log-posterior kept; its means, precision and rotations start the Gaussian-model chain (λ and β
    drawn from their conditionals). Beyond the thesis: from a random start the HMC stage needs far
    more alternations than the count model (the means move by small HMC steps while the count
    model's Gibbs steps jump), and CTF-affected images cannot be used as counts directly."""
    from cryoprism.abinitio import gibbs

    cdata = gibbs.count_data(gibbs.images_to_counts(wiener_nonnegative(data), settings.count_init_counts),
                             data.pixel_size_A)
    cpri = gibbs.default_priors(cdata)
    best, best_lp = None, -np.inf
    for _ in range(settings.count_init_tries):
        st = gibbs.run_initial_stage(cdata, K, cpri, rng, gibbs.StageSettings(
            n_alternations=settings.count_init_alternations, n_rotations=settings.n_rotations))
        lp = gibbs.log_posterior(st, cdata, cpri)
        if lp > best_lp:
            best, best_lp = st, lp
    state = HMCState(best.means_A.copy(), float(best.precision_invA2), np.ones(data.n), 1.0,
                     best.rotations.copy(), np.zeros((data.n, 2)), eps_means=0.1 * data.pixel_size_A)
    sample_scales(state, data, rng)
    sample_beta(state, data, priors, rng)
    return state


def run_refinement(data: GaussData, state: HMCState, priors: HMCPriors, rng, n_sweeps: int = 100,
                   burn_in: int = 50, thin: int = 10, shifts: bool = True, n_leapfrog: int = 10,
                   checkpoint=None, samples: list | None = None):
    """All variables jointly; step sizes adapt during burn-in and are frozen after it."""
    rng = np.random.default_rng(rng)
    samples = [] if samples is None else samples
    while state.iteration < n_sweeps:
        adapt = state.iteration < burn_in
        sample_scales(state, data, rng)
        hmc_means(state, data, priors, rng, n_leapfrog, adapt=adapt)
        hmc_rotations(state, data, rng, n_leapfrog, adapt=adapt)
        mh_precision(state, data, priors, rng)
        if shifts:
            mh_shifts(state, data, rng)
        sample_beta(state, data, priors, rng)
        state.iteration += 1
        if state.iteration % thin == 0:
            state.log_posterior.append(log_posterior(state, data, priors))
        if state.iteration > burn_in and (state.iteration - burn_in) % thin == 0:
            samples.append(state.copy())
        if checkpoint is not None and (state.iteration % thin == 0 or state.iteration == n_sweeps):
            checkpoint(state, samples)
    return state, samples
