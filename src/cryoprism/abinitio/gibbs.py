"""Gibbs sampler for Gaussian-mixture initial models from images with unknown rotations.

the Gaussian-mixture thesis, Algorithm 1 ("Poisson"/count model; conditionals as corrected in the thesis digest §2).
Each non-negative image is discretised into counts ``y_ij`` at pixel centres ``x_ij`` (Å); a count
is a 2-D point drawn from the projected mixture ``Σ_k w_k N₂(x | P_o(R_i μ_k + t_i), s⁻¹ I)``.
Latent variables: the component of every count and its missing depth (particle-frame z). With them
every conditional is standard:

1. assignments ``z ~ Categorical(r_·)``, ``r_k ∝ w_k N₂(x | c_ik, s⁻¹)``;
2. depths through sufficient statistics: per (image, component) ``N_ik`` counts, the sum of depths
   ``ν^m_ik ~ N(N_ik m_ik, N_ik/s)`` and their scatter ``~ χ²(N_ik − 1)/s``;
3. ``w ~ Dirichlet(N_k + α₀)``;
4. ``μ_k ~ N(s Σ_i R_iᵀ(ν_ik − N_ik t_i)/(s N_k + r), I/(s N_k + r))``;
5. ``s ~ Gamma(a + 3N/2, b + ½ Σ ‖x³ − (R μ + t)‖²)`` (rate parameterisation);
6. ``R_i ~ matrix-Fisher(F_i)``, ``F_i = s Σ_k (ν_ik − N_ik t_i) μ_kᵀ``;
7. ``t_i ~ N((1/N_i) Σ_k (ν_ik − N_ik R_i μ_k)_xy, I/(N_i s))``.

Rotations are RELION matrices ``A`` (volume → particle frame), so ``R_i = A_i``; the translation
``t_i = −origin_i`` (image = shift(projection, −origin)). Lengths in Å, precision in 1/Å².
The global rotation step draws ``N_R`` uniform rotations and samples one per image with weights
``∝ p(y_i | R_m, θ)`` (log-sum-exp), the latent-free likelihood evaluated by separable rendering.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import gammaln

from cryoprism.abinitio.gmm import (
    GaussianMixture,
    categorical,
    pixel_coords_A,
    projected_centres_A,
    render_images_from_centres,
)
from cryoprism.abinitio.so3 import sample_matrix_fisher
from cryoprism.geometry.rotations import uniform_rotations

_TINY = 1e-300


@dataclass(frozen=True)
class Priors:
    """Priors of both samplers (Å units): ``μ_k ~ N(0, r⁻¹I)`` (``mean_precision_invA2`` = r),
    ``s ~ Gamma(shape a, rate b)``, ``w ~ Dirichlet(α₀)``; rotations Haar, translations flat."""

    mean_precision_invA2: float
    s_shape: float = 10.0
    s_rate_A2: float = 1000.0
    alpha0: float = 10.0


@dataclass
class ChainState:
    """One chain: the mixture, every image's rotation (n, 3, 3) and translation ``t`` (n, 2) in Å
    (``t = −origin``), plus the bookkeeping needed to resume it."""

    means_A: np.ndarray
    precision_invA2: float
    weights: np.ndarray
    rotations: np.ndarray
    shifts_A: np.ndarray
    iteration: int = 0
    log_posterior: list = field(default_factory=list)

    @property
    def mixture(self) -> GaussianMixture:
        return GaussianMixture(self.means_A, self.precision_invA2, self.weights)

    def copy(self) -> "ChainState":
        return ChainState(self.means_A.copy(), float(self.precision_invA2), self.weights.copy(),
                          self.rotations.copy(), self.shifts_A.copy(), self.iteration,
                          list(self.log_posterior))


# --------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class CountData:
    """Counts ``(n, L, L)`` and their non-zero pixels (centres in Å) grouped by image."""

    counts: np.ndarray
    pixel_size_A: float
    pixels_A: np.ndarray      # (M, 2) [x, y] of the non-zero pixels
    pixel_counts: np.ndarray  # (M,)
    image_of: np.ndarray      # (M,)
    starts: np.ndarray        # (n + 1,) offsets of each image's pixels

    @property
    def n(self) -> int:
        return int(self.counts.shape[0])

    @property
    def L(self) -> int:
        return int(self.counts.shape[-1])


def images_to_counts(images, n_counts: int = 1000) -> np.ndarray:
    """Discretise non-negative images: ``y_j = round(λ_j N₀ / Σ_j λ_j)`` (negative pixels → 0)."""
    im = np.clip(np.asarray(images, dtype=np.float64), 0.0, None)
    tot = im.sum(axis=(-2, -1), keepdims=True)
    tot = np.where(tot > 0, tot, 1.0)
    return np.rint(im * (n_counts / tot)).astype(np.int64)


def count_data(counts, pixel_size_A: float) -> CountData:
    """Index the non-zero pixels of integer counts ``(n, L, L)``."""
    counts = np.asarray(counts, dtype=np.int64)
    n, L, _ = counts.shape
    flat = counts.reshape(n, -1)
    img, pix = np.nonzero(flat)
    iy, ix = np.divmod(pix, L)
    x = pixel_coords_A(L, pixel_size_A)
    starts = np.concatenate([[0], np.cumsum(np.count_nonzero(flat, axis=1))])
    return CountData(counts, float(pixel_size_A), np.stack([x[ix], x[iy]], axis=1), flat[img, pix],
                     img, starts)


def default_priors(data: CountData, **kw) -> Priors:
    """``r`` = precision of one isotropic Gaussian fitted to the counts (the Gaussian-mixture thesis default)."""
    d, w = data.pixels_A, data.pixel_counts.astype(np.float64)
    tot = np.maximum(np.bincount(data.image_of, weights=w, minlength=data.n), 1)
    cen = np.stack([np.bincount(data.image_of, weights=w * d[:, a], minlength=data.n) / tot
                    for a in range(2)], axis=1)
    var = np.sum(w * np.sum((d - cen[data.image_of]) ** 2, axis=1)) / w.sum() / 2.0
    return Priors(mean_precision_invA2=1.0 / var, **kw)


def _image_chunks(data: CountData, K: int, budget: int = 3_000_000):
    """Consecutive image ranges whose points × K stay under ``budget``."""
    out, a = [], 0
    per = np.diff(data.starts)
    while a < data.n:
        b, tot = a, 0
        while b < data.n and (tot + per[b]) * K <= budget or b == a:
            tot += per[b]
            b += 1
        out.append((a, b))
        a = b
    return out


# --------------------------------------------------------------------------------------------------
# latent variables → sufficient statistics


@dataclass
class Stats:
    """Sufficient statistics of the completed 3-D points per (image, component): ``N`` (n, K),
    ``nu`` = Σ points (n, K, 3) (particle frame), ``sq`` = Σ ‖point‖² (n, K)."""

    N: np.ndarray
    nu: np.ndarray
    sq: np.ndarray


def _draw_per_count(p, counts, rng):
    """For every row of (unnormalised) probabilities ``p`` (m, K), draw ``counts[row]`` categorical
    indices (inverse CDF: one cumulative sum per row, a binary search per count)."""
    c = np.cumsum(p, axis=1)
    c /= c[:, -1:]
    m, K = c.shape
    row = np.repeat(np.arange(m), counts)
    u = rng.random(row.size)
    flat = (c + np.arange(m)[:, None] * 2.0).ravel()       # rows separated: row r lives in [2r, 2r+1]
    k = np.searchsorted(flat, u + row * 2.0, side="right") - row * K
    return row, np.minimum(k, K - 1)


def sample_latents(state: ChainState, data: CountData, rng) -> Stats:
    """Steps 1–2: assignments of every count and the missing depths (as sufficient statistics).

    Assignment probabilities are computed once per non-zero pixel; the pixel's counts are drawn from
    them (equivalent to a multinomial over components per pixel)."""
    K = state.means_A.shape[0]
    s = float(state.precision_invA2)
    n = data.n
    N = np.zeros(n * K)
    Sx = np.zeros((n * K, 2))
    Sxx = np.zeros(n * K)
    c_all, m_all = projected_centres_A(state.means_A, state.rotations, -state.shifts_A)
    logw = np.log(np.maximum(state.weights, _TINY))
    for a, b in _image_chunks(data, K):
        p0, p1 = data.starts[a], data.starts[b]
        x = data.pixels_A[p0:p1]
        img = data.image_of[p0:p1]
        c = c_all[img]                                        # (m, K, 2)
        d2 = (x[:, None, 0] - c[..., 0]) ** 2 + (x[:, None, 1] - c[..., 1]) ** 2
        lp = logw[None] - 0.5 * s * d2
        lp -= lp.max(axis=1, keepdims=True)
        row, z = _draw_per_count(np.exp(lp), data.pixel_counts[p0:p1], rng)
        f = img[row] * K + z
        xr = x[row]
        N += np.bincount(f, minlength=n * K)
        Sx[:, 0] += np.bincount(f, weights=xr[:, 0], minlength=n * K)
        Sx[:, 1] += np.bincount(f, weights=xr[:, 1], minlength=n * K)
        Sxx += np.bincount(f, weights=(xr * xr).sum(1), minlength=n * K)
    N = N.reshape(n, K)
    # depths: each assigned count has depth ~ N(m_ik, 1/s) independently
    m = m_all
    sd = np.sqrt(N / s)
    zsum = N * m + sd * rng.standard_normal((n, K))
    scatter = rng.chisquare(np.maximum(N - 1, 1)) / s * (N >= 2)
    zsq = scatter + np.where(N > 0, zsum ** 2 / np.maximum(N, 1), 0.0)
    nu = np.concatenate([Sx.reshape(n, K, 2), zsum[..., None]], axis=-1)
    return Stats(N, nu, Sxx.reshape(n, K) + zsq)


def _centres3(state: ChainState) -> np.ndarray:
    c = np.einsum("nab,kb->nka", state.rotations, state.means_A)
    c[..., :2] += state.shifts_A[:, None, :]
    return c


def residual_sum(stats: Stats, state: ChainState) -> float:
    """Σ over completed points of ‖x³ − (R_i μ_k + t_i)‖² from the sufficient statistics."""
    c = _centres3(state)
    return float(np.sum(stats.sq - 2 * np.einsum("nki,nki->nk", stats.nu, c)
                        + stats.N * np.einsum("nki,nki->nk", c, c)))


# --------------------------------------------------------------------------------------------------
# conditionals


def update_weights(state: ChainState, stats: Stats, priors: Priors, rng) -> None:
    """Step 3."""
    state.weights = rng.dirichlet(stats.N.sum(0) + priors.alpha0)


def update_means(state: ChainState, stats: Stats, priors: Priors, rng) -> None:
    """Step 4: ``μ_k ~ N(s Σ_i R_iᵀ(ν_ik − N_ik t_i)/(s N_k + r), I/(s N_k + r))``."""
    s, r = float(state.precision_invA2), priors.mean_precision_invA2
    t3 = np.concatenate([state.shifts_A, np.zeros((state.shifts_A.shape[0], 1))], axis=1)
    v = stats.nu - stats.N[..., None] * t3[:, None, :]
    back = np.einsum("nba,nkb->ka", state.rotations, v)     # Σ_i R_iᵀ (ν − N t)
    prec = s * stats.N.sum(0) + r
    state.means_A = s * back / prec[:, None] + rng.standard_normal(back.shape) / np.sqrt(prec)[:, None]


def update_precision(state: ChainState, stats: Stats, priors: Priors, rng) -> None:
    """Step 5: ``s ~ Gamma(a + 3N/2, rate b + ½ Σ residual²)``."""
    Ntot = stats.N.sum()
    rate = priors.s_rate_A2 + 0.5 * residual_sum(stats, state)
    state.precision_invA2 = float(rng.gamma(priors.s_shape + 1.5 * Ntot, 1.0 / rate))


def update_rotations_local(state: ChainState, stats: Stats, rng) -> None:
    """Step 6: ``R_i ~ matrix-Fisher(s Σ_k (ν_ik − N_ik t_i) μ_kᵀ)``."""
    s = float(state.precision_invA2)
    t3 = np.concatenate([state.shifts_A, np.zeros((state.shifts_A.shape[0], 1))], axis=1)
    v = stats.nu - stats.N[..., None] * t3[:, None, :]
    F = s * np.einsum("nka,kb->nab", v, state.means_A)
    state.rotations = sample_matrix_fisher(F, rng)


def update_shifts(state: ChainState, stats: Stats, rng) -> None:
    """Step 7: ``t_i ~ N((1/N_i) Σ_k (ν_ik − N_ik R_i μ_k)_xy, I/(N_i s))`` (flat prior)."""
    s = float(state.precision_invA2)
    Rm = np.einsum("nab,kb->nka", state.rotations, state.means_A)[..., :2]
    Ni = stats.N.sum(1)
    num = (stats.nu[..., :2] - stats.N[..., None] * Rm).sum(1)
    mean = num / np.maximum(Ni, 1)[:, None]
    draw = mean + rng.standard_normal(mean.shape) / np.sqrt(np.maximum(Ni, 1) * s)[:, None]
    state.shifts_A = np.where(Ni[:, None] > 0, draw, state.shifts_A)


# --------------------------------------------------------------------------------------------------
# likelihood, posterior, global rotations


def image_log_likelihood(mix: GaussianMixture, rotations, shifts_A, counts, pixel_size_A: float):
    """``Σ_j y_ij log(p_i(x_j) · pixel²)`` per image (latent-free count likelihood), ``(n,)``."""
    c, _ = projected_centres_A(mix.means_A, rotations, -np.asarray(shifts_A))
    L = counts.shape[-1]
    dens = render_images_from_centres(c, mix.weights, mix.precision_invA2, L, pixel_size_A)
    return np.einsum("nyx,nyx->n", counts, np.log(dens * pixel_size_A ** 2 + _TINY))


def log_prior(state: ChainState, priors: Priors) -> float:
    """log p(μ) + log p(s) + log p(w) (rotations Haar and translations flat add constants)."""
    r = priors.mean_precision_invA2
    K = state.means_A.shape[0]
    lp = -0.5 * r * float(np.sum(state.means_A ** 2)) + 1.5 * K * np.log(r / (2 * np.pi))
    a, b, s = priors.s_shape, priors.s_rate_A2, state.precision_invA2
    lp += a * np.log(b) - gammaln(a) + (a - 1) * np.log(s) - b * s
    al = priors.alpha0
    lp += gammaln(K * al) - K * gammaln(al) + (al - 1) * float(np.sum(np.log(np.maximum(state.weights,
                                                                                     _TINY))))
    return float(lp)


def log_posterior(state: ChainState, data: CountData, priors: Priors) -> float:
    """Unnormalised log-posterior of the parameters (latent variables summed out)."""
    ll = image_log_likelihood(state.mixture, state.rotations, state.shifts_A, data.counts,
                              data.pixel_size_A)
    return float(ll.sum()) + log_prior(state, priors)


def global_rotation_loglik(mix: GaussianMixture, candidates, shifts_A, counts, pixel_size_A: float,
                           chunk: int = 256) -> np.ndarray:
    """``log p(y_i | R_m, θ)`` for every image i and candidate rotation m, ``(n, N_R)``.

    With all translations zero the candidate projections are rendered once and the likelihoods are
    one matrix product ``counts (n, L²) @ log p (L², N_R)``; otherwise per chunk of images.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n, L, _ = counts.shape
    shifts_A = np.asarray(shifts_A, dtype=np.float64)
    Y = counts.reshape(n, -1)
    out = np.empty((n, len(candidates)))
    shared = not np.any(shifts_A)
    for m0 in range(0, len(candidates), chunk):
        Rm = candidates[m0:m0 + chunk]
        if shared:
            c, _ = projected_centres_A(mix.means_A, Rm)
            dens = render_images_from_centres(c, mix.weights, mix.precision_invA2, L, pixel_size_A)
            out[:, m0:m0 + len(Rm)] = Y @ np.log(dens.reshape(len(Rm), -1) * pixel_size_A ** 2 + _TINY).T
        else:
            c, _ = projected_centres_A(mix.means_A, Rm)      # (M, K, 2)
            for i0 in range(0, n, 8):
                ci = c[None] + shifts_A[i0:i0 + 8, None, None, :]
                b = ci.shape[0]
                dens = render_images_from_centres(ci.reshape(-1, *c.shape[1:]), mix.weights,
                                                  mix.precision_invA2, L, pixel_size_A)
                logd = np.log(dens.reshape(b, len(Rm), -1) * pixel_size_A ** 2 + _TINY)
                out[i0:i0 + b, m0:m0 + len(Rm)] = np.einsum("bp,bmp->bm", Y[i0:i0 + b], logd)
    return out


