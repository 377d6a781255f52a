"""Rotation-invariant neighbour search and optimal in-plane alignment (docs/classify2d.md).

Works on the sPCA coefficients ``c_{i,k,l}`` (list over angular frequency k of ``(n, r_k)`` arrays)
of whitened, phase-flipped images. Rotating image i by α multiplies ``c_{i,k,·}`` by ``e^{-ikα}``;
reflecting it (``I(x, -y)``) conjugates them.

1. Candidates: cosine similarity of rotation- and reflection-invariant features: the k = 0 block
   (invariant itself) and the power spectrum ``c_{k} c_{k}^H`` of every k ≥ 1 (upper triangle, the
   relative phases between radial components of the same k), plus bispectrum terms
   ``c_{k1,l1} c_{k2,l2} conj(c_{k1+k2,l3})`` of the leading components (relative phases between
   angular frequencies).
2. Exact rotationally invariant distance (Fan & Zhao 2019, eq. 1) on the candidates:
   ``corr_ij(α) = Re Σ_k m_k e^{ikα} Σ_l c_{i,k,l} conj(c_{j,k,l})`` (m_0 = 1, m_k = 2) is the inner
   product of image i with image j rotated by α; its maximum over α comes from one FFT over k
   (zero-padded to ``n_angles``, refined by a parabola through the peak). The reflected pair uses
   ``conj(c_j)``. The score is the normalized correlation ``max corr / (‖c_i‖ ‖c_j‖)``.

``angle`` returned for a pair (i, j) is the rotation taking image j (reflected first when
``reflected``) onto image i: ``I_i ≈ R_angle J^reflected I_j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from cryoprism.parallel import batch_ranges, map_batches
from cryoprism.parallel.config import fft_workers

#: Invariant-feature candidates per requested neighbour re-ranked by the exact RID (default
#: ``n_candidates``). 12 rather than 6: at n = 2 000, 64², SNR 0.05 MFVDM finds 47.7 % of neighbours
#: within 10° instead of 44.1 % (SNR 0.02: 22.7 % vs 18.8 %) for 1.5× the RID time (docs/classify2d.md).
CANDIDATES_PER_NEIGHBOUR = 12

__all__ = ["CANDIDATES_PER_NEIGHBOUR", "Neighbors", "rid_features", "invariant_features", "candidate_neighbors",
           "align_pairs", "rid_neighbors"]


@dataclass(frozen=True)
class Neighbors:
    """Neighbour lists: ``j[i, :]`` the neighbours of image i, angle (radians), reflection, score."""

    j: np.ndarray            # (n, s) int
    angle: np.ndarray        # (n, s) radians: I_i ≈ R_angle J^refl I_j
    reflected: np.ndarray    # (n, s) bool
    score: np.ndarray        # (n, s) float, larger = more similar
    #: (n, s, 2) translation (x, y px) of image j in the best match (``I_i ≈ R_angle J^refl T_shift I_j``),
    #: from the translation-tolerant search; None where translations were not searched
    shift_px: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.j.shape[0]

    @property
    def s(self) -> int:
        return self.j.shape[1]

    def pairs(self):
        """Flat arrays ``(i, j, angle, reflected, score)``."""
        n, s = self.j.shape
        return (np.repeat(np.arange(n), s), self.j.ravel(), self.angle.ravel(), self.reflected.ravel(),
                self.score.ravel())


def rid_features(spca, coefs: np.ndarray, weight_power: float = 0.5) -> list:
    """sPCA coefficients for the neighbour search, weighted by ``(ℓ / (ℓ + σ²))^weight_power`` per component.

    ``weight_power = 1`` is the Wiener filter itself; the default 0.5 (the square root of the Wiener
    weights) makes the correlation ``Σ_l w_l² c_i conj c_j`` weight each component by ``ℓ/(ℓ+σ²)``,
    close to the cross term ``ℓ/(2ℓ+σ²)`` of the Gaussian log-likelihood ratio "same view" vs
    "independent" (whereas the squared Wiener weights over-weight the strongest, lowest-frequency
    components at low SNR). Measured better at every SNR (docs/classify2d.md).
    """
    ww = spca.wiener_weights
    return [spca.project(coefs, k) * (np.asarray(ww[k]) ** float(weight_power))[None, :]
            for k in range(len(ww))]


def _weights(n_k):
    return np.where(np.arange(n_k) == 0, 1.0, 2.0)


def invariant_features(feats: list, bispectrum_components: int = 2, bispectrum_kmax: int | None = None,
                       bispectrum_weight: float = 1.0) -> np.ndarray:
    """Rotation/reflection-invariant real features ``(n, d)`` from per-k sPCA coefficients."""
    n = feats[0].shape[0]
    parts = []
    if feats[0].shape[1]:
        parts.append(feats[0].real)
    ps = []
    for k in range(1, len(feats)):
        c = feats[k]
        r = c.shape[1]
        if r == 0:
            continue
        iu = np.triu_indices(r)
        P = (c[:, :, None] * np.conj(c[:, None, :]))[:, iu[0], iu[1]]
        off = iu[0] != iu[1]
        P[:, off] *= np.sqrt(2.0)
        ps.append(np.sqrt(2.0) * P.real)
        ps.append(np.sqrt(2.0) * P.imag[:, off])
    bis = []
    K = len(feats) - 1 if bispectrum_kmax is None else min(bispectrum_kmax, len(feats) - 1)
    m = bispectrum_components
    if m > 0:
        for k1 in range(1, K + 1):
            for k2 in range(k1, K + 1 - k1):
                k3 = k1 + k2
                a, b, c = feats[k1][:, :m], feats[k2][:, :m], feats[k3][:, :m]
                if a.shape[1] == 0 or b.shape[1] == 0 or c.shape[1] == 0:
                    continue
                B = a[:, :, None, None] * b[:, None, :, None] * np.conj(c[:, None, None, :])
                B = B.reshape(n, -1)
                bis.append(B.real)
                bis.append(B.imag)
    out = []
    # each group as a block of comparable scale: degree-1 (k=0), degree-2 (power), degree-3 (bispectrum)
    if parts:
        out.append(np.concatenate(parts, axis=1))
    if ps:
        out.append(np.concatenate(ps, axis=1))
    if bis:
        out.append(bispectrum_weight * np.concatenate(bis, axis=1))
    normed = []
    for blk in out:
        nr = np.linalg.norm(blk, axis=1, keepdims=True)
        normed.append(blk / np.maximum(nr, 1e-30))
    return np.concatenate(normed, axis=1).astype(np.float32)


def candidate_neighbors(features: np.ndarray, n_candidates: int, batch_size: int = 1024,
                        progress: bool = False, translated: list | None = None) -> np.ndarray:
    """Top ``n_candidates`` by cosine similarity of the invariant features (self excluded): ``(n, M)``.

    ``translated``: invariant features of translated copies of the images (like ``features``); the
    similarity of a pair is then the best of image j as it is and each of its copies.
    """
    f = np.asarray(features, dtype=np.float32)
    mu = f.mean(axis=0, keepdims=True)

    def unit(a):
        a = np.asarray(a, dtype=np.float32) - mu
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)

    f = unit(f)
    others = [unit(t) for t in (translated or [])]
    n = f.shape[0]
    M = min(int(n_candidates), n - 1)

    def one(rng):
        a, b = rng
        S = f[a:b] @ f.T
        for t in others:
            np.maximum(S, f[a:b] @ t.T, out=S)
        S[np.arange(b - a), np.arange(a, b)] = -np.inf
        idx = np.argpartition(-S, M - 1, axis=1)[:, :M]
        order = np.argsort(-np.take_along_axis(S, idx, axis=1), axis=1)
        return np.take_along_axis(idx, order, axis=1)

    return np.concatenate(map_batches(one, batch_ranges(n, batch_size), progress=progress,
                                      desc="invariant search"), axis=0)


def _peak(corr, n_angles):
    """Peak index refined by a parabola; returns (value, angle radians)."""
    i0 = np.argmax(corr, axis=-1)
    ym = np.take_along_axis(corr, ((i0 - 1) % n_angles)[..., None], -1)[..., 0]
    y0 = np.take_along_axis(corr, i0[..., None], -1)[..., 0]
    yp = np.take_along_axis(corr, ((i0 + 1) % n_angles)[..., None], -1)[..., 0]
    den = ym - 2 * y0 + yp
    d = np.where(den < 0, 0.5 * (ym - yp) / np.where(den < 0, den, -1.0), 0.0)
    d = np.clip(d, -0.5, 0.5)
    val = y0 - 0.25 * (ym - yp) * d
    return val, 2 * np.pi * (i0 + d) / n_angles


def align_pairs(feats: list, i: np.ndarray, j: np.ndarray, n_angles: int = 256,
                reflections: bool = True, batch_size: int = 65536, metric: str = "cosine"):
    """Optimal rotation (and reflection) of image j onto image i for each pair.

    Returns ``(angle_rad, reflected, score)``: with ``metric="cosine"`` the normalized correlation
    in [-1, 1]; with ``"euclidean"`` minus the squared rotationally invariant distance (eq. 1)
    ``−(‖c_i‖² + ‖c_j‖² − 2 max corr)``, relative to the mean ``‖c‖²``.
    """
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    K = len(feats)
    n_angles = max(int(n_angles), 2 * K + 2)
    w = _weights(K)
    norms2 = sum(w[k] * (np.abs(feats[k]) ** 2).sum(axis=1) for k in range(K))
    norms = np.sqrt(np.maximum(norms2, 1e-300))
    mean2 = max(float(np.mean(norms2)), 1e-300)

    def one(rng):
        a, b = rng
        ii, jj = i[a:b], j[a:b]
        Z = np.zeros((b - a, n_angles), dtype=np.complex128)
        Zr = np.zeros_like(Z) if reflections else None
        for k in range(K):
            if feats[k].shape[1] == 0:
                continue
            ci, cj = feats[k][ii], feats[k][jj]
            Z[:, k] = w[k] * (ci * np.conj(cj)).sum(axis=1)
            if reflections:
                Zr[:, k] = w[k] * (ci * cj).sum(axis=1)
        # corr(α_m) = Re Σ_k Z_k e^{ikα_m}  -> inverse FFT (times n_angles)
        corr = sfft.ifft(Z, axis=1, workers=fft_workers()).real * n_angles
        val, ang = _peak(corr, n_angles)
        refl = np.zeros(b - a, dtype=bool)
        if reflections:
            corr_r = sfft.ifft(Zr, axis=1, workers=fft_workers()).real * n_angles
            val_r, ang_r = _peak(corr_r, n_angles)
            refl = val_r > val
            val = np.where(refl, val_r, val)
            ang = np.where(refl, ang_r, ang)
        if metric == "euclidean":
            score = -(norms2[ii] + norms2[jj] - 2 * val) / mean2
        else:
            score = val / (norms[ii] * norms[jj])
        return ang, refl, score

    res = map_batches(one, batch_ranges(len(i), batch_size), progress=False)
    if not res:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0)
    ang = np.concatenate([r[0] for r in res])
    refl = np.concatenate([r[1] for r in res])
    score = np.concatenate([r[2] for r in res])
    return np.mod(ang + np.pi, 2 * np.pi) - np.pi, refl, score


def rid_neighbors(feats: list, n_neighbors: int, n_candidates: int | None = None,
                  bispectrum_components: int = 2, n_angles: int = 256, progress: bool = False,
                  metric: str = "cosine", shifted: list | None = None,
                  shift_offsets_px: np.ndarray | None = None) -> Neighbors:
    """Initial neighbour list: invariant candidates re-ranked by the exact rotationally invariant distance.

    ``shifted``: feature lists (like ``feats``) of the same images translated by the offsets
    ``shift_offsets_px`` (``(G, 2)``, x, y px). Both stages then tolerate residual centring errors of
    the size of the offsets: a pair's invariant similarity is the best over "image j as it is" and
    each translated copy, and its exact score the best over the copies too (rotation, reflection and
    translation searched jointly); the translation of the best match is in ``Neighbors.shift_px``.
    """
    n = feats[0].shape[0]
    s = min(int(n_neighbors), n - 1)
    M = min(n - 1, int(n_candidates) if n_candidates else max(CANDIDATES_PER_NEIGHBOUR * s, 100))
    shifted = list(shifted or [])
    if shifted:
        if shift_offsets_px is None:
            raise ValueError("shift_offsets_px is needed with shifted")
        offs = np.vstack([np.zeros((1, 2)), np.asarray(shift_offsets_px, dtype=np.float64).reshape(-1, 2)])
        if len(offs) != 1 + len(shifted):
            raise ValueError(f"{len(shifted)} translated copies but {len(offs) - 1} offsets")
    inv = invariant_features(feats, bispectrum_components=bispectrum_components)
    translated = [invariant_features(fg, bispectrum_components=bispectrum_components) for fg in shifted]
    cand = candidate_neighbors(inv, M, progress=progress, translated=translated)
    del inv, translated
    ii = np.repeat(np.arange(n), cand.shape[1])
    G = 1 + len(shifted)
    g = None
    if G > 1:   # rows g·n … (g+1)·n − 1 hold copy g (0: as it is); every pair against every copy of j
        feats_all = [np.concatenate([feats[k]] + [fg[k] for fg in shifted]) for k in range(len(feats))]
        jj = (cand.ravel()[None, :] + n * np.arange(G)[:, None]).ravel()
        ang, refl, score = (v.reshape(G, -1) for v in align_pairs(feats_all, np.tile(ii, G), jj,
                                                                     n_angles=n_angles, metric=metric))
        g = score.argmax(axis=0)                       # ties keep the untranslated copy
        ang, refl, score = (np.take_along_axis(v, g[None], 0)[0] for v in (ang, refl, score))
    else:
        ang, refl, score = align_pairs(feats, ii, cand.ravel(), n_angles=n_angles, metric=metric)
    score = score.reshape(n, -1)
    top = np.argsort(-score, axis=1)[:, :s]
    take = lambda a: np.take_along_axis(a.reshape(n, -1), top, axis=1)  # noqa: E731
    shift = None if g is None else offs[take(g)]
    return Neighbors(j=take(cand), angle=take(ang), reflected=take(refl), score=take(score), shift_px=shift)
