"""Isotropic Gaussian mixtures: analytic projection, rendering, fitting to a map, I/O.

Units: **Ångström** throughout. Means are ``(K, 3)`` positions ``(x, y, z)`` in Å from the box centre
(voxel ``L // 2``); the shared precision ``precision_invA2 = 1/σ²`` is in 1/Å²; the weights sum to 1.
The density is

    h(r) = Σ_k w_k (s/2π)^{3/2} exp(−s/2 ‖r − μ_k‖²)          (per Å³, integrates to 1)

Projections follow docs/conventions.md: a rotation ``A`` (RELION matrix, volume → particle frame)
moves component ``k`` to ``A μ_k``; the image integrates along the particle z axis, and the image is
``shift(projection, −origin)``, so component ``k`` lands at ``c_k = (A μ_k)_xy − origin`` (Å from
the image centre, ``origin = (x, y)`` in Å). The projected density at image point ``x`` is

    p(x) = Σ_k w_k (s/2π) exp(−s/2 ‖x − c_k‖²)                 (per Å², integrates to 1)

evaluated exactly at pixel centres (no interpolation). See docs/abinitio.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoprism.errors import InputError

#: Gaussians are evaluated within this many standard deviations (rendering, fitting).
CUTOFF_SIGMA = 5.0


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic mixture: ``means_A`` (K, 3) [x, y, z] in Å, ``precision_invA2`` = 1/σ² (1/Å²),
    ``weights`` (K,) summing to 1."""

    means_A: np.ndarray
    precision_invA2: float
    weights: np.ndarray

    @property
    def K(self) -> int:
        return int(self.means_A.shape[0])

    @property
    def sigma_A(self) -> float:
        return float(1.0 / np.sqrt(self.precision_invA2))

    def rotated(self, G) -> "GaussianMixture":
        """The mixture with means ``G μ_k`` (``G`` a 3×3 matrix, e.g. a rotation or a mirror)."""
        return GaussianMixture(np.asarray(self.means_A) @ np.asarray(G).T, self.precision_invA2,
                               self.weights)


def pixel_coords_A(L: int, pixel_size_A: float) -> np.ndarray:
    """Coordinates (Å) of pixel centres along one axis: ``(i − L//2) · pixel_size_A``."""
    return (np.arange(L) - L // 2) * float(pixel_size_A)


def projected_centres_A(means_A, rotations, origins_A=None):
    """Image-plane centres ``(n, K, 2)`` [x, y] (Å) and depths ``(n, K)`` of every component.

    ``c_ik = (A_i μ_k)_xy − origin_i`` (docs/conventions.md: image = shift(projection, −origin)).
    """
    R = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    P = np.einsum("nab,kb->nka", R, np.asarray(means_A, dtype=np.float64))
    c = P[..., :2].copy()
    if origins_A is not None:
        c -= np.asarray(origins_A, dtype=np.float64).reshape(-1, 1, 2)
    return c, P[..., 2]


def _gauss_1d(coords, centres, s):
    """``exp(−s/2 (x − c)²)`` for centres ``(..., K)`` and coordinates ``(L,)`` → ``(..., K, L)``."""
    d = coords - centres[..., None]
    return np.exp(-0.5 * s * d * d)


def render_images_from_centres(centres_A, weights, precision_invA2, L: int, pixel_size_A: float,
                               normalized: bool = True) -> np.ndarray:
    """Σ_k w_k (s/2π) exp(−s/2 ‖x − c_k‖²) at the ``L × L`` pixel centres, for centres ``(n, K, 2)``.

    Separable: ``image = Gyᵀ diag(w) Gx`` per image, one batched matmul (cost n·K·L²).
    ``weights`` is ``(K,)`` or ``(n, K)``. ``normalized=False`` drops the factor ``s/2π``.
    """
    s = float(precision_invA2)
    x = pixel_coords_A(L, pixel_size_A)
    c = np.asarray(centres_A, dtype=np.float64)
    gx = _gauss_1d(x, c[..., 0], s)           # (n, K, L) along x
    gy = _gauss_1d(x, c[..., 1], s)           # (n, K, L) along y
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), c.shape[:-1])
    if normalized:
        w = w * (s / (2 * np.pi))
    return np.matmul(np.swapaxes(gy * w[..., None], -1, -2), gx)   # (n, L(y), L(x))