def update_rotations_global(state: ChainState, data: CountData, n_rotations: int, rng) -> np.ndarray:
    """Global step: draw ``N_R`` Haar rotations, sample one per image ∝ likelihood. Returns the
    per-image log-likelihood of the chosen rotation."""
    cand = uniform_rotations(n_rotations, rng)
    ll = global_rotation_loglik(state.mixture, cand, state.shifts_A, data.counts, data.pixel_size_A)
    pick = categorical(ll, rng)
    state.rotations = cand[pick]
    return ll[np.arange(len(pick)), pick]


def candidate_loglik(mix: GaussianMixture, candidates, shifts_A, counts, pixel_size_A: float,
                     budget: int = 8_000_000) -> np.ndarray:
    """``log p(y_i | R_im, θ)`` for per-image candidate rotations ``(n, M, 3, 3)`` → ``(n, M)``."""
    counts = np.asarray(counts, dtype=np.float64)
    n, M = candidates.shape[:2]
    L = counts.shape[-1]
    Y = counts.reshape(n, -1)
    out = np.empty((n, M))
    step = max(1, budget // max(1, M * mix.K * L))
    for i0 in range(0, n, step):
        Rc = candidates[i0:i0 + step]
        b = Rc.shape[0]
        c, _ = projected_centres_A(mix.means_A, Rc.reshape(-1, 3, 3))
        c = c.reshape(b, M, -1, 2) + np.asarray(shifts_A, dtype=np.float64)[i0:i0 + b, None, None, :]
        dens = render_images_from_centres(c.reshape(b * M, -1, 2), mix.weights, mix.precision_invA2,
                                          L, pixel_size_A)
        logd = np.log(dens.reshape(b, M, -1) * pixel_size_A ** 2 + _TINY)
        out[i0:i0 + b] = np.einsum("bp,bmp->bm", Y[i0:i0 + b], logd)
    return out


def update_rotations_multiproposal(state: ChainState, data: CountData, rng, n_proposals: int = 32,
                                   scale_deg: float = 2.0) -> np.ndarray:
    """Local multiple-proposal Metropolis step on every image's rotation (beyond the thesis).

    An auxiliary centre ``C_i = R_i exp([δ₀]×)`` and ``n_proposals`` points ``C_i exp([δ_m]×)`` are
    drawn with isotropic Gaussian rotation vectors (``scale_deg``); one of the ``n_proposals + 1``
    points (current included) is chosen with probability ∝ its likelihood. The joint proposal is
    symmetric in all points, so the move leaves the posterior invariant (Calderhead 2014). It is a
    faster-mixing companion of the matrix-Fisher step, whose data augmentation (assignments and
    depths) moves a rotation only ~0.1–0.5° per sweep when each image has ~1000 counts.
    Returns the fraction of images whose rotation changed.
    """
    from cryoprism.abinitio.so3 import expmap

    n = state.rotations.shape[0]
    sig = np.deg2rad(scale_deg)
    C = state.rotations @ expmap(sig * rng.standard_normal((n, 3)))
    P = C[:, None] @ expmap(sig * rng.standard_normal((n, n_proposals, 3)))
    cand = np.concatenate([state.rotations[:, None], P], axis=1)
    ll = candidate_loglik(state.mixture, cand, state.shifts_A, data.counts, data.pixel_size_A)
    pick = categorical(ll, rng)
    state.rotations = cand[np.arange(n), pick]
    return float(np.mean(pick != 0))


# --------------------------------------------------------------------------------------------------
# sweeps and stages


def mixture_sweep(state: ChainState, data: CountData, priors: Priors, rng,
                  update_precision_too: bool = True) -> None:
    """Latents, then weights, means and precision (rotations and translations fixed)."""
    st = sample_latents(state, data, rng)
    update_weights(state, st, priors, rng)
    update_means(state, st, priors, rng)
    if update_precision_too:
        update_precision(state, st, priors, rng)


def rotation_sweep(state: ChainState, data: CountData, rng, shifts: bool = False) -> None:
    """Latents, then every image's rotation (matrix Fisher) and optionally its translation."""
    st = sample_latents(state, data, rng)
    update_rotations_local(state, st, rng)
    if shifts:
        st = sample_latents(state, data, rng)
        update_shifts(state, st, rng)


def full_sweep(state: ChainState, data: CountData, priors: Priors, rng, shifts: bool = True) -> None:
    """One sweep over all variables (steps 1–7) with one set of latents."""
    st = sample_latents(state, data, rng)
    update_weights(state, st, priors, rng)
    update_means(state, st, priors, rng)
    update_precision(state, st, priors, rng)
    update_rotations_local(state, st, rng)
    if shifts:
        update_shifts(state, st, rng)


def initial_state(data: CountData, K: int, priors: Priors, rng,
                  precision_invA2: float | None = None) -> ChainState:
    """Mixture and rotations drawn from the prior, translations zero (the Gaussian-mixture thesis, §3.4.1)."""
    means = rng.standard_normal((K, 3)) / np.sqrt(priors.mean_precision_invA2)
    s = priors.s_shape / priors.s_rate_A2 if precision_invA2 is None else precision_invA2
    return ChainState(means, float(s), np.full(K, 1.0 / K), uniform_rotations(data.n, rng),
                      np.zeros((data.n, 2)))


@dataclass(frozen=True)
class StageSettings:
    """Initial-stage settings (the Gaussian-mixture thesis defaults: K 100–200, 32² images, N₀ = 1000, N_R = 1000)."""

    n_alternations: int = 10
    mixture_sweeps: int = 10
    local_rotation_sweeps: int = 10
    n_rotations: int = 1000
    #: scales (degrees) of the multiple-proposal local moves after each global step (beyond the thesis)
    proposal_scales_deg: tuple = (5.0, 3.0, 2.0, 1.0)
    n_proposals: int = 32


def run_initial_stage(data: CountData, K: int, priors: Priors, rng, settings: StageSettings = StageSettings(),
                      state: ChainState | None = None, known_mixture: bool = False,
                      checkpoint=None) -> ChainState:
    """Alternate mixture updates (rotations fixed) and rotation updates (one global step then
    local matrix-Fisher steps), translations fixed at zero. ``known_mixture=True`` only samples the
    rotations (the thesis' rotations-only experiment). ``checkpoint(state)`` is called after every
    alternation; a state with ``iteration > 0`` resumes where it stopped."""
    rng = np.random.default_rng(rng)
    if state is None:
        state = initial_state(data, K, priors, rng)
    while state.iteration < settings.n_alternations:
        if not known_mixture:
            for _ in range(settings.mixture_sweeps):
                mixture_sweep(state, data, priors, rng)
        update_rotations_global(state, data, settings.n_rotations, rng)
        for sc in settings.proposal_scales_deg:
            update_rotations_multiproposal(state, data, rng, settings.n_proposals, sc)
        for _ in range(settings.local_rotation_sweeps):
            rotation_sweep(state, data, rng)
        state.iteration += 1
        state.log_posterior.append(log_posterior(state, data, priors))
        if checkpoint is not None:
            checkpoint(state)
    return state


def sample_mixture(mix: GaussianMixture, K: int, rng, precision_invA2: float | None = None) -> np.ndarray:
    """``K`` points drawn from a mixture (to start a refinement with more components)."""
    k = rng.choice(mix.K, size=K, p=np.asarray(mix.weights) / np.sum(mix.weights))
    return mix.means_A[k] + rng.standard_normal((K, 3)) / np.sqrt(mix.precision_invA2)


def refinement_state(initial: ChainState, K: int, rng, precision_scale: float = 4.0) -> ChainState:
    """Refinement start: the initial stage's rotations and translations, ``K`` components drawn from
    the initial-stage mixture with a ``precision_scale`` times higher precision (a sharper start than
    the prior draw of the thesis; the sampler forgets it within a few sweeps)."""
    means = sample_mixture(initial.mixture, K, rng)
    return ChainState(means, float(initial.precision_invA2 * precision_scale), np.full(K, 1.0 / K),
                      initial.rotations.copy(), initial.shifts_A.copy())


def run_refinement(data: CountData, state: ChainState, priors: Priors, rng, n_sweeps: int = 100,
                   burn_in: int = 50, thin: int = 10, shifts: bool = True, checkpoint=None,
                   samples: list | None = None, mp_every: int = 5, mp_scales_deg=(1.0, 0.5),
                   n_proposals: int = 16):
    """All variables jointly; returns ``(state, samples)`` with every ``thin``-th state after
    ``burn_in`` (for the posterior mean). ``state.iteration`` counts sweeps (resumable). Every
    ``mp_every`` sweeps the rotations also get multiple-proposal moves at ``mp_scales_deg``."""
    rng = np.random.default_rng(rng)
    samples = [] if samples is None else samples
    while state.iteration < n_sweeps:
        full_sweep(state, data, priors, rng, shifts=shifts)
        if mp_every and state.iteration % mp_every == 0:
            for sc in mp_scales_deg:
                update_rotations_multiproposal(state, data, rng, n_proposals, sc)
        state.iteration += 1
        if state.iteration % thin == 0 or state.iteration == n_sweeps:
            state.log_posterior.append(log_posterior(state, data, priors))
        if state.iteration > burn_in and (state.iteration - burn_in) % thin == 0:
            samples.append(state.copy())
        if checkpoint is not None and (state.iteration % thin == 0 or state.iteration == n_sweeps):
            checkpoint(state, samples)
    return state, samples


def posterior_mean_map(samples, L: int, pixel_size_A: float) -> np.ndarray:
    """Average of the rendered densities of the thinned samples (``[z, y, x]``, per Å³)."""
    from cryoprism.abinitio.gmm import render_volume

    if not samples:
        raise ValueError("no samples to average")
    acc = np.zeros((L, L, L))
    for st in samples:
        acc += render_volume(st.mixture if isinstance(st, ChainState) else st, L, pixel_size_A)
    return (acc / len(samples)).astype(np.float32)


def with_shifts(state: ChainState, shifts_A) -> ChainState:
    return replace(state, shifts_A=np.asarray(shifts_A, dtype=np.float64))
