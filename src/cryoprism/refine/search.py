"""Pose search in Fourier space: best pose (rotation, in-plane shift) of each particle against one map.

Notation (docs/refine.md). A particle's centred transform ``Y(k)``, its CTF ``C(k)``, the per-shell
noise variance ``σ²(|k|)``, the map's central slice ``P_A(k) = V̂(Aᵀ(kx, ky, 0))`` and an origin ``o``
(pixels, RELION meaning: the model image is ``shift(project(V, A), −o)``, i.e. ``P`` times
``E_o(k) = exp(+2πi k·o / L)``). With a free positive scale ``a`` per particle, the Gaussian
log-likelihood maximised over ``a`` is a monotone function of the weighted normalised correlation

    score(A, o) = Re Σ_k conj(Y) C P_A E_o / σ²  /  sqrt(Σ_k C² |P_A|² / σ²),

summed over the Hermitian half-plane ``ky > 0 or (ky = 0, kx > 0)`` within the current frequency
limit ``|k| ≤ k_max`` (frequency marching; the DC term is left out). For a batch of particles and a
set of candidate poses the numerator is one real matrix product
``[Re X | −Im X] @ [Re P | Im P]ᵀ`` with ``X = conj(Y) C E_o / σ²`` (shifts enter as rows of X),
and the denominator a second, smaller one — batched BLAS instead of a loop over poses.

Two searches use it: :func:`global_search` (one grid of projections shared by every particle, all
shifts of a small grid, a shortlist of the best rotations kept) and :func:`local_search` (per-particle
candidates: a 3×3×3 stencil of small rotations around each current pose and a grid of shifts around
the current origin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoprism.geometry.rotations import rotvec_to_matrix

#: NUFFT tolerance of the search projections (scores need ~3 digits)
SEARCH_EPS = 1e-4


@dataclass
class FourierSet:
    """Half-plane Fourier coefficients ``0 < |k| ≤ k_max`` of an ``L × L`` centred grid."""

    L: int
    k_max: float
    iy: np.ndarray  # row indices in the centred grid
    ix: np.ndarray  # column indices
    ky: np.ndarray  # integer frequencies
    kx: np.ndarray
    shell: np.ndarray  # rounded radius

    @property
    def n(self) -> int:
        return len(self.iy)


def fourier_set(L: int, k_max: float) -> FourierSet:
    """Coefficients of the half-plane ``ky > 0 or (ky = 0, kx > 0)`` with ``|k| ≤ k_max < L/2``."""
    k_max = float(min(k_max, (L - 1) // 2))
    k = np.arange(L) - L // 2
    ky, kx = np.meshgrid(k, k, indexing="ij")
    r = np.hypot(kx, ky)
    keep = ((ky > 0) | ((ky == 0) & (kx > 0))) & (r <= k_max + 1e-9)
    iy, ix = np.nonzero(keep)
    return FourierSet(L, k_max, iy, ix, k[iy], k[ix], np.rint(r[iy, ix]).astype(np.int64))


def shift_phases(fs: FourierSet, shifts_px, L_full: int) -> np.ndarray:
    """``E_o(k) = exp(+2πi (kx ox + ky oy) / L_full)`` for origins ``(..., 2)`` [x, y] in full-box pixels:
    ``(..., fs.n)`` complex64."""
    o = np.asarray(shifts_px, np.float32)
    ph = (2 * np.pi / L_full) * (o[..., :1] * fs.kx.astype(np.float32) + o[..., 1:] * fs.ky.astype(np.float32))
    out = np.empty(ph.shape, np.complex64)
    out.real = np.cos(ph)
    out.imag = np.sin(ph)
    return out


def shift_grid(radius_px: float, step_px: float) -> np.ndarray:
    """Offsets ``(t, 2)`` [x, y] on a square grid of spacing ``step_px`` inside a disc of ``radius_px``."""
    m = int(np.floor(radius_px / step_px + 1e-9))
    g = np.arange(-m, m + 1) * step_px
    gx, gy = np.meshgrid(g, g, indexing="xy")
    u = np.stack([gx.ravel(), gy.ravel()], 1)
    return u[np.hypot(u[:, 0], u[:, 1]) <= radius_px + 1e-9]


def slices(volume, rotations, fs: FourierSet, weight=None, chunk: int = 8192, eps: float = SEARCH_EPS,
           nthreads: int = 1) -> np.ndarray:
    """Central slices ``V̂(Aᵀ(kx, ky, 0))`` of ``volume`` (box ``fs.L``) at the coefficients of ``fs`` only:
    ``(n, fs.n)`` complex64 (one type-2 NUFFT per chunk, as :func:`cryoprism.forward.project_slices`
    but restricted to the compared disc and at search precision), times an optional per-coefficient
    ``weight`` (e.g. an FSC weight per shell)."""
    import finufft

    rot = np.asarray(rotations, np.float64).reshape(-1, 3, 3)
    out = np.empty((len(rot), fs.n), np.complex64)
    if len(rot) == 0 or fs.n == 0:
        return out
    vol = np.ascontiguousarray(volume, dtype=np.complex64)
    L = vol.shape[0]
    plan = finufft.Plan(2, (L, L, L), n_trans=1, eps=eps, isign=-1, dtype="complex64", nthreads=nthreads,
                        upsampfac=1.25)
    kx, ky = fs.kx.astype(np.float64), fs.ky.astype(np.float64)
    scale = 2 * np.pi / L
    for a in range(0, len(rot), chunk):
        r = rot[a:min(a + chunk, len(rot))]
        # ω = Aᵀ (kx, ky, 0), axis order (z, y, x) as the volume's
        pts = [np.ascontiguousarray(((r[:, 0, i, None] * kx + r[:, 1, i, None] * ky) * scale).ravel(),
                                    dtype=np.float32) for i in (2, 1, 0)]
        plan.setpts(*pts)
        out[a:a + len(r)] = plan.execute(vol).reshape(len(r), fs.n)
    if weight is not None:
        out *= np.asarray(weight, np.float32)[None]
    return out


def _realify(X: np.ndarray) -> np.ndarray:
    """``[Re X | −Im X]`` so that ``Re(X @ Pᵀ) = _realify(X) @ [Re P | Im P]ᵀ``."""
    return np.concatenate([X.real, -X.imag], axis=-1).astype(np.float32, copy=False)


def _stack(P: np.ndarray) -> np.ndarray:
    return np.concatenate([P.real, P.imag], axis=-1).astype(np.float32, copy=False)


@dataclass
class Shortlist:
    """Best ``K`` grid rotations per particle: grid indices ``(b, K)``, scores and origins ``(b, K, 2)``."""

    index: np.ndarray
    score: np.ndarray
    origins_px: np.ndarray


@dataclass
class GridSlices:
    """Slices of one map on a rotation grid, laid out for :func:`global_search`: ``[Re P | Im P]``
    ``(g, 2k)`` float32 and ``|P|²`` ``(g, k)`` float32 (computed once per map and iteration)."""

    stacked: np.ndarray
    power: np.ndarray

    @classmethod
    def of(cls, P: np.ndarray) -> "GridSlices":
        return cls(_stack(P), (P.real ** 2 + P.imag ** 2).astype(np.float32))


def global_search(A: np.ndarray, w2: np.ndarray, grid: GridSlices, origins_px: np.ndarray, offsets_px: np.ndarray,
                  fs: FourierSet, L_full: int, top: int = 4) -> Shortlist:
    """Score every particle of a batch against every grid projection and every offset.

    ``A``: ``conj(Y) C / σ²`` ``(b, k)``; ``w2``: ``C² / σ²`` ``(b, k)``; ``grid``: the grid's slices
    (:class:`GridSlices`); ``origins_px``: the particles' current origins ``(b, 2)``, or ``(b, m, 2)`` for
    ``m`` candidate origins per particle; ``offsets_px``: shift grid ``(t, 2)`` added to each origin.
    Returns the ``top`` best rotations with the best origin (candidate + offset) of each.
    """
    org = np.asarray(origins_px, np.float64)
    org = org[:, None, :] if org.ndim == 2 else org
    b, g = A.shape[0], grid.power.shape[0]
    cand = (org[:, :, None, :] + np.asarray(offsets_px, np.float64)[None, None]).reshape(b, -1, 2)  # (b, t, 2)
    t = cand.shape[1]
    X = (A[:, None, :] * shift_phases(fs, cand, L_full)).reshape(b * t, -1)
    cross = (_realify(X) @ grid.stacked.T).reshape(b, t, g)
    norm = np.sqrt(np.maximum(w2.astype(np.float32) @ grid.power.T, 1e-30))  # (b, g)
    tb = np.argmax(cross, axis=1)  # best shift per (particle, rotation)
    best = np.take_along_axis(cross, tb[:, None, :], axis=1)[:, 0] / norm
    K = min(top, g)
    idx = np.argpartition(-best, K - 1, axis=1)[:, :K]
    sc = np.take_along_axis(best, idx, axis=1)
    order = np.argsort(-sc, axis=1)
    idx, sc = np.take_along_axis(idx, order, 1), np.take_along_axis(sc, order, 1)
    chosen = np.take_along_axis(tb, idx, axis=1)  # (b, K) shift index
    return Shortlist(idx, sc, np.take_along_axis(cand, chosen[:, :, None], axis=1))


def low_scale(shortlist: Shortlist, w2: np.ndarray, grid: GridSlices, ratio: float) -> np.ndarray:
    """Particles of a batch whose fitted scale at their best grid pose, ``â = score / ‖C P‖_σ``
    (the amplitude that maximises the likelihood, :func:`local_search`), is below ``ratio`` times
    the batch's median: ``(b,)`` bool. A particle at a wrong origin correlates with no projection of
    the grid, so its best score is small for its expected signal norm."""
    best = shortlist.index[:, 0]
    norm = np.sqrt(np.maximum(np.einsum("bk,bk->b", w2.astype(np.float32), grid.power[best]), 1e-30))
    a = shortlist.score[:, 0] / norm
    return a < ratio * np.median(a)


def origin_candidates(A: np.ndarray, w2: np.ndarray, grid: GridSlices, offsets_px: np.ndarray, fs: FourierSet,
                      L_full: int, top: int = 4, min_separation_px: float = 2.0) -> np.ndarray:
    """Translational search of a batch: every offset of ``offsets_px`` ``(t, 2)`` (all shifts of the
    search range) scored against every projection of a coarse ``grid``; each shift keeps its best
    rotation's normalised score, and the ``top`` best shifts at least ``min_separation_px`` apart are
    returned ``(b, top, 2)`` (best first) — the origins around which the fine grid is searched."""
    b, g, t = A.shape[0], grid.power.shape[0], len(offsets_px)
    E = shift_phases(fs, offsets_px, L_full)
    X = (A[:, None, :] * E[None]).reshape(b * t, -1)
    norm = np.sqrt(np.maximum(w2.astype(np.float32) @ grid.power.T, 1e-30))  # (b, g)
    s = ((_realify(X) @ grid.stacked.T).reshape(b, t, g) / norm[:, None, :]).max(axis=2)  # (b, t)
    u = np.asarray(offsets_px, np.float64)
    d2 = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)  # (t, t)
    near = d2 < min_separation_px ** 2
    out = np.empty((b, top, 2))
    for m in range(top):  # greedy non-maximum suppression
        j = np.argmax(s, axis=1)
        out[:, m] = u[j]
        s = np.where(near[j], -np.inf, s)  # (all suppressed: argmax repeats a shift, harmless)
    return out


def rotation_stencil(step_deg: float) -> np.ndarray:
    """The 27 rotations ``exp(δ [v]×)``, ``v ∈ {-1, 0, 1}³`` (identity first), ``δ = step_deg``."""
    v = np.stack(np.meshgrid(*(np.array([0, -1, 1]),) * 3, indexing="ij"), -1).reshape(-1, 3)
    return rotvec_to_matrix(np.deg2rad(step_deg) * v.astype(np.float64))


@dataclass
class LocalResult:
    """Best candidate per particle: rotation ``(b, 3, 3)``, origin ``(b, 2)`` px, score, the fitted
    scale ``a`` and the residual power per shell ``(n_shells,)`` (for the noise model)."""

    rotations: np.ndarray
    origins_px: np.ndarray
    score: np.ndarray
    residual_shell: np.ndarray
    count_shell: np.ndarray


def local_search(Y: np.ndarray, C: np.ndarray, inv_s2: np.ndarray, volume, candidates: np.ndarray,
                 origins_px: np.ndarray, offsets_px: np.ndarray, fs: FourierSet, L_full: int,
                 weight=None) -> LocalResult:
    """Best of per-particle candidate rotations ``(b, c, 3, 3)`` × offsets ``(t, 2)`` around each
    candidate's origin (``(b, 2)`` or ``(b, c, 2)``, full-box pixels). ``Y``, ``C``: data and CTF at
    ``fs`` ``(b, k)``; ``inv_s2``: ``1/σ²`` per coefficient ``(k,)``; ``weight``: per-coefficient
    weight of the map's slices."""
    b, c = candidates.shape[:2]
    org = np.asarray(origins_px, np.float64)
    org = org[:, None, :] if org.ndim == 2 else org
    rep = c // org.shape[1]  # candidates per distinct origin (a shortlist entry and its stencil)
    P = slices(volume, candidates.reshape(-1, 3, 3), fs, weight).reshape(b, c, -1)
    w2 = (C * C * inv_s2[None]).astype(np.float32)
    A = (np.conj(Y) * C * inv_s2[None]).astype(np.complex64)
    E = shift_phases(fs, offsets_px, L_full)
    norm = np.sqrt(np.maximum(np.einsum("bk,bck->bc", w2, (P.real ** 2 + P.imag ** 2)), 1e-30))
    Eo = np.repeat(shift_phases(fs, org, L_full), rep, axis=1) if rep > 1 else shift_phases(fs, org, L_full)
    X = (A[:, None, :] * P * Eo).reshape(b * c, -1)
    org = np.repeat(org, rep, axis=1) if rep > 1 else np.broadcast_to(org, (b, c, 2))
    cross = (_realify(X) @ _stack(E).T).reshape(b, c, -1)  # Re Σ conj(Y) C P E_o E_u / σ²
    s = cross / norm[:, :, None]
    flat = s.reshape(b, -1).argmax(axis=1)
    ci, ti = np.unravel_index(flat, s.shape[1:])
    rows = np.arange(b)
    new_org = org[rows, ci] + offsets_px[ti]
    # residual of the scaled model at the chosen pose (noise spectrum per shell)
    scale = cross[rows, ci, ti] / np.maximum(norm[rows, ci] ** 2, 1e-30)
    model = scale[:, None] * C * P[rows, ci] * shift_phases(fs, new_org, L_full)
    r2 = np.abs(Y - model) ** 2
    nsh = int(fs.shell.max()) + 1 if fs.n else 1
    res = np.bincount(np.tile(fs.shell, b), r2.ravel(), nsh)
    cnt = np.bincount(fs.shell, minlength=nsh) * float(b)
    return LocalResult(candidates[rows, ci], new_org, s[rows, ci, ti], res, cnt)