def project_mixture(mix: GaussianMixture, rotations, L: int, pixel_size_A: float,
                    origins_A=None) -> np.ndarray:
    """Analytic projections ``(n, L, L)`` [y, x] of the mixture (per Å², exact at pixel centres).

    ``rotations`` (n, 3, 3) RELION matrices; ``origins_A`` (n, 2) [x, y] in Å (RELION origins).
    Multiply by ``pixel_size_A²`` for the mass per pixel.
    """
    c, _ = projected_centres_A(mix.means_A, rotations, origins_A)
    return render_images_from_centres(c, mix.weights, mix.precision_invA2, L, pixel_size_A)


def _window_offsets(radius_px: int, dim: int) -> np.ndarray:
    r = np.arange(-radius_px, radius_px + 1)
    grids = np.meshgrid(*([r] * dim), indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)    # (n_win, dim) in array-axis order


def _component_windows(means_A, precision_invA2, L, pixel_size_A, cutoff_sigma, chunk):
    """Yield ``(k0, k1, flat_index (c, W), values (c, W), rel (c, W, 3))`` for component chunks.

    ``values = exp(−s/2 ‖r − μ_k‖²)`` on the voxels within ``cutoff_sigma·σ`` of μ_k (0 elsewhere and
    outside the box, where ``flat_index`` is set to 0); ``rel`` is ``r − μ_k`` in Å, order (x, y, z).
    """
    s = float(precision_invA2)
    sigma = 1.0 / np.sqrt(s)
    rad = int(np.ceil(cutoff_sigma * sigma / pixel_size_A)) + 1
    off = _window_offsets(rad, 3)                         # (W, 3) as (dz, dy, dx)
    mu = np.asarray(means_A, dtype=np.float64)
    for k0 in range(0, mu.shape[0], chunk):
        m = mu[k0:k0 + chunk]
        # nearest voxel of each mean, array order (z, y, x)
        idx0 = np.rint(m[:, ::-1] / pixel_size_A).astype(np.int64) + L // 2
        vox = idx0[:, None, :] + off[None]                # (c, W, 3) array index
        pos = (vox - L // 2) * pixel_size_A               # Å, (z, y, x)
        rel = pos[..., ::-1] - m[:, None, :]              # (x, y, z) Å
        d2 = np.einsum("cwi,cwi->cw", rel, rel)
        inside = np.all((vox >= 0) & (vox < L), axis=-1) & (d2 <= (cutoff_sigma * sigma) ** 2)
        val = np.where(inside, np.exp(-0.5 * s * d2), 0.0)
        flat = np.where(inside, (vox[..., 0] * L + vox[..., 1]) * L + vox[..., 2], 0)
        yield k0, k0 + m.shape[0], flat, val, rel


def render_volume(mix: GaussianMixture, L: int, pixel_size_A: float,
                  cutoff_sigma: float = CUTOFF_SIGMA, chunk: int = 256) -> np.ndarray:
    """The mixture density (per Å³) at the voxel centres of an ``L³`` box, ``[z, y, x]`` float32.

    Each Gaussian is evaluated only within ``cutoff_sigma`` standard deviations of its mean (batched
    over components, accumulated with ``bincount``; cost ∝ K σ³).
    """
    s = float(mix.precision_invA2)
    norm = (s / (2 * np.pi)) ** 1.5
    out = np.zeros(L ** 3)
    w = np.asarray(mix.weights, dtype=np.float64)
    for k0, k1, flat, val, _ in _component_windows(mix.means_A, s, L, pixel_size_A, cutoff_sigma,
                                                   chunk):
        out += np.bincount(flat.ravel(), weights=(val * (w[k0:k1, None] * norm)).ravel(),
                           minlength=L ** 3)
    return out.reshape(L, L, L).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# fitting a mixture to a map


def fit_mixture_em(volume, pixel_size_A: float, K: int, n_iter: int = 60, sigma_A: float | None = None,
                   threshold: float | None = None, rng=None, prior_a: float = 1.0,
                   prior_b: float = 0.0, alpha0: float = 1.0, fix_precision: bool = False,
                   cutoff_sigma: float = CUTOFF_SIGMA, chunk: int = 256,
                   init: GaussianMixture | None = None) -> GaussianMixture:
    """MAP-EM fit of a K-component isotropic mixture to a density map (voxel values as weights).

    Voxels above ``threshold`` (default: 0) count with weight ``value − threshold``; the weights are
    scaled to sum to the number of such voxels (the number of "points"). E-step responsibilities use
    the 5σ windows: ``r_vk = w_k N(x_v|μ_k) / Σ_k' w_k' N(x_v|μ_k')``. M-step (the Gaussian-mixture thesis, digest §2,
    with a flat mean prior): ``μ_k = Σ_v y_v r_vk x_v / N_k``,
    ``s = (3N + 2(a−1)) / (Σ y r ‖x − μ‖² + 2b)``, ``w_k ∝ N_k + α₀ − 1``.
    """
    rng = np.random.default_rng(rng)
    vol = np.asarray(volume, dtype=np.float64)
    L = vol.shape[0]
    if vol.shape != (L, L, L):
        raise InputError(f"volume: expected a cubic map, got shape {vol.shape}")
    thr = 0.0 if threshold is None else float(threshold)
    y = np.clip(vol - thr, 0.0, None).ravel()
    npos = int(np.count_nonzero(y))
    if npos == 0:
        raise InputError("volume: no voxel above the threshold to fit a mixture to")
    y *= npos / y.sum()
    coords = np.stack(np.meshgrid(*([pixel_coords_A(L, pixel_size_A)] * 3), indexing="ij"), -1)
    coords = coords.reshape(-1, 3)[:, ::-1]                   # (x, y, z) Å per flat voxel
    if init is not None:
        mu, s, w = np.array(init.means_A, float), float(init.precision_invA2), np.array(init.weights, float)
    else:
        pick = rng.choice(L ** 3, size=K, replace=npos < K, p=y / y.sum())
        mu = coords[pick] + rng.normal(scale=0.3 * pixel_size_A, size=(K, 3))
        if sigma_A is None:
            # a rough size: equal share of the occupied volume per component
            sigma_A = 0.5 * (npos / K) ** (1 / 3) * pixel_size_A
        s = 1.0 / sigma_A ** 2
        w = np.full(K, 1.0 / K)
    for _ in range(int(n_iter)):
        norm = (s / (2 * np.pi)) ** 1.5
        # pass 1: the mixture density at each voxel (denominator of the responsibilities)
        dens = np.zeros(L ** 3)
        wins = list(_component_windows(mu, s, L, pixel_size_A, cutoff_sigma, chunk))
        for k0, k1, flat, val, _ in wins:
            dens += np.bincount(flat.ravel(), weights=(val * (w[k0:k1, None] * norm)).ravel(),
                                minlength=L ** 3)
        ratio = np.where(dens > 0, y / np.where(dens > 0, dens, 1.0), 0.0)
        # pass 2: weighted responsibilities and the sufficient statistics
        Nk = np.zeros(K)
        S1 = np.zeros((K, 3))
        sq = 0.0
        for k0, k1, flat, val, rel in wins:
            yr = val * (w[k0:k1, None] * norm) * ratio[flat]          # y_v r_vk
            Nk[k0:k1] = yr.sum(1)
            S1[k0:k1] = np.einsum("cw,cwi->ci", yr, rel)              # Σ y r (x − μ_old)
        new_mu = mu + S1 / np.maximum(Nk, 1e-12)[:, None]
        for k0, k1, flat, val, rel in wins:
            yr = val * (w[k0:k1, None] * norm) * ratio[flat]
            d = rel - (new_mu[k0:k1] - mu[k0:k1])[:, None, :]
            sq += float(np.einsum("cw,cwi,cwi->", yr, d, d))
        empty = Nk < 1e-8
        if np.any(empty):  # re-initialise dead components on the density
            new_mu[empty] = coords[rng.choice(L ** 3, size=int(empty.sum()), p=y / y.sum())]
        mu = new_mu
        N = Nk.sum()
        if not fix_precision:
            s = (3 * N + 2 * (prior_a - 1)) / (sq + 2 * prior_b)
        w = np.maximum(Nk + alpha0 - 1, 1e-12)
        w /= w.sum()
    return GaussianMixture(mu, float(s), w)


def fit_mixture_gibbs(volume, pixel_size_A: float, K: int, n_sweeps: int = 100,
                      n_counts: int = 20000, rng=None, prior_a: float = 1.0, prior_b: float = 0.0,
                      alpha0: float = 10.0, burn_in: int | None = None, thin: int = 5):
    """Gibbs fit of a mixture to a map (the Gaussian-mixture thesis, §2.2.3 on counts): the map is discretised into
    ``n_counts`` points at voxel centres (multinomial with probabilities ∝ positive voxel values),
    then assignments, weights, means (flat prior) and the precision are sampled in turn.

    Returns ``(last_mixture, samples)`` where ``samples`` are every ``thin``-th mixture after burn-in.
    """
    rng = np.random.default_rng(rng)
    vol = np.asarray(volume, dtype=np.float64)
    L = vol.shape[0]
    y = np.clip(vol, 0.0, None).ravel()
    if y.sum() <= 0:
        raise InputError("volume: no positive voxel to fit a mixture to")
    counts = rng.multinomial(int(n_counts), y / y.sum())
    idx = np.repeat(np.arange(L ** 3), counts)
    zz, yy, xx = np.unravel_index(idx, (L, L, L))
    X = np.stack([xx, yy, zz], 1).astype(np.float64) - L // 2
    X *= pixel_size_A
    N = X.shape[0]
    mu = X[rng.choice(N, K, replace=False)]
    s = 1.0 / (0.5 * (np.count_nonzero(y) / K) ** (1 / 3) * pixel_size_A) ** 2
    w = np.full(K, 1.0 / K)
    burn_in = n_sweeps // 2 if burn_in is None else burn_in
    samples = []
    for it in range(int(n_sweeps)):
        z = np.empty(N, dtype=np.int64)
        for a in range(0, N, 4096):
            xa = X[a:a + 4096]
            d2 = (xa * xa).sum(1)[:, None] - 2 * xa @ mu.T + (mu * mu).sum(1)[None]
            z[a:a + 4096] = categorical(np.log(w)[None] - 0.5 * s * d2, rng)
        Nk = np.bincount(z, minlength=K).astype(np.float64)
        Sx = np.zeros((K, 3))
        for i in range(3):
            Sx[:, i] = np.bincount(z, weights=X[:, i], minlength=K)
        w = rng.dirichlet(Nk + alpha0)
        prec = s * Nk + 1e-12
        mean = np.where(Nk[:, None] > 0, Sx / np.maximum(Nk, 1)[:, None], mu)
        mu = np.where(Nk[:, None] > 0, mean + rng.standard_normal((K, 3)) / np.sqrt(prec)[:, None], mu)
        sq = float(((X - mu[z]) ** 2).sum())
        s = rng.gamma(prior_a + 1.5 * N, 1.0 / (prior_b + 0.5 * sq))
        if it >= burn_in and (it - burn_in) % thin == 0:
            samples.append(GaussianMixture(mu.copy(), float(s), w.copy()))
    return GaussianMixture(mu, float(s), w), samples


def categorical(logp, rng) -> np.ndarray:
    """One draw per row from unnormalised log-probabilities ``(m, K)`` (inverse CDF, log-sum-exp safe)."""
    logp = np.asarray(logp, dtype=np.float64)
    p = np.exp(logp - logp.max(axis=-1, keepdims=True))
    c = np.cumsum(p, axis=-1)
    u = rng.random(c.shape[:-1] + (1,)) * c[..., -1:]
    return np.minimum((c < u).sum(-1), logp.shape[-1] - 1)


# --------------------------------------------------------------------------------------------------
# I/O


def mixture_table(mix: GaussianMixture):
    """The mixture as a table: columns x_A, y_A, z_A, weight, sigma_A (σ repeated per row)."""
    import pandas as pd

    m = np.asarray(mix.means_A, dtype=np.float64)
    return pd.DataFrame({"x_A": np.round(m[:, 0], 4), "y_A": np.round(m[:, 1], 4), "z_A": np.round(m[:, 2], 4),
                         "weight": np.asarray(mix.weights, dtype=np.float64),
                         "sigma_A": np.full(len(m), round(float(mix.sigma_A), 4))})


def write_mixture_csv(path, mix: GaussianMixture) -> None:
    """:func:`mixture_table` as CSV, written atomically."""
    from cryoprism.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        mixture_table(mix).to_csv(tmp, index=False)


def read_mixture_csv(path) -> GaussianMixture:
    """Inverse of :func:`write_mixture_csv`."""
    path = Path(path)
    try:
        a = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as e:
        raise InputError(f"{path}: expected columns x_A,y_A,z_A,weight,sigma_A ({e})", path) from e
    if a.shape[1] != 5:
        raise InputError(f"{path}: expected 5 columns x_A,y_A,z_A,weight,sigma_A", path)
    return GaussianMixture(a[:, :3], float(1.0 / a[0, 4] ** 2), a[:, 3] / a[:, 3].sum())


def write_mixture_mrc(path, mix: GaussianMixture, L: int, pixel_size_A: float) -> np.ndarray:
    """Render the mixture on an ``L³`` grid and write it as MRC (``cryoprism.io.write_mrc``)."""
    try:
        from cryoprism.io import write_mrc
    except ImportError:  # until the io package re-exports it
        from cryoprism.io.mrc import write_mrc

    vol = render_volume(mix, L, pixel_size_A)
    write_mrc(path, vol, pixel_size_A)
    return vol
