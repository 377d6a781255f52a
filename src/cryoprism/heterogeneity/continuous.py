"""Continuous heterogeneity: the particles' density in the eigenvolume coordinates, volumes along the
principal directions and along a high-density path, written as MRC series and a GIF.

After the covariance (:mod:`cryoprism.heterogeneity.covariance`), each particle has Wiener coordinates
``α_s`` on the leading eigenvolumes and their posterior covariance ``Σ_s``. For a continuous motion
the particles fill a curve or a sheet in that space instead of separate clusters. This module

0. computes the coordinates as posterior means under their own distribution deconvolved from the
   data (:func:`deconvolved_coordinates`, a grid prior fitted by EM as the nonparametric maximum
   likelihood of Kiefer & Wolfowitz 1956) instead of the Gaussian prior of the Wiener coordinates:
   a curved path in the coordinate space then pins each particle's position along it;
1. estimates the density of the coordinates (Gaussian kernel density, bandwidth by Scott's rule or
   from the coordinates' posterior covariance, as RECOVAR of Gilles & Singer 2024 uses the
   coordinates' uncertainty);
2. picks volumes along each principal direction at percentiles of its coordinate (the
   "intermediates" of cryoSPARC 3DVA, Punjani & Fleet 2021) and along the highest-density path
   between two modes of the density (a shortest path on a k-nearest-neighbour graph of the
   coordinates whose edges cost length / density, in the spirit of RECOVAR's paths);
3. reconstructs each point's volume at the full box from the particles nearest that point
   (:func:`cryoprism.reconstruct.reconstruct_mean` on a subset: full-resolution volumes from the
   data, not only the low-rank model), optionally also the low-rank volume ``μ + U a(t)``;
4. places every particle along the path by its full-box likelihood against the path volumes and
   rebuilds them from the particles so placed (:func:`path_positions`);
5. writes ``trajectory/pcK_NNN.mrc``, ``trajectory/path_NNN.mrc``, ``trajectory/points.csv``,
   ``trajectory/path_position.csv``, ``trajectory/density.png`` and ``trajectory/path.gif`` through a
   :class:`cryoprism.io.job.Job`.

Derivation and measured results: docs/heterogeneity.md, "Continuous heterogeneity".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: most particles used for the density estimate and the path graph (a random subset beyond that)
MAX_DENSITY_POINTS = 20000
MAX_GRAPH_POINTS = 4000


@dataclass
class ContinuousSettings:
    """Settings of :func:`continuous_analysis` (the defaults are the CLI's)."""

    n_dims: int = 2  # coordinates used for the density and the path (2 or 3)
    prior: str = "deconvolved"  # coordinates' prior: "deconvolved" (from the data) or "gaussian" (Wiener)
    n_points: int = 10  # volumes per principal direction and along the path
    n_directions: int = 2  # principal directions with a volume series
    percentiles: tuple = (5.0, 95.0)  # range of each direction's series, percentiles of its coordinate
    neighbours: int | None = None  # particles per point volume; None: max(200, 2 n / n_points) (≤ n)
    bandwidth: str = "scott"  # "scott" or "posterior" (mean posterior covariance of the coordinates)
    graph_neighbours: int = 10  # k of the k-nearest-neighbour graph of the path
    lowrank: bool = False  # also the low-rank volumes μ + U a(t)
    reconstruct: bool = True  # the data volumes at each point (the expensive part)
    path_iterations: int = 1  # re-place the particles along the path at full resolution, re-reconstruct
    seed: int = 0


@dataclass
class LatentDensity:
    """Gaussian kernel density of coordinates ``(n, d)`` on a regular grid."""

    bandwidth: np.ndarray  # (d, d) kernel covariance
    axes: list  # d arrays of grid coordinates
    values: np.ndarray  # density on the grid, shape (len(ax) for ax in axes)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Density at points ``x (m, d)`` (multilinear interpolation of the grid; 0 outside)."""
        from scipy.interpolate import RegularGridInterpolator

        f = RegularGridInterpolator(tuple(self.axes), self.values, bounds_error=False, fill_value=0.0)
        return np.maximum(f(np.atleast_2d(x)), 0.0)

    def grid_points(self) -> np.ndarray:
        return np.stack(np.meshgrid(*self.axes, indexing="ij"), -1).reshape(-1, len(self.axes))


@dataclass
class Trajectory:
    """Points of one series (a principal direction or the path) and their volumes."""

    name: str  # "pc1", "pc2", …, "path"
    points: np.ndarray  # (m, d) coordinates of the points
    neighbours: list  # m index arrays: the particles each volume is reconstructed from
    density: np.ndarray  # (m,) density at the points
    volumes: list = field(default_factory=list)  # m full-box data volumes (empty without reconstruct)
    lowrank: list = field(default_factory=list)  # m low-rank volumes μ + U a (empty unless asked)


@dataclass
class ContinuousResult:
    coords: np.ndarray  # (n, d) posterior-mean coordinates on the first d eigenvolumes (settings.prior)
    posterior: np.ndarray  # (n, d, d) their posterior covariances
    density: LatentDensity
    modes: np.ndarray  # (2, d) the path's end points
    trajectories: list  # of Trajectory: pc1 … pcK, path
    settings: ContinuousSettings
    path_position: np.ndarray | None = None  # (n,) each particle's position along the path, 0 … 1
    path_position_sd: np.ndarray | None = None  # (n,) its posterior standard deviation
    seconds: float = 0.0
    cpu_seconds: float = 0.0


# ------------------------------------------------------------------------------------------------
# coordinates and density
# ------------------------------------------------------------------------------------------------

def latent_coordinates(G: np.ndarray, c: np.ndarray, Q: np.ndarray, eigenvalues: np.ndarray,
                       noise_var: float) -> tuple[np.ndarray, np.ndarray]:
    """Wiener coordinates ``α_s`` on the eigenvolumes ``Q (m, d)`` of the subspace system ``(G, c)``
    and their posterior covariances ``Σ_s = σ² (P_sᵀP_s + σ² Λ⁻¹)⁻¹``: ``((n, d), (n, d, d))``.
    (``α_s`` is :func:`cryoprism.heterogeneity.classify.coordinates` with ``wiener=True``.)"""
    from cryoprism.heterogeneity.classify import coordinates

    Q = np.asarray(Q, np.float64)
    d = Q.shape[1]
    alpha = coordinates(G, c, Q, eigenvalues, noise_var, wiener=True)
    lam = np.maximum(np.asarray(eigenvalues[:d], np.float64), 1e-12)
    H = np.einsum("ai,sab,bj->sij", Q, G, Q) + noise_var * np.diag(1.0 / lam)[None]
    return alpha, noise_var * np.linalg.inv(H)


#: points per axis of the grid prior of :func:`deconvolved_coordinates` (d = 1, 2, 3)
PRIOR_GRID = {1: 96, 2: 48, 3: 20}


def _quadratic_features(a: np.ndarray) -> np.ndarray:
    """``[a_i a_j (i ≤ j), a_i]`` of points ``a (g, d)``: ``(g, d(d+1)/2 + d)``."""
    d = a.shape[1]
    iu = np.triu_indices(d)
    return np.concatenate([a[:, iu[0]] * a[:, iu[1]], a], axis=1)


def _particle_features(H: np.ndarray, h: np.ndarray, noise_var: float) -> np.ndarray:
    """Coefficients of ``log p(y_s | a) = −(aᵀH_s a − 2 aᵀh_s) / 2σ²`` on :func:`_quadratic_features`."""
    d = h.shape[1]
    iu = np.triu_indices(d)
    w = np.where(iu[0] == iu[1], -0.5, -1.0) / noise_var  # off-diagonal terms appear twice in aᵀHa
    return np.concatenate([H[:, iu[0], iu[1]] * w, h / noise_var], axis=1)


def _grid_posteriors(F: np.ndarray, Phi: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """Posterior probabilities ``(n, g)`` over the grid points for particle features ``F (n, p)``."""
    lp = F @ Phi.T + log_prior
    lp -= lp.max(axis=1, keepdims=True)
    np.exp(lp, out=lp)
    lp /= lp.sum(axis=1, keepdims=True)
    return lp


def deconvolved_coordinates(G: np.ndarray, c: np.ndarray, Q: np.ndarray, eigenvalues: np.ndarray,
                            noise_var: float, *, grid: int | None = None, iterations: int = 100,
                            max_points: int = MAX_DENSITY_POINTS, chunk: int = 2000,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Coordinates on the eigenvolumes ``Q (m, d)`` (d ≤ 3) as posterior means under their own
    distribution, deconvolved from the data: ``(α (n, d), Σ (n, d, d), (grid points (g, d), prior (g,)))``.

    Particle ``s`` sees the coordinates ``a`` through ``log p(y_s | a) = −(aᵀH_s a − 2 aᵀh_s)/2σ²``
    (``H_s = P_sᵀP_s = QᵀG_sQ``, ``h_s = P_sᵀz_s = Qᵀc_s``). The prior ``π`` lives on a regular grid of
    ``grid`` points per axis over ``±4√λ_k`` (``λ`` the eigenvalues: the coordinates' variances) and is
    the maximum of the marginal likelihood ``Σ_s log Σ_g π_g p(y_s | a_g)`` — the nonparametric maximum
    likelihood estimate of a mixing distribution (Kiefer & Wolfowitz 1956) — by ``iterations`` EM steps
    ``π_g ← mean_s γ_sg`` from the Gaussian ``N(0, Λ)`` of the Wiener coordinates, on at most
    ``max_points`` particles (a random subset beyond). Then each particle's posterior ``γ_sg`` gives
    ``α_s = Σ_g γ_sg a_g`` and ``Σ_s = Σ_g γ_sg (a_g − α_s)(a_g − α_s)ᵀ``.

    When the particles fill a curve (a continuous motion, curved in volume space) the prior concentrates
    on it and the posterior uses every coordinate to place a particle along it; for Gaussian
    coordinates it stays Gaussian and ``α_s`` is the Wiener coordinate. Cost ``O(iterations · n · g^d)``.
    """
    Q = np.asarray(Q, np.float64)
    d = Q.shape[1]
    if d > 3:
        raise ValueError(f"the grid prior is for at most 3 coordinates, got {d}")
    H = np.einsum("ai,sab,bj->sij", Q, G, Q)
    h = np.asarray(c, np.float64) @ Q
    F = _particle_features(H, h, noise_var)
    lam = np.maximum(np.asarray(eigenvalues[:d], np.float64), 1e-12)
    g = int(grid or PRIOR_GRID[d])
    axes = [np.linspace(-4.0 * np.sqrt(v), 4.0 * np.sqrt(v), g) for v in lam]
    A = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    Phi = _quadratic_features(A)
    log_prior = -0.5 * np.sum(A ** 2 / lam, axis=1)
    log_prior -= np.log(np.exp(log_prior - log_prior.max()).sum()) + log_prior.max()
    n = F.shape[0]
    fit = F if n <= max_points else F[np.random.default_rng(seed).choice(n, max_points, replace=False)]
    for _ in range(int(iterations)):
        pi = np.zeros(A.shape[0])
        for a in range(0, fit.shape[0], chunk):
            pi += _grid_posteriors(fit[a:a + chunk], Phi, log_prior).sum(0)
        pi /= fit.shape[0]
        log_prior = np.log(np.maximum(pi, 1e-300))
    alpha = np.empty((n, d))
    post = np.empty((n, d, d))
    outer = (A[:, :, None] * A[:, None, :]).reshape(-1, d * d)
    for a in range(0, n, chunk):
        gam = _grid_posteriors(F[a:a + chunk], Phi, log_prior)
        m = gam @ A
        alpha[a:a + chunk] = m
        post[a:a + chunk] = (gam @ outer).reshape(-1, d, d) - m[:, :, None] * m[:, None, :]
    return alpha, post, (A, np.exp(log_prior))


def scott_bandwidth(x: np.ndarray) -> np.ndarray:
    """Scott's rule: kernel covariance ``n^(−2/(d+4)) · Cov(x)`` for ``x (n, d)``."""
    n, d = x.shape
    return n ** (-2.0 / (d + 4)) * np.atleast_2d(np.cov(x, rowvar=False))


def kernel_density(x: np.ndarray, bandwidth: np.ndarray | str = "scott", posterior: np.ndarray | None = None,
                   grid: int | None = None, seed: int = 0) -> LatentDensity:
    """Gaussian kernel density ``f(y) = (1/n) Σ_s N(y; x_s, B)`` of ``x (n, d)`` on a regular grid
    (``grid`` points per axis: 96 for d ≤ 2, 32 for d = 3), spanning the points ± 3 kernel widths.

    ``bandwidth``: a ``(d, d)`` matrix ``B``, ``"scott"`` (:func:`scott_bandwidth`) or ``"posterior"``
    (the mean of ``posterior (n, d, d)``, the coordinates' own uncertainty, floored by a tenth of
    Scott's). At most :data:`MAX_DENSITY_POINTS` points enter (a random subset beyond that).
    """
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if isinstance(bandwidth, str):
        if bandwidth == "scott":
            B = scott_bandwidth(x)
        elif bandwidth == "posterior":
            if posterior is None:
                raise ValueError("bandwidth='posterior' needs the posterior covariances")
            B = np.mean(posterior, 0) + 0.1 * scott_bandwidth(x)
        else:
            raise ValueError(f"bandwidth must be 'scott', 'posterior' or a matrix, got {bandwidth!r}")
    else:
        B = np.atleast_2d(np.asarray(bandwidth, np.float64))
    B = 0.5 * (B + B.T) + 1e-12 * np.trace(B) * np.eye(d)
    if n > MAX_DENSITY_POINTS:
        x = x[np.random.default_rng(seed).choice(n, MAX_DENSITY_POINTS, replace=False)]
    g = int(grid or (96 if d <= 2 else 32))
    sd = np.sqrt(np.diag(B))
    axes = [np.linspace(x[:, i].min() - 3 * sd[i], x[:, i].max() + 3 * sd[i], g) for i in range(d)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    from scipy.spatial.distance import cdist

    W = np.linalg.cholesky(np.linalg.inv(B))  # (x − y)ᵀ B⁻¹ (x − y) = ‖(x − y) W‖²
    xw = x @ W
    norm = 1.0 / (x.shape[0] * np.sqrt((2 * np.pi) ** d * np.linalg.det(B)))
    vals = np.empty(pts.shape[0])
    step = max(1, int(4e6 // max(x.shape[0], 1)))
    for a in range(0, pts.shape[0], step):
        vals[a:a + step] = np.exp(-0.5 * cdist(pts[a:a + step] @ W, xw, "sqeuclidean")).sum(1) * norm
    return LatentDensity(B, axes, vals.reshape((g,) * d))


def density_modes(density: LatentDensity, min_fraction: float = 0.25, max_dip: float = 0.75) -> np.ndarray:
    """Two end points for the path. Two modes: the highest pair of local maxima of the density (grid
    points that are the maximum of their 5-neighbourhood, at least ``min_fraction`` of the highest)
    separated by a valley — the density on the segment between them falls below ``max_dip`` times the
    lower peak (a bump of the estimate's sampling noise on a plateau has no such valley). Without such a
    pair, the two ends of the high-density region (``≥ min_fraction`` of the maximum) along its
    principal axis. Returns ``(2, d)``, ordered by the first coordinate."""
    from scipy.ndimage import maximum_filter

    f = density.values
    pts = density.grid_points()
    flat = f.ravel()
    peak = (f == maximum_filter(f, size=5, mode="constant")).ravel() & (flat >= min_fraction * flat.max())
    idx = np.flatnonzero(peak)
    idx = idx[np.argsort(flat[idx])[::-1]][:8]
    s = np.linspace(0.0, 1.0, 41)[:, None]
    for j in range(1, idx.size):
        for i in range(j):
            a, b = pts[idx[i]], pts[idx[j]]
            if density((1 - s) * a + s * b).min() < max_dip * min(flat[idx[i]], flat[idx[j]]):
                ends = np.stack([a, b])
                return ends[np.argsort(ends[:, 0])]
    high = flat >= min_fraction * flat.max()
    region, w = pts[high], flat[high]
    centre = (region * w[:, None]).sum(0) / w.sum()
    cov = np.atleast_2d(np.cov((region - centre).T, aweights=w))
    axis = np.linalg.eigh(cov)[1][:, -1]
    t = (region - centre) @ axis
    ends = region[[np.argmin(t), np.argmax(t)]]
    return ends[np.argsort(ends[:, 0])]


def density_path(x: np.ndarray, density: LatentDensity, start: np.ndarray, end: np.ndarray,
                 n_points: int = 10, k: int = 10, seed: int = 0) -> np.ndarray:
    """The highest-density path from ``start`` to ``end`` through the points ``x (n, d)``.

    Nodes: the points (at most :data:`MAX_GRAPH_POINTS`, a random subset beyond) and the two ends;
    edges: the ``k`` nearest neighbours, symmetrised, each costing ``‖x_i − x_j‖ / √(f_i f_j)`` with
    ``f`` the density — Dijkstra's shortest path then runs along the ridges of the density rather
    than across its valleys. The node path is smoothed (running mean over 5 nodes, ends kept) and
    resampled to ``n_points`` points equally spaced in arc length: ``(n_points, d)``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, np.float64)
    if x.shape[0] > MAX_GRAPH_POINTS:
        x = x[np.random.default_rng(seed).choice(x.shape[0], MAX_GRAPH_POINTS, replace=False)]
    nodes = np.vstack([x, start[None], end[None]])
    m = nodes.shape[0]
    f = np.maximum(density(nodes), 1e-12 * max(float(density.values.max()), 1e-300))
    kk = min(k + 1, m)
    dist, nb = NearestNeighbors(n_neighbors=kk).fit(nodes).kneighbors(nodes)
    rows = np.repeat(np.arange(m), kk)
    cols = nb.ravel()
    cost = dist.ravel() / np.sqrt(f[rows] * f[cols])
    keep = rows != cols
    W = coo_matrix((cost[keep], (rows[keep], cols[keep])), shape=(m, m)).tocsr()
    W = W.maximum(W.T)
    _, pred = dijkstra(W, directed=False, indices=m - 2, return_predecessors=True)
    chain = [m - 1]
    while chain[-1] != m - 2 and pred[chain[-1]] >= 0:
        chain.append(int(pred[chain[-1]]))
    if chain[-1] != m - 2:  # disconnected graph: the straight line
        p = np.vstack([start, end])
    else:
        p = nodes[chain[::-1]]
    return resample_polyline(smooth_polyline(p), n_points)


def smooth_polyline(p: np.ndarray, width: int = 5) -> np.ndarray:
    """Running mean over ``width`` nodes (shrinking at the ends, which stay fixed)."""
    if p.shape[0] <= 2:
        return p
    h = width // 2
    out = np.array([p[max(0, i - h):i + h + 1].mean(0) for i in range(p.shape[0])])
    out[0], out[-1] = p[0], p[-1]
    return out


def resample_polyline(p: np.ndarray, n_points: int) -> np.ndarray:
    """``n_points`` points equally spaced in arc length along the polyline ``p (m, d)``."""
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return np.repeat(p[:1], n_points, 0)
    t = np.linspace(0.0, s[-1], n_points)
    return np.stack([np.interp(t, s, p[:, i]) for i in range(p.shape[1])], -1)


# ------------------------------------------------------------------------------------------------
# series of points and their volumes
# ------------------------------------------------------------------------------------------------

def direction_points(coords: np.ndarray, k: int, n_points: int, percentiles=(5.0, 95.0)) -> np.ndarray:
    """Points along coordinate ``k``: its percentiles ``linspace(p_lo, p_hi, n_points)``, the other
    coordinates 0 (the mean volume's): ``(n_points, d)``."""
    pts = np.zeros((n_points, coords.shape[1]))
    pts[:, k] = np.percentile(coords[:, k], np.linspace(percentiles[0], percentiles[1], n_points))
    return pts


def nearest_particles(coords: np.ndarray, point: np.ndarray, count: int, dims=None) -> np.ndarray:
    """Indices of the ``count`` particles nearest ``point`` (Euclidean in the coordinates ``dims``,
    all by default), sorted."""
    sel = slice(None) if dims is None else list(dims)
    d2 = np.sum((coords[:, sel] - np.asarray(point)[sel]) ** 2, axis=1)
    count = int(min(count, coords.shape[0]))
    return np.sort(np.argpartition(d2, count - 1)[:count])


def default_neighbours(n: int, n_points: int) -> int:
    """Particles per point volume: ``max(200, 2n / n_points)``, at most ``n``."""
    return int(min(n, max(200, 2 * n // max(n_points, 1))))


def point_volume(source, idx: np.ndarray, progress: bool = False, n_workers: int | None = None) -> np.ndarray:
    """Full-box volume from the particles ``idx`` of ``source``: the library's least-squares mean
    (:func:`cryoprism.reconstruct.reconstruct_mean` at its defaults: Wiener regularisation and the
    particle's ball from the data)."""
    from cryoprism.reconstruct import reconstruct_mean

    r = reconstruct_mean(source.subset(np.asarray(idx)), regularization="auto", progress=progress,
                         n_workers=n_workers)
    return np.asarray(r.volume, np.float32)


def path_positions(source, volumes: list, noise_var: float, *, n_workers: int | None = None,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each particle's position along a series of ``m`` volumes, from its likelihood at the full box.

    ``log p(y_s | j) = −‖y_s − M_s V_j‖² / 2σ² + const`` (white noise of variance ``noise_var`` per
    pixel, the particle's pose, origin and CTF in ``M_s``, as in the 3-D classification of
    :mod:`cryoprism.heterogeneity.refine_classes`); with a uniform prior over the points ``j`` at
    positions ``τ_j = j / (m − 1)``, the position is the posterior mean ``Σ_j γ_sj τ_j``. Returns
    ``(positions (n,), posterior standard deviations (n,))``.
    """
    from cryoprism.heterogeneity.refine_classes import _batch_at_box, _log_likelihoods, _posteriors
    from cryoprism.parallel import map_reduce
    from cryoprism.parallel.core import batch_ranges, default_workers

    n, L, m = int(source.n), int(source.box), len(volumes)
    workers = n_workers or default_workers()
    nt = 1 if workers > 1 else 0
    prior = np.full(m, -np.log(m))

    def job(r):
        a, b = r
        im, rot, org, ctf = _batch_at_box(source, a, b, L)
        return [(a, _posteriors(_log_likelihoods(volumes, im, rot, org, ctf, noise_var, nt), prior)[0])]

    gamma = np.empty((n, m))
    for a, g in map_reduce(job, batch_ranges(n, 512), n_workers=workers, desc="path positions",
                           progress=progress):
        gamma[a:a + g.shape[0]] = g
    tau = np.linspace(0.0, 1.0, m)
    pos = gamma @ tau
    return pos, np.sqrt(np.maximum(gamma @ tau ** 2 - pos ** 2, 0.0))


def lowrank_volume(mean: np.ndarray, eigenvolumes: np.ndarray, a: np.ndarray, L: int, band: int) -> np.ndarray:
    """``μ + Σ_k a_k u_k`` on the ``N_res`` grid, band-limited to ``band`` and Fourier-padded to ``L``."""
    from cryoprism.fourier.resample import downsample, upsample

    v = np.asarray(mean, np.float64) + np.tensordot(np.asarray(a, np.float64), eigenvolumes[:len(a)], axes=1)
    if band < v.shape[-1]:
        v = downsample(v, band, ndim=3)[0]
    if v.shape[-1] != L:
        v = upsample(v, L, ndim=3)[0]
    return v.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------

def continuous_analysis(source, system, Q: np.ndarray, eigenvalues: np.ndarray, noise_var: float,
                        settings: ContinuousSettings | None = None, *, mean: np.ndarray | None = None,
                        eigenvolumes: np.ndarray | None = None, band: int | None = None,
                        noise_var_L: float | None = None, n_workers: int | None = None,
                        progress: bool = True) -> ContinuousResult:
    """Density, principal-direction and path series of the particles of ``source``.

    ``system`` (:class:`~cryoprism.heterogeneity.covariance.SubspaceSystem`: per-particle ``G_s, c_s``
    in the eigenvolume basis ``Q``, eigenvalues ``eigenvalues``, noise ``noise_var`` on the ``N_res``
    grid) as :func:`cryoprism.heterogeneity.pipeline.analyze` builds it. ``mean``, ``eigenvolumes``
    (``N_res`` grid) and ``band`` are needed only for the low-rank volumes (``settings.lowrank``).
    ``noise_var_L`` (noise variance per pixel of the full-box images): with it and
    ``settings.path_iterations``, the particles are re-placed along the path by their full-box
    likelihood against the path volumes (:func:`path_positions`) and each path volume is rebuilt from
    the ``K`` particles whose position is nearest its own, ``path_iterations`` times.
    """
    import time

    from cryoprism.parallel.config import progress_bar

    s = settings or ContinuousSettings()
    t0, c0 = time.perf_counter(), time.process_time()
    d = int(min(max(s.n_dims, 1), Q.shape[1]))
    if s.prior == "deconvolved" and d <= 3:
        coords, post, _ = deconvolved_coordinates(system.G, system.c, Q[:, :d], eigenvalues, noise_var,
                                                  seed=s.seed)
    elif s.prior in ("gaussian", "deconvolved"):
        coords, post = latent_coordinates(system.G, system.c, Q[:, :d], eigenvalues, noise_var)
    else:
        raise ValueError(f"prior must be 'deconvolved' or 'gaussian', got {s.prior!r}")
    dens = kernel_density(coords, s.bandwidth, post, seed=s.seed)
    n = coords.shape[0]
    K = int(s.neighbours or default_neighbours(n, s.n_points))
    series = []
    for k in range(min(s.n_directions, d)):
        pts = direction_points(coords, k, s.n_points, s.percentiles)
        nb = [nearest_particles(coords, p, K, dims=[k]) for p in pts]  # 3DVA: bins along coordinate k
        series.append(Trajectory(f"pc{k + 1}", pts, nb, dens(pts)))
    if d >= 2:
        modes = density_modes(dens)
        pts = density_path(coords, dens, modes[0], modes[1], s.n_points, s.graph_neighbours, s.seed)
    else:  # one coordinate: the path is the first direction's range
        pts = direction_points(coords, 0, s.n_points, s.percentiles)
        modes = pts[[0, -1]]
    series.append(Trajectory("path", pts, [nearest_particles(coords, p, K) for p in pts], dens(pts)))
    L = int(source.box)
    total = sum(len(t.points) for t in series)
    with progress_bar(total=total if s.reconstruct else 0, desc="trajectory volumes",
                      disable=not progress or not s.reconstruct) as bar:
        for t in series:
            if s.reconstruct:
                for idx in t.neighbours:
                    t.volumes.append(point_volume(source, idx, n_workers=n_workers))
                    bar.update(1)
            if s.lowrank and mean is not None and eigenvolumes is not None:
                t.lowrank = [lowrank_volume(mean, eigenvolumes, p, L, int(band or mean.shape[-1]))
                             for p in t.points]
    out = ContinuousResult(coords, post, dens, modes, series, s)
    path = series[-1]
    if s.reconstruct and noise_var_L and path.volumes:
        tau = np.linspace(0.0, 1.0, len(path.points))
        for _ in range(int(s.path_iterations)):
            pos, sd = path_positions(source, path.volumes, noise_var_L, n_workers=n_workers, progress=progress)
            path.neighbours = [nearest_particles(pos[:, None], [t], K) for t in tau]
            path.volumes = [point_volume(source, idx, n_workers=n_workers) for idx in path.neighbours]
            out.path_position, out.path_position_sd = pos, sd
    out.seconds, out.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return out


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------

def density_figure(res: ContinuousResult, max_points: int = 4000):
    """The density of the first two coordinates (image), the particles (dots), the principal-direction
    points, the modes and the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = res.coords
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    dens = res.density
    if x.shape[1] >= 2:
        f = dens.values if dens.values.ndim == 2 else dens.values.sum(axis=tuple(range(2, dens.values.ndim)))
        ext = [dens.axes[0][0], dens.axes[0][-1], dens.axes[1][0], dens.axes[1][-1]]
        im = ax.imshow(f.T, origin="lower", extent=ext, aspect="auto", cmap="viridis")
        fig.colorbar(im, ax=ax, label="density")
        sub = np.random.default_rng(0).choice(x.shape[0], min(max_points, x.shape[0]), replace=False)
        ax.scatter(x[sub, 0], x[sub, 1], s=1, c="w", alpha=0.25, lw=0)
        for t in res.trajectories:
            style = dict(color="r", lw=2, marker="o", ms=3) if t.name == "path" else dict(color="orange", lw=1,
                                                                                            ls="--", marker=".")
            ax.plot(t.points[:, 0], t.points[:, 1], label=t.name, **style)
        ax.plot(res.modes[:, 0], res.modes[:, 1], "r*", ms=12, label="path ends")
        ax.set_xlabel("coordinate 1")
        ax.set_ylabel("coordinate 2")
        ax.legend(fontsize=7, loc="best")
    else:
        ax.plot(dens.axes[0], dens.values)
        ax.set_xlabel("coordinate 1")
        ax.set_ylabel("density")
    ax.set_title(f"Particle density ({x.shape[0]} particles)")
    return fig


def volume_views(v: np.ndarray) -> np.ndarray:
    """Projections of ``v [z, y, x]`` along z, y and x, side by side: ``(L, 3L)``."""
    return np.concatenate([v.sum(0), v.sum(1), v.sum(2)], axis=1)


def write_gif(path, volumes: list, fps: int = 5, title: str = "path") -> None:
    """Animation of the projections (:func:`volume_views`) of ``volumes`` forth and back, as a GIF
    (matplotlib ``PillowWriter``), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    from cryoprism.io.atomic import atomic_path

    frames = [volume_views(np.asarray(v, np.float64)) for v in volumes]
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    lo = min(float(f.min()) for f in frames)
    hi = max(float(f.max()) for f in frames)
    fig, ax = plt.subplots(figsize=(4.5, 1.8))
    ax.set_axis_off()
    im = ax.imshow(frames[0], cmap="gray", vmin=lo, vmax=hi)
    label = ax.set_title("", fontsize=8)

    def draw(i):
        im.set_data(frames[order[i]])
        label.set_text(f"{title} {order[i] + 1}/{len(frames)}  (projections along z, y, x)")
        return im, label

    anim = FuncAnimation(fig, draw, frames=len(order), blit=False)
    with atomic_path(path) as tmp:
        anim.save(str(tmp), writer=PillowWriter(fps=fps), dpi=80)
    plt.close(fig)


def write_continuous(job, res: ContinuousResult, pixel_size_A: float, folder: str = "trajectory") -> list:
    """Write the series through ``job`` (:class:`cryoprism.io.job.Job`): ``FOLDER/<name>_NNN.mrc``
    (data volumes), ``FOLDER/<name>_lowrank_NNN.mrc`` (with ``lowrank``), ``FOLDER/points.csv``
    (series, index, coordinates, density, particles), ``FOLDER/density.png``, ``FOLDER/path.gif``.
    Returns the file names (relative to the job folder)."""
    import pandas as pd

    files = []
    rows = []
    for t in res.trajectories:
        for kind, vols in (("", t.volumes), ("_lowrank", t.lowrank)):
            for i, v in enumerate(vols):
                name = f"{folder}/{t.name}{kind}_{i:03d}.mrc"
                job.write_mrc(name, v, pixel_size_A)
                files.append(name)
        for i, p in enumerate(t.points):
            rows.append({"series": t.name, "index": i, **{f"alpha_{j + 1}": float(p[j]) for j in range(len(p))},
                         "density": float(t.density[i]), "particles": int(len(t.neighbours[i]))})
    job.write_csv(f"{folder}/points.csv", pd.DataFrame(rows))
    files.append(f"{folder}/points.csv")
    if res.path_position is not None:
        job.write_csv(f"{folder}/path_position.csv", pd.DataFrame({
            "particle": np.arange(res.path_position.size), "position": res.path_position,
            "position_sd": res.path_position_sd}))
        files.append(f"{folder}/path_position.csv")
    job.save_figure(f"{folder}/density.png", density_figure(res), dpi=90)
    files.append(f"{folder}/density.png")
    path = next(t for t in res.trajectories if t.name == "path")
    vols = path.volumes or path.lowrank
    if vols:
        write_gif(job.path(f"{folder}/path.gif"), vols)
        files.append(f"{folder}/path.gif")
    job.record(trajectory={"dims": int(res.coords.shape[1]), "points": int(res.settings.n_points),
                           "series": [t.name for t in res.trajectories],
                           "modes": np.round(res.modes, 4).tolist(),
                           "seconds": round(res.seconds, 2), "cpu_seconds": round(res.cpu_seconds, 2)})
    return files
