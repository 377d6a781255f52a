"""Align one volume onto another over rotation, translation and handedness.

``align_volumes(ref, vol)`` finds ``R`` (3×3), ``t`` (pixels, x, y, z) and a hand ``H`` (identity, or
the mirror ``z → −z`` about the box centre) such that

    aligned(p) = vol(H Rᵀ (p − t))  ≈  ref(p)          (p = (x, y, z) pixels from the centre L//2)

i.e. ``vol`` is mirrored (if ``flipped``), then rotated by ``R`` (a point ``r`` moves to ``R r``, the
same action as a RELION matrix on volume coordinates), then shifted by ``+t``. Method (docs/metrics.md):
a coarse search over :func:`cryoprism.geometry.so3_grid` rotations × all circular translations (FFT
cross-correlation) on Fourier-cropped low-resolution copies, for both hands; then a local pattern search
on the rotation at a finer box from the best few candidates; then the sub-pixel translation at full size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from cryoprism.fourier import downsample, real_grid
from cryoprism.geometry import angular_distance_deg, rotvec_to_matrix, so3_grid
from cryoprism.image.masks import spherical_mask
from cryoprism.parallel.config import fft_workers, progress_bar

_MIRROR_Z = np.diag([1.0, 1.0, -1.0])


@dataclass(frozen=True)
class AlignResult:
    """``aligned(p) = vol(H rotationᵀ (p − shift_px))`` with ``H = diag(1, 1, −1)`` when ``flipped``.

    ``correlation`` is the Pearson correlation of ``ref`` and ``aligned`` inside the sphere of radius
    ``L/2 − 1``; ``coarse_correlation`` the best normalised cross-correlation found by the coarse search.
    """

    rotation: np.ndarray
    shift_px: np.ndarray
    flipped: bool
    correlation: float
    aligned: np.ndarray
    coarse_correlation: float

    @property
    def matrix(self) -> np.ndarray:
        """The full linear map ``M = H Rᵀ`` with ``aligned(p) = vol(M (p − t))``."""
        H = _MIRROR_Z if self.flipped else np.eye(3)
        return H @ self.rotation.T


def transform_volume(vol, rotation, shift_px=None, flipped: bool = False, order: int = 3) -> np.ndarray:
    """Apply the transform of :class:`AlignResult`: ``out(p) = vol(H Rᵀ (p − t))`` (spline ``order``)."""
    vol = np.asarray(vol, dtype=np.float64)
    H = _MIRROR_Z if flipped else np.eye(3)
    M = (H @ np.asarray(rotation, dtype=np.float64).T)[None]
    t = np.zeros((1, 3)) if shift_px is None else np.asarray(shift_px, dtype=np.float64).reshape(1, 3)
    return _resample(vol, M, t, order=order)[0]


def _resample(vol: np.ndarray, M: np.ndarray, t: np.ndarray, order: int = 1, coeffs=None) -> np.ndarray:
    """``out[b](p) = vol(M[b] (p − t[b]))`` for a batch of matrices; zero outside the box."""
    L = vol.shape[0]
    z, y, x = real_grid(vol.shape)
    P = np.stack([x.ravel(), y.ravel(), z.ravel()]).astype(np.float64)  # (3, N) in x, y, z
    src = np.einsum("bij,bjn->bin", M, P[None] - t[:, :, None])  # (B, 3, N) x, y, z
    idx = np.moveaxis(src[:, ::-1, :], 1, 0).reshape(3, -1) + L // 2  # array order z, y, x
    if order > 1:
        data = ndimage.spline_filter(vol, order=order) if coeffs is None else coeffs
        out = ndimage.map_coordinates(data, idx, order=order, mode="constant", cval=0.0, prefilter=False)
    else:
        out = ndimage.map_coordinates(vol, idx, order=order, mode="constant", cval=0.0)
    return out.reshape((M.shape[0],) + vol.shape)


def _peak(cc: np.ndarray):
    """Circular cross-correlation peaks of a batch ``(B, L, L, L)``: value (parabolic), shift (x, y, z)."""
    B, L = cc.shape[0], cc.shape[1]
    flat = cc.reshape(B, -1)
    i = np.argmax(flat, axis=1)
    iz, iy, ix = np.unravel_index(i, cc.shape[1:])
    c0 = flat[np.arange(B), i]
    value = c0.copy()
    frac = np.zeros((B, 3))  # z, y, x
    base = np.stack([iz, iy, ix], axis=1)
    for a in range(3):
        lo, hi = base.copy(), base.copy()
        lo[:, a] = (lo[:, a] - 1) % L
        hi[:, a] = (hi[:, a] + 1) % L
        cm = cc[np.arange(B), lo[:, 0], lo[:, 1], lo[:, 2]]
        cp = cc[np.arange(B), hi[:, 0], hi[:, 1], hi[:, 2]]
        den = cm - 2 * c0 + cp
        ok = den < 0
        d = np.where(ok, 0.5 * (cm - cp) / np.where(ok, den, -1.0), 0.0)
        d = np.clip(d, -0.5, 0.5)
        frac[:, a] = d
        value += np.where(ok, -0.25 * (cm - cp) * d, 0.0)
    shift_zyx = ((base + L // 2) % L - L // 2) + frac
    return value, shift_zyx[:, ::-1]


class _Scorer:
    """Normalised FFT cross-correlation of ``ref`` with rotated copies of ``vol`` at one box size."""

    def __init__(self, ref: np.ndarray, vol: np.ndarray, box: int):
        L = ref.shape[0]
        if box < L:
            ref = downsample(ref, box, ndim=3)[0]
            vol = downsample(vol, box, ndim=3)[0]
        self.box = ref.shape[0]
        self.scale = L / self.box
        edge = max(1.0, self.box / 16)
        self.mask = spherical_mask(self.box, self.box / 2 - 1 - edge, edge, dtype=np.float64)
        r = (ref - ref.mean()) * self.mask
        self.vol = vol - vol.mean()
        self.Fref = sfft.rfftn(r, workers=fft_workers())
        self.ref_norm = np.sqrt(np.sum(r * r))

    def __call__(self, M: np.ndarray):
        rot = _resample(self.vol, M, np.zeros((len(M), 3)), order=1) * self.mask
        Fr = sfft.rfftn(rot, axes=(1, 2, 3), workers=fft_workers())
        cc = sfft.irfftn(self.Fref[None] * np.conj(Fr), s=rot.shape[1:], axes=(1, 2, 3), workers=fft_workers())
        norms = np.sqrt(np.sum(rot * rot, axis=(1, 2, 3))) * self.ref_norm
        value, shift = _peak(cc)
        return value / np.maximum(norms, 1e-30), shift * self.scale


def _local_refine(score: _Scorer, R: np.ndarray, H: np.ndarray, step_deg: float, min_step_deg: float,
                  max_evals: int = 400):
    """Pattern search on ``R``: try ``exp(±step e_i) R`` (i = x, y, z); move on improvement, else halve."""
    best, shift = score((H @ R.T)[None])
    best, shift = float(best[0]), shift[0]
    axes = np.concatenate([np.eye(3), -np.eye(3)])
    step = float(step_deg)
    n = 0
    while step >= min_step_deg and n < max_evals:
        D = rotvec_to_matrix(axes * np.deg2rad(step))  # (6, 3, 3)
        cand = D @ R
        s, sh = score(H[None] @ np.swapaxes(cand, 1, 2))
        n += len(cand)
        j = int(np.argmax(s))
        if s[j] > best + 1e-12:
            best, R, shift = float(s[j]), cand[j], sh[j]
        else:
            step /= 2
    return R, best, shift


def _polish(score: _Scorer, R: np.ndarray, H: np.ndarray, shift: np.ndarray):
    """Maximise the real-space correlation over a rotation vector and the shift jointly (Powell)."""
    from scipy.optimize import minimize

    ref = sfft.irfftn(score.Fref, s=(score.box,) * 3, workers=fft_workers())
    t0 = shift / score.scale

    def cost(x):
        Rx = rotvec_to_matrix(np.deg2rad(x[:3])) @ R
        out = _resample(score.vol, (H @ Rx.T)[None], (t0 + x[3:])[None], order=1)[0] * score.mask
        return -float(np.sum(out * ref) / (np.sqrt(np.sum(out * out)) * score.ref_norm + 1e-30))

    res = minimize(cost, np.zeros(6), method="Powell",
                   options={"xtol": 1e-3, "ftol": 1e-7, "maxfev": 600})
    if res.fun <= cost(np.zeros(6)):
        R = rotvec_to_matrix(np.deg2rad(res.x[:3])) @ R
        shift = (t0 + res.x[3:]) * score.scale
    return R, shift


def align_volumes(ref, vol, n_coarse: int = 3000, coarse_box: int = 16, refine_box: int = 32,
                  n_candidates: int = 3, try_flip: bool = True, min_step_deg: float = 1.0,
                  polish: bool = True, batch: int = 128, progress: bool = False) -> AlignResult:
    """Align ``vol`` onto ``ref`` (same cubic box and pixel size) over rotation, shift and hand.

    ``n_coarse`` rotations (super-Fibonacci grid, ~15° covering at 3000) are scored at ``coarse_box``
    against every circular shift; the best ``n_candidates`` distinct rotations per hand are refined by a
    pattern search at ``coarse_box`` (to 1/8 of the grid spacing), the best two of those again at
    ``refine_box`` down to ``min_step_deg``; the winner's sub-pixel shift is measured at full size and,
    with ``polish``, rotation and shift are refined jointly (Powell on the masked correlation at
    ``refine_box``). Returns an :class:`AlignResult` (transform in the module docstring).
    """
    ref = np.asarray(ref, dtype=np.float64)
    vol = np.asarray(vol, dtype=np.float64)
    if ref.shape != vol.shape or ref.ndim != 3 or len(set(ref.shape)) != 1:
        raise ValueError(f"expected two cubic volumes of the same shape, got {ref.shape} and {vol.shape}")
    L = ref.shape[0]
    hands = [False, True] if try_flip else [False]
    grid = so3_grid(n_coarse)
    spacing = np.rad2deg((6 * np.pi / n_coarse) ** (1 / 3)) * 1.4  # ≈ measured covering of so3_grid

    coarse = _Scorer(ref, vol, min(coarse_box, L))
    cands = []
    bar = progress_bar(total=len(hands) * n_coarse, progress=progress, desc="coarse rotations")
    for flipped in hands:
        H = _MIRROR_Z if flipped else np.eye(3)
        scores = np.empty(n_coarse)
        for s0 in range(0, n_coarse, batch):
            M = H[None] @ np.swapaxes(grid[s0:s0 + batch], 1, 2)
            scores[s0:s0 + batch] = coarse(M)[0]
            bar.update(len(M))
        picked = []
        for j in np.argsort(scores)[::-1]:
            if all(angular_distance_deg(grid[j], grid[p]) > 2 * spacing for p in picked):
                picked.append(j)
            if len(picked) == n_candidates:
                break
        cands += [(float(scores[j]), flipped, grid[j]) for j in picked]
    bar.close()
    best_coarse = max(c[0] for c in cands)

    # stage A: refine every candidate at the coarse box; stage B: the best two at the finer box
    staged = []
    for _, flipped, R0 in cands:
        H = _MIRROR_Z if flipped else np.eye(3)
        R, s, _ = _local_refine(coarse, R0, H, spacing / 2, spacing / 8)
        staged.append((s, flipped, R))
    staged.sort(key=lambda c: -c[0])
    fine = _Scorer(ref, vol, min(refine_box, L))
    best = None
    for _, flipped, R0 in staged[:2]:
        H = _MIRROR_Z if flipped else np.eye(3)
        R, s, _ = _local_refine(fine, R0, H, spacing / 8, min_step_deg)
        if best is None or s > best[0]:
            best = (s, flipped, R)
    _, flipped, R = best
    H = _MIRROR_Z if flipped else np.eye(3)

    # sub-pixel translation at full size, then a joint continuous polish of rotation and shift
    full = _Scorer(ref, vol, L)
    _, shift = full((H @ R.T)[None])
    shift = shift[0]
    if polish:
        R, shift = _polish(fine, R, H, shift)
    aligned = transform_volume(vol, R, shift, flipped, order=3)
    m = spherical_mask(L, L / 2 - 1, dtype=np.float64) > 0
    corr = float(np.corrcoef(ref[m], aligned[m])[0, 1])
    return AlignResult(rotation=R, shift_px=shift, flipped=bool(flipped), correlation=corr,
                       aligned=aligned.astype(np.float32), coarse_correlation=float(best_coarse))
