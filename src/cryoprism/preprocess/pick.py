"""Particle picking on micrographs: a reference-free blob picker and a template picker.

Both pickers score every position of a micrograph with a matched filter in coloured noise and keep
the local maxima of the score (see docs/preprocess.md, "Picking"):

1. **Working grid.** The micrograph is Fourier-cropped to a pixel size at which the particle
   diameter spans :data:`WORK_DIAMETER_PX` pixels (never finer than the input) and its mean removed.
2. **Whitening.** ``Ŵ(k) = M̂(k) / √P(|k|)`` with ``P`` the radially averaged power spectrum of the
   micrograph (the particles are weak, so ``P`` is the noise spectrum); whitened noise has unit
   variance per pixel.
3. **Matched filter.** For a signal ``S = CTF · T`` (template ``T``: a Laplacian-of-Gaussian blob at
   the particle radius, or projections / class averages, the CTF of the micrograph applied on the
   whole grid) the statistic ``c(x) = ⟨W, S_x⟩ / ‖S‖`` in whitened units (``S_x``: ``S`` centred at
   ``x``) is N(0, 1) in pure noise. Multiplying by the CTF is the phase flip weighted by ``|CTF|``
   (the Wiener filter in its low-SNR limit). With several templates (views × in-plane rotations)
   the score is the maximum over templates.
4. **Local normalisation.** ``c`` is divided by the local standard deviation of the whitened
   micrograph over a window of the particle's size (Roseman 2003's local correlation), so a region
   with more noise (thicker ice) does not fill the list.
5. **Peaks.** Local maxima at least ``min_distance`` apart (greedy non-maximum suppression, best
   first); the figure of merit (FOM) of a pick is its score.
6. **Threshold.** Chosen from the data: at threshold ``t`` the true picks are estimated as
   ``N₊(t) − F(t) − 2 sd F(t)`` with ``F`` the expected number of noise peaks above ``t``, the
   number of particles as the maximum of that over ``t``, and ``t`` maximises the F1 score of these
   estimates. Reference-free picker: the score is a linear filter of Gaussian noise, and ``F`` is the
   Euler-characteristic density of that field (from the filter's spectral moments; Adler 1981,
   Worsley et al. 1996). Template picker (a maximum over templates): noise is symmetric, so the
   peaks of ``−score`` away from the picks (their CTF side lobes) count the noise peaks, scaled by
   the area. The particles' contrast (``polarity``) is the sign whose strongest peaks score higher
   (:func:`choose_polarity`) unless given.
7. **Outlier regions.** On the micrograph binned in real space to ≈ 24 pixels per diameter ``D``,
   less its least-squares plane: the local mean ``μ`` (Gaussian, ``σ = D/2``) and the detail
   ``m − μ``. A pick is rejected where (a) ``D·|∇μ|`` (its least value within ±D/8) is more than
   ``variance_z`` robust standard deviations (1.4826 MAD over the micrograph) above its median — an
   edge of carbon or ice is a step in the mean, an aggregate a dense blob with a rim and a lumpy
   inside, while a particle's own bump has no gradient at its centre — or (b) the log variance of the
   detail in a Gaussian window of ``σ = 1.5 D`` is beyond ``variance_z`` robust standard deviations
   and at least 2× off the median (thick or noisy regions). The window several diameters wide
   dilutes one particle's own signal: at particle SNR 1 a particle raises it ≤ 1.5× (≤ 6.6× in a
   window of ``σ = D/2``, the first version, which rejected every particle of a sparse micrograph).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage

from cryoprism.ctf.model import CTFParams, ctf_on_grid
from cryoprism.fourier.resample import fourier_resize

WORK_DIAMETER_PX = 24.0  # particle diameter on the working grid (pixels)
MIN_DISTANCE_FRACTION = 0.8  # default minimum distance between picks, in diameters
VARIANCE_WINDOW_DIAMETERS = 1.5  # σ of the regional variance's Gaussian window, in diameters
VARIANCE_MIN_RATIO = 2.0  # and at least this factor off the median
MEAN_SCALE_DIAMETERS = 0.5  # σ of the local mean (edge test; the variance's high-pass), in diameters
EDGE_MIN_DIAMETERS = 0.125  # the edge statistic is the least gradient within this distance of a pick
MIN_GAUSSIAN_Z = 2.0
BLOB_SIGMA_FRACTION = 0.5  # LoG scale σ in particle radii (measured: docs/preprocess.md, "Picking")


@dataclass
class Picks:
    """Picks of one micrograph: centres in pixels of the input micrograph (x = column, y = row)."""

    x: np.ndarray
    y: np.ndarray
    fom: np.ndarray
    threshold: float
    polarity: int  # +1: particles bright (denser = larger values), -1: dark
    template: np.ndarray | None = None  # index of the best template (template picker)
    n_candidates: int = 0
    n_rejected_variance: int = 0  # picks rejected in outlier regions (edges and regional variance)
    work_pixel_size_A: float = 0.0
    extra: dict = field(default_factory=dict)

    def __len__(self):
        return int(self.x.size)


# ------------------------------------------------------------------------------- working grid
def work_shape(shape, pixel_size_A: float, diameter_A: float) -> tuple[tuple[int, int], float]:
    """Shape of the working grid and its pixel size (Å): diameter ≈ WORK_DIAMETER_PX pixels."""
    f = min(1.0, pixel_size_A * WORK_DIAMETER_PX / float(diameter_A))
    new = tuple(max(2 * int(round(n * f / 2)), 8) for n in shape)
    return new, pixel_size_A * shape[-1] / new[-1]


def to_work_grid(micrograph: np.ndarray, pixel_size_A: float, diameter_A: float):
    """Fourier-cropped, mean-removed micrograph on the working grid, and its pixel size in Å."""
    m = np.asarray(micrograph, np.float32)
    new, _ = work_shape(m.shape, pixel_size_A, diameter_A)
    w, px = fourier_resize(m - m.mean(), new, 2, pixel_size_A) if new != m.shape else \
        (m - m.mean(), float(pixel_size_A))
    return w.astype(np.float32), px


def _uncentred_freqs(shape, pixel_size_A: float = 1.0):
    """(s, angle) on the uncentred rfft2 grid of ``shape``; ``s`` in 1/Å."""
    fy = sfft.fftfreq(shape[0], pixel_size_A)[:, None]
    fx = sfft.rfftfreq(shape[1], pixel_size_A)[None, :]
    return np.hypot(fx, fy), np.arctan2(np.broadcast_to(fy, (shape[0], fx.size)),
                                        np.broadcast_to(fx, (shape[0], fx.size)))


def radial_psd(F: np.ndarray, shape, n_bins: int | None = None) -> np.ndarray:
    """Radially averaged ``|F|²/N`` of an rfft2 ``F`` of a real ``shape`` image, evaluated on the grid.

    Bins of one Fourier pixel of the larger axis; the Hermitian-duplicated columns of the half grid
    are weighted once (their weight barely matters for a smooth average).
    """
    s, _ = _uncentred_freqs(shape)
    n = max(shape)
    k = np.minimum(np.rint(s * n).astype(np.int64), n)
    p = np.abs(F) ** 2 / float(np.prod(shape))
    num = np.bincount(k.ravel(), p.ravel(), minlength=n + 1)
    cnt = np.bincount(k.ravel(), minlength=n + 1)
    prof = num / np.maximum(cnt, 1)
    prof = ndimage.uniform_filter1d(prof, 3, mode="nearest")
    prof = np.where(prof > 0, prof, prof[prof > 0].min() if np.any(prof > 0) else 1.0)
    return prof[k]


@dataclass
class Prepared:
    """A micrograph on the working grid, whitened in Fourier space, with its CTF on the same grid."""

    shape: tuple[int, int]
    pixel_size_A: float  # of the working grid
    scale: float  # input pixels per working pixel
    Fw: np.ndarray  # rfft2 of the whitened micrograph
    whitened: np.ndarray  # the whitened micrograph (real)
    inv_sqrt_psd: np.ndarray  # 1/√P on the rfft2 grid
    ctf: np.ndarray  # CTF on the rfft2 grid (ones without a CTF)


def prepare(micrograph: np.ndarray, pixel_size_A: float, diameter_A: float,
            ctf: CTFParams | None = None) -> Prepared:
    """Working grid, whitening and CTF of one micrograph (steps 1–3 of the module doc)."""
    w, px = to_work_grid(micrograph, pixel_size_A, diameter_A)
    F = sfft.rfft2(w, workers=-1)
    F[0, 0] = 0.0
    P = radial_psd(F, w.shape)
    isq = 1.0 / np.sqrt(P)
    isq[0, 0] = 0.0
    Fw = F * isq
    whitened = sfft.irfft2(Fw, s=w.shape, workers=-1).astype(np.float32)
    if ctf is None:
        c = np.ones_like(isq)
    else:
        s, ang = _uncentred_freqs(w.shape, px)
        c = ctf_on_grid(s, ang, ctf)
        c = np.asarray(c, np.float64).reshape(s.shape)
    return Prepared(w.shape, px, micrograph.shape[-1] / w.shape[-1], Fw, whitened, isq, c)


# ------------------------------------------------------------------------------- scores
def local_std(whitened: np.ndarray, sigma_px: float) -> np.ndarray:
    """Standard deviation of ``whitened`` in a Gaussian window of ``sigma_px`` around each pixel."""
    m1 = ndimage.gaussian_filter(whitened.astype(np.float64), sigma_px, mode="reflect")
    m2 = ndimage.gaussian_filter(whitened.astype(np.float64) ** 2, sigma_px, mode="reflect")
    return np.sqrt(np.maximum(m2 - m1 * m1, 1e-12))


def _signal_filter(prep: Prepared, T_hat: np.ndarray) -> tuple[np.ndarray, float]:
    """Whitened CTF-affected template ``Ŝ/√P`` (rfft grid) and its norm ‖S‖ in whitened units."""
    S = T_hat * prep.ctf * prep.inv_sqrt_psd
    S[0, 0] = 0.0
    # Parseval on the half grid: columns 1..(n/2-1) stand for two coefficients
    w = np.full(S.shape[1], 2.0)
    w[0] = 1.0
    if prep.shape[1] % 2 == 0:
        w[-1] = 1.0
    norm = float(np.sqrt(np.sum(w * np.abs(S) ** 2) / float(np.prod(prep.shape))))
    return S, norm


def _correlate(prep: Prepared, S: np.ndarray, norm: float) -> np.ndarray:
    """``⟨W, S_x⟩ / ‖S‖`` for every shift ``x`` (``S`` centred at the origin)."""
    c = sfft.irfft2(prep.Fw * np.conj(S), s=prep.shape, workers=-1)
    return (c / max(norm, 1e-30)).astype(np.float32)


def log_template_hat(shape, radius_px: float) -> np.ndarray:
    """Scale-normalised Laplacian of a Gaussian, ``−σ²∇²G_σ``, on the rfft2 grid.

    ``σ = r/√2`` is the scale at which the response to a bare disk of radius ``r`` is largest
    (Lindeberg 1998); under the CTF, which removes the lowest frequencies, a finer scale
    ``σ = BLOB_SIGMA_FRACTION · r = r/2`` catches more of the particle's signal (measured). The filter
    is zero-mean, so smooth background (ice gradients) is removed.
    """
    s, _ = _uncentred_freqs(shape)
    sig = radius_px * BLOB_SIGMA_FRACTION
    q = (2 * np.pi * s * sig) ** 2
    return q * np.exp(-0.5 * q)


def template_hats(templates: np.ndarray, shape) -> np.ndarray:
    """rfft2 of each template (box centre ``L//2`` moved to the origin) zero-padded to ``shape``."""
    T = np.asarray(templates, np.float64)
    L = T.shape[-1]
    pad = np.zeros((T.shape[0],) + tuple(shape))
    pad[:, :L, :L] = T - T.mean(axis=(-2, -1), keepdims=True)
    pad = np.roll(pad, (-(L // 2), -(L // 2)), axis=(-2, -1))
    return sfft.rfft2(pad, axes=(-2, -1), workers=-1)


def score_blob(prep: Prepared, diameter_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Score maps (+, −) of the reference-free picker on the working grid (not yet normalised), and
    the whitened filter (rfft grid)."""
    r = 0.5 * diameter_A / prep.pixel_size_A
    S, norm = _signal_filter(prep, log_template_hat(prep.shape, r))
    c = _correlate(prep, S, norm)
    return c, -c, S


def score_templates(prep: Prepared, templates: np.ndarray, progress: bool = False):
    """Score maps of the template picker: max over templates of ``±c``, and the argmax index."""
    best = np.full(prep.shape, -np.inf, np.float32)
    worst = np.full(prep.shape, np.inf, np.float32)
    idx = np.zeros(prep.shape, np.int32)
    chunk = 16
    it = range(0, len(templates), chunk)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="templates", leave=False, unit="chunk")
    for a in it:
        hats = template_hats(templates[a:a + chunk], prep.shape)
        for j, Th in enumerate(hats):
            S, norm = _signal_filter(prep, Th)
            c = _correlate(prep, S, norm)
            better = c > best
            best[better] = c[better]
            idx[better] = a + j
            np.minimum(worst, c, out=worst)
    return best, -worst, idx


# ------------------------------------------------------------------------------- peaks
def find_peaks(score: np.ndarray, min_distance_px: float, border_px: float,
               valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima ``(k, 2)`` [row, col] of ``score`` at least ``min_distance_px`` apart, best first.

    Candidates are the maxima of a square ``min_distance`` window; greedy non-maximum suppression
    in Euclidean distance then keeps the best of any closer pair. Peaks within ``border_px`` of the
    edge (or outside ``valid``) are dropped.
    """
    from scipy.spatial import cKDTree

    size = max(3, int(2 * np.floor(min_distance_px / 2) + 1))
    mx = ndimage.maximum_filter(score, size=size, mode="nearest")
    cand = (score == mx) & np.isfinite(score)
    b = int(np.ceil(border_px))
    if b > 0:
        cand[:b] = cand[-b:] = False
        cand[:, :b] = cand[:, -b:] = False
    if valid is not None:
        cand &= valid
    rc = np.argwhere(cand)
    v = score[cand]
    order = np.argsort(-v, kind="stable")
    rc, v = rc[order], v[order]
    if len(rc) == 0:
        return rc, v
    tree = cKDTree(rc)
    keep = np.ones(len(rc), bool)
    for i in range(len(rc)):
        if not keep[i]:
            continue
        nb = tree.query_ball_point(rc[i], min_distance_px - 1e-9)
        for j in nb:
            if j > i:
                keep[j] = False
    return rc[keep], v[keep]


def subpixel_offsets(score: np.ndarray, rc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel offsets (rows, cols) of peaks ``rc`` from a parabola through 3 samples per axis."""
    if len(rc) == 0:
        return np.zeros(0), np.zeros(0)
    r = np.clip(rc[:, 0], 1, score.shape[0] - 2)
    c = np.clip(rc[:, 1], 1, score.shape[1] - 2)

    def para(m, z, p):
        den = m - 2 * z + p
        return np.where(den < 0, np.clip(0.5 * (m - p) / np.where(den < 0, den, -1), -0.5, 0.5), 0.0)

    z = score[r, c]
    return para(score[r - 1, c], z, score[r + 1, c]), para(score[r, c - 1], z, score[r, c + 1])


def null_peaks(pos_rc, pos_v, neg_rc, neg_v, exclusion_px: float, shape=None,
               border_px: float = 0.0) -> tuple[np.ndarray, float]:
    """Values of the opposite-map peaks that are not next to a stronger pick (its side lobes), and
    the area factor ``A_valid / A_kept`` that scales their counts to the whole micrograph."""
    from scipy.spatial import cKDTree

    neg_v = np.asarray(neg_v)
    if len(neg_v) == 0 or len(pos_v) == 0:
        return neg_v, 1.0
    tree = cKDTree(pos_rc)
    keep = np.ones(len(neg_v), bool)
    for i, nb in enumerate(tree.query_ball_point(neg_rc, exclusion_px)):
        if nb:
            keep[i] = False
    factor = 1.0
    if shape is not None:
        b = int(np.ceil(border_px))
        valid = np.zeros(shape, bool)
        valid[b:shape[0] - b, b:shape[1] - b] = True
        excl = np.zeros(shape, bool)
        rr, cc = np.asarray(pos_rc).T
        excl[np.clip(rr, 0, shape[0] - 1), np.clip(cc, 0, shape[1] - 1)] = True
        excl = ndimage.distance_transform_edt(~excl) <= exclusion_px
        kept = np.count_nonzero(valid & ~excl)
        factor = float(np.count_nonzero(valid)) / max(kept, 1)
    return neg_v[keep], factor


def threshold_from_counts(pos: np.ndarray, n_false: np.ndarray, sd_false: np.ndarray) -> tuple[float, float]:
    """Threshold maximising the estimated F1, and the estimated particle count.

    ``pos``: pick values sorted in decreasing order; ``n_false[i]``, ``sd_false[i]``: the expected
    number of noise picks at or above ``pos[i]`` and its standard error. True picks at threshold
    ``pos[i]``: ``(i + 1) − n_false − 2 sd_false`` (the excess, less two standard errors).
    """
    if pos.size == 0:
        return np.inf, 0.0
    n_pos = np.arange(1, pos.size + 1, dtype=np.float64)
    tp = np.maximum(n_pos - n_false - 2.0 * sd_false, 0.0)
    total = float(tp.max())
    if total <= 0:
        return float(pos[0]) + 1e-6, 0.0
    f1 = 2 * tp / (n_pos + total)
    i = int(np.argmax(f1))
    return float(pos[i]), total


def auto_threshold(pos: np.ndarray, neg: np.ndarray, neg_weight: float = 1.0) -> tuple[float, float]:
    """:func:`threshold_from_counts` with the noise counted by the peaks ``neg`` of the opposite sign
    (module doc, step 6); each counts ``neg_weight`` false picks (area correction)."""
    pos = np.sort(np.asarray(pos, np.float64))[::-1]
    neg = np.sort(np.asarray(neg, np.float64))
    k = neg.size - np.searchsorted(neg, pos, side="left")
    return threshold_from_counts(pos, neg_weight * k, neg_weight * np.sqrt(k))


def spectral_moment(S: np.ndarray, shape) -> float:
    """``√det Λ`` of a stationary field with spectrum ``|S|²`` on the rfft2 grid of ``shape``:
    ``Λ = Var ∇c`` for unit-variance ``c`` (per pixel²), ``Λ_ab = Σ (2π f_a)(2π f_b) |S|² / Σ |S|²``."""
    fy = sfft.fftfreq(shape[0])[:, None]
    fx = sfft.rfftfreq(shape[1])[None, :]
    w = np.full(S.shape[1], 2.0)
    w[0] = 1.0
    if shape[1] % 2 == 0:
        w[-1] = 1.0
    P = w * np.abs(S) ** 2
    tot = P.sum()
    lxx = float(np.sum((2 * np.pi * fx) ** 2 * P) / tot)
    lyy = float(np.sum((2 * np.pi * fy) ** 2 * P) / tot)
    return np.sqrt(lxx * lyy)


def gaussian_field_peaks(u: np.ndarray, sqrt_det_lambda: float, area_px: float) -> np.ndarray:
    """Expected number of local maxima above ``u`` of a unit-variance 2-D Gaussian field over
    ``area_px`` pixels: the Euler-characteristic density ``√detΛ (2π)^(−3/2) u e^(−u²/2)`` (Adler
    1981; Worsley et al. 1996), accurate for the high levels where thresholds fall."""
    u = np.asarray(u, np.float64)
    return area_px * sqrt_det_lambda * (2 * np.pi) ** -1.5 * np.maximum(u, 0) * np.exp(-0.5 * u * u)


def gaussian_threshold(pos: np.ndarray, sqrt_det_lambda: float, area_px: float) -> tuple[float, float]:
    """:func:`threshold_from_counts` with the noise counted by :func:`gaussian_field_peaks`, over
    thresholds ≥ MIN_GAUSSIAN_Z (below, the Euler characteristic undercounts the maxima)."""
    pos = np.sort(np.asarray(pos, np.float64))[::-1]
    pos = pos[pos >= MIN_GAUSSIAN_Z]
    fp = gaussian_field_peaks(pos, sqrt_det_lambda, area_px)
    return threshold_from_counts(pos, fp, np.sqrt(fp))


def bin_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``factor × factor`` blocks (rows and columns past the last whole block dropped); block
    ``k`` is centred on input pixel ``k·factor + (factor − 1)/2``."""
    m = np.asarray(image, np.float64)
    f = max(1, int(factor))
    H, W = (m.shape[0] // f) * f, (m.shape[1] // f) * f
    return m[:H, :W].reshape(H // f, f, W // f, f).mean(axis=(1, 3))


def local_mean_and_detail(image: np.ndarray, diameter_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The local mean (Gaussian low-pass, ``σ = MEAN_SCALE_DIAMETERS · D``) and the detail
    ``image − mean`` (the complementary Gaussian high-pass, cut-off ≈ 1/D), in real space with
    reflected borders (a periodic filter would turn an ice gradient into a step at the borders), after
    the least-squares plane is removed (reflection would bend a ramp at the borders)."""
    im = remove_plane(image)
    m = ndimage.gaussian_filter(im, MEAN_SCALE_DIAMETERS * diameter_px, mode="reflect")
    return m, im - m


def remove_plane(image: np.ndarray) -> np.ndarray:
    """``image`` (float64) less its least-squares plane ``a + b·x + c·y``."""
    im = np.asarray(image, np.float64)
    yy, xx = np.indices(im.shape, dtype=np.float64)
    A = np.c_[np.ones(im.size), xx.ravel(), yy.ravel()]
    coef = np.linalg.lstsq(A, im.ravel(), rcond=None)[0]
    return im - (A @ coef).reshape(im.shape)


def robust_z(field: np.ndarray, at: np.ndarray, step: int) -> np.ndarray:
    """``(field[at] − median) / (1.4826 · MAD)`` with the median and MAD over a grid of ``field``
    (every ``step`` pixels)."""
    grid = field[::step, ::step]
    med = float(np.median(grid))
    mad = 1.4826 * float(np.median(np.abs(grid - med))) + 1e-12
    return (field[at[:, 0], at[:, 1]] - med) / mad


def variance_outliers(image: np.ndarray, rc: np.ndarray, window_px: float, z: float = 5.0,
                      min_ratio: float | None = None) -> np.ndarray:
    """Boolean mask over picks ``rc`` in regions whose local variance (Gaussian window of
    ``σ = window_px/2``) is a robust outlier of the micrograph's: its logarithm more than ``z`` robust
    standard deviations and a factor ``min_ratio`` (default VARIANCE_MIN_RATIO) off the median."""
    if len(rc) == 0:
        return np.zeros(0, bool)
    lv = np.log(local_std(image, window_px / 2.0) ** 2)
    step = max(1, int(window_px // 4))
    d = robust_z(lv, rc, step)
    grid = lv[::step, ::step]
    off = np.abs(lv[rc[:, 0], rc[:, 1]] - float(np.median(grid)))
    lim = np.log(VARIANCE_MIN_RATIO if min_ratio is None else min_ratio)
    return (np.abs(d) > z) & (off > lim)


def edge_outliers(mean: np.ndarray, rc: np.ndarray, diameter_px: float, z: float = 5.0) -> np.ndarray:
    """Boolean mask over picks ``rc`` where the local mean changes across a diameter by a robust
    outlier of the micrograph's: ``D·|∇mean|`` more than ``z`` robust standard deviations above its
    median. A carbon or ice edge is a step in the mean; a particle's own bump has zero gradient at
    its centre."""
    if len(rc) == 0:
        return np.zeros(0, bool)
    gy, gx = np.gradient(mean)
    g = diameter_px * np.hypot(gx, gy)
    # the least change within ±D/8 of each pixel: a pick a few pixels off its particle's centre still
    # sees the flat top of the particle's bump, while a step's low-passed gradient (σ = D/2) falls by
    # only 3 % at D/8 from it
    g = ndimage.minimum_filter(g, size=2 * int(EDGE_MIN_DIAMETERS * diameter_px) + 1, mode="nearest")
    return robust_z(g, rc, max(1, int(diameter_px // 4))) > z


def region_outliers(micrograph: np.ndarray, x: np.ndarray, y: np.ndarray, diameter_px: float,
                    z: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Picks at ``(x, y)`` (input pixels) in bad regions (module doc, step 7): ``(edge, variance)``
    masks. The statistics are taken on the micrograph binned in real space to ≈ WORK_DIAMETER_PX
    pixels per diameter (Fourier cropping would ring at the borders of a micrograph whose two sides
    differ, and the ringing would read as an edge)."""
    f = max(1, int(diameter_px // WORK_DIAMETER_PX))
    small = bin_mean(micrograph, f)
    d = diameter_px / f
    rc = np.c_[np.rint((np.asarray(y) - (f - 1) / 2) / f), np.rint((np.asarray(x) - (f - 1) / 2) / f)]
    rc = np.clip(rc.astype(np.int64), 0, np.array(small.shape) - 1)
    mean, detail = local_mean_and_detail(small, d)
    return edge_outliers(mean, rc, d, z), variance_outliers(detail, rc, 2 * VARIANCE_WINDOW_DIAMETERS * d, z)


# ------------------------------------------------------------------------------- picking
def choose_polarity(p_v: np.ndarray, n_v: np.ndarray, tot_p: float, tot_n: float) -> int:
    """The particles' contrast: the sign whose ``k`` strongest peaks score higher on average, ``k`` the
    smaller of the two estimated particle counts (at least 1). Counting peaks alone fails at high
    SNR: a bright particle's filtered image has a negative rim that breaks into several weaker peaks,
    so the wrong sign can hold more peaks above its threshold — but never the stronger ones."""
    k = int(max(1, min(round(tot_p), round(tot_n))))
    top = lambda v: float(np.mean(np.sort(np.asarray(v, np.float64))[::-1][:k])) if len(v) else -np.inf
    return 1 if top(p_v) >= top(n_v) else -1


def pick_micrograph(micrograph: np.ndarray, pixel_size_A: float, diameter_A: float, *,
                    ctf: CTFParams | None = None, templates: np.ndarray | None = None,
                    threshold: float | None = None, polarity: int | None = None,
                    min_distance_A: float | None = None, variance_z: float = 5.0,
                    progress: bool = False) -> Picks:
    """Pick particles of ``diameter_A`` on one micrograph (see the module doc).

    ``templates``: ``(n, L, L)`` images at the working pixel size (:func:`map_templates`,
    :func:`average_templates`); None = the reference-free blob picker. ``ctf``: the micrograph's CTF
    (None: none applied). ``threshold``: FOM threshold (None: chosen from the data). ``polarity``:
    +1 bright particles, -1 dark (None: from the data). ``variance_z``: robust z-score beyond which
    the outlier-region tests (step 7: edge, regional variance) reject a pick (``inf`` disables).
    """
    mic = np.asarray(micrograph, np.float32)
    if mic.ndim != 2:
        raise ValueError(f"a micrograph must be 2-D, got shape {mic.shape}")
    prep = prepare(mic, pixel_size_A, diameter_A, ctf)
    r_work = 0.5 * diameter_A / prep.pixel_size_A
    if templates is None:
        plus, minus, S = score_blob(prep, diameter_A)
        which = None
    else:
        plus, minus, which = score_templates(prep, templates, progress)
    sd = local_std(prep.whitened, r_work)
    sd = sd / np.median(sd)
    plus, minus = plus / sd, minus / sd
    dmin = (MIN_DISTANCE_FRACTION * diameter_A if min_distance_A is None else min_distance_A) / prep.pixel_size_A
    border = r_work
    p_rc, p_v = find_peaks(plus, dmin, border)
    n_rc, n_v = find_peaks(minus, dmin, border)
    extra = {}
    if templates is None:
        # one linear filter: the score is a Gaussian field in noise (unit variance: robust scale)
        b = int(np.ceil(border))
        inner = plus[b:plus.shape[0] - b, b:plus.shape[1] - b]
        scale = 1.4826 * float(np.median(np.abs(inner - np.median(inner))))
        p_v, n_v = p_v / scale, n_v / scale
        lam, area = spectral_moment(S, prep.shape), float(inner.size)
        (t_p, tot_p), (t_n, tot_n) = gaussian_threshold(p_v, lam, area), gaussian_threshold(n_v, lam, area)
        if polarity is None:
            polarity = choose_polarity(p_v, n_v, tot_p, tot_n)
        rc, v = (p_rc, p_v) if polarity > 0 else (n_rc, n_v)
        if threshold is None:
            threshold, extra["estimated_particles"] = (t_p, tot_p) if polarity > 0 else (t_n, tot_n)
    else:
        if polarity is None:
            _, tot_p = auto_threshold(p_v, n_v)
            _, tot_n = auto_threshold(n_v, p_v)
            polarity = choose_polarity(p_v, n_v, tot_p, tot_n)
        (rc, v), (orc, ov) = ((p_rc, p_v), (n_rc, n_v)) if polarity > 0 else ((n_rc, n_v), (p_rc, p_v))
        if threshold is None:
            # pass 1: all opposite peaks as the null (conservative: includes the particles' side
            # lobes); pass 2: without the opposite peaks next to a pick above the first threshold
            t0, _ = auto_threshold(v, ov)
            strong = v >= t0
            null, w = null_peaks(rc[strong], v[strong], orc, ov, 2 * r_work, prep.shape, border)
            threshold, extra["estimated_particles"] = auto_threshold(v, null, w)
    keep = v >= threshold
    n_cand = int(keep.sum())
    rc, v = rc[keep], v[keep]
    # working-grid pixel centre i ↔ input pixel centre i·scale (Fourier cropping keeps the field)
    dy, dx = subpixel_offsets(plus if polarity > 0 else minus, rc)
    x = (rc[:, 1] + dx) * prep.scale
    y = (rc[:, 0] + dy) * prep.scale
    if np.isfinite(variance_z):
        edge, var = region_outliers(mic, x, y, diameter_A / pixel_size_A, variance_z)
    else:
        edge = var = np.zeros(len(rc), bool)
    bad = edge | var
    extra.update(rejected_edge=int(edge.sum()), rejected_variance=int((var & ~edge).sum()))
    rc, v, x, y = rc[~bad], v[~bad], x[~bad], y[~bad]
    tmpl = None if which is None else which[rc[:, 0], rc[:, 1]]
    return Picks(x, y, v.astype(np.float64), float(threshold), int(polarity), tmpl, n_cand,
                 int(bad.sum()), prep.pixel_size_A, extra)


# ------------------------------------------------------------------------------- templates
def _to_working_grid(x: np.ndarray, ndim: int, pixel_size_A: float, mic_pixel_size_A: float,
                     diameter_A: float) -> np.ndarray:
    """``x`` (a volume or images at ``pixel_size_A``) Fourier-resampled to the working pixel size at
    which the particle spans :data:`WORK_DIAMETER_PX` micrograph pixels (never finer than the
    micrograph's ``mic_pixel_size_A``)."""
    f = min(1.0, mic_pixel_size_A * WORK_DIAMETER_PX / float(diameter_A))
    work_px = mic_pixel_size_A / f
    L = x.shape[-1]
    Ln = max(8, int(round(L * pixel_size_A / work_px)))
    if Ln != L:
        x, _ = fourier_resize(x, Ln, ndim, pixel_size_A)
    return x


def map_templates(volume: np.ndarray, voxel_size_A: float, pixel_size_A: float, diameter_A: float,
                  n_directions: int = 16, n_inplane: int = 8) -> np.ndarray:
    """Projections of ``volume`` over a sphere grid × in-plane rotations, at the working pixel size.

    ``pixel_size_A`` is the micrograph's; the templates are resampled to the working grid's pixel
    size of :func:`work_shape` (the volume is Fourier-resampled first). Returns ``(n, L, L)``.
    """
    from cryoprism.forward.projection import project
    from cryoprism.geometry import direction_to_euler, euler_to_matrix, sphere_grid

    vol = _to_working_grid(np.asarray(volume, np.float32), 3, voxel_size_A, pixel_size_A, diameter_A)
    rot, tilt = direction_to_euler(sphere_grid(int(n_directions)))
    psi = np.arange(int(n_inplane)) * 360.0 / int(n_inplane)
    R = euler_to_matrix(np.repeat(rot, len(psi)), np.repeat(tilt, len(psi)), np.tile(psi, len(rot)))
    return project(vol, R).astype(np.float32)


def average_templates(averages: np.ndarray, pixel_size_A: float, mic_pixel_size_A: float,
                      diameter_A: float, n_inplane: int = 8) -> np.ndarray:
    """2-D class averages resampled to the working pixel size and rotated in-plane: ``(n, L, L)``."""
    from cryoprism.image.transform import rotate

    a = np.asarray(averages, np.float32)
    if a.ndim == 2:
        a = a[None]
    a = _to_working_grid(a, 2, pixel_size_A, mic_pixel_size_A, diameter_A)
    angles = np.arange(int(n_inplane)) * 360.0 / int(n_inplane)
    out = [rotate(np.repeat(im[None], len(angles), 0), angles) for im in a]
    return np.concatenate(out).astype(np.float32)


# ------------------------------------------------------------------------------- scoring
def match_picks(picked_xy: np.ndarray, true_xy: np.ndarray, radius_px: float) -> dict:
    """Precision, recall and F1 of picks against true centres (one-to-one, within ``radius_px``).

    One-to-one matching that maximises the number of matches at distance ≤ ``radius_px``
    (minimum-cost assignment on the distances, pairs farther than the radius forbidden).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    p = np.asarray(picked_xy, np.float64).reshape(-1, 2)
    t = np.asarray(true_xy, np.float64).reshape(-1, 2)
    tp = 0
    if len(p) and len(t):
        d = cdist(p, t)
        big = 1e6
        cost = np.where(d <= radius_px, d, big)
        r, c = linear_sum_assignment(cost)
        tp = int(np.sum(cost[r, c] < big))
    prec = tp / len(p) if len(p) else 0.0
    rec = tp / len(t) if len(t) else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"n_picked": int(len(p)), "n_true": int(len(t)), "true_positives": tp,
            "precision": prec, "recall": rec, "f1": f1}


# ------------------------------------------------------------------------------- files
PNG_DPI = 80
COORD_COLUMNS = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]


def picks_table(name: str, picks: Picks) -> pd.DataFrame:
    """The coordinates table of one micrograph (RELION columns)."""

    return pd.DataFrame({"rlnMicrographName": [name] * len(picks), "rlnCoordinateX": picks.x.astype(float),
                         "rlnCoordinateY": picks.y.astype(float),
                         "rlnAutopickFigureOfMerit": picks.fom.astype(float)}, columns=COORD_COLUMNS)


def plot_picks(micrograph: np.ndarray, picks: Picks, diameter_px: float, title: str = "",
               max_px: int = 1024):
    """A matplotlib figure of the micrograph (binned for display, low-passed) with a circle per pick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    m = np.asarray(micrograph, np.float32)
    f = max(1, int(np.ceil(max(m.shape) / max_px)))
    small = bin_mean(m, f)
    small = ndimage.gaussian_filter(small, max(1.0, diameter_px / f / 12))
    lo, hi = np.percentile(small, [1, 99])
    fig, ax = plt.subplots(figsize=(7, 7 * small.shape[0] / small.shape[1]))
    ax.imshow(small, cmap="gray", vmin=lo, vmax=hi, origin="upper")
    for x, y in zip(picks.x, picks.y):
        ax.add_patch(Circle((x / f, y / f), diameter_px / f / 2, fill=False, color="#00d0ff", lw=0.8))
    ax.set_title(title or f"{len(picks)} picks", fontsize=9)
    ax.set_axis_off()
    return fig


def load_templates(path, mic_pixel_size_A: float, diameter_A: float, *, n_directions: int = 16,
                   n_inplane: int = 8) -> np.ndarray:
    """Templates from a map (3-D MRC: projections) or 2-D class averages (an MRC stack)."""
    from cryoprism.errors import InputError
    from cryoprism.io import read_mrc, read_mrc_header

    h = read_mrc_header(path)
    data, vs = read_mrc(path, finite=True)
    vs = vs or h.get("voxel_size_A")
    if not vs:
        raise InputError("template has no pixel size in its header", path)
    cubic = data.ndim == 3 and data.shape[0] == data.shape[1] == data.shape[2]
    if cubic and (int(h["ispg"]) != 0 or not str(path).endswith(".mrcs")):
        return map_templates(data, vs, mic_pixel_size_A, diameter_A, n_directions, n_inplane)
    if data.ndim not in (2, 3) or data.shape[-1] != data.shape[-2]:
        raise InputError(f"expected a cubic map or a stack of square averages, got shape {data.shape}", path)
    return average_templates(data, vs, mic_pixel_size_A, diameter_A, n_inplane)


def pick_files(micrographs, diameter_A: float, job, *, ctf_table=None, estimate: bool = True,
               templates_path=None, threshold: float | None = None, polarity: int | None = None,
               pixel_size_A: float | None = None, voltage_kV: float = 300.0, cs_mm: float = 2.7,
               amplitude_contrast: float = 0.1, variance_z: float = 5.0, progress: bool = True):
    """Pick every micrograph; write ``coordinates.star`` and ``picks/NAME.png`` through ``job``.

    CTF per micrograph: from ``ctf_table`` (:func:`cryoprism.preprocess.extract.ctf_lookup`), else
    estimated (:func:`cryoprism.ctf.estimate_ctf`) when ``estimate``, else none. Returns the
    coordinates table and the summary figures.
    """
    from tqdm import tqdm

    from cryoprism.errors import InputError
    from cryoprism.io import read_mrc
    from cryoprism.preprocess.extract import _match_name

    tables, counts, pols = [], [], []
    templates = None
    for path in tqdm(list(micrographs), desc="pick", unit="mic", disable=not progress):
        mic, hpx = read_mrc(path, ndim=2, finite=True)
        px = pixel_size_A or _ctf_pixel(ctf_table, path) or hpx
        if not px:
            raise InputError("pixel size unknown: give --pixel-size", path)
        if templates_path is not None and templates is None:
            templates = load_templates(templates_path, px, diameter_A)
        ctf = None
        if ctf_table is not None:
            k = _match_name(str(path), [str(n) for n in ctf_table["rlnMicrographName"]])
            if k is None:
                raise InputError("no CTF for this micrograph in the CTF table", path)
            ctf = ctf_from_row(ctf_table.iloc[k], voltage_kV, cs_mm, amplitude_contrast)
        elif estimate:
            from cryoprism.ctf import estimate_ctf

            fit = estimate_ctf(mic, px, voltage_kV, cs_mm, amplitude_contrast)
            ctf = fit.params(voltage_kV, cs_mm, amplitude_contrast)
        p = pick_micrograph(mic, px, diameter_A, ctf=ctf, templates=templates, threshold=threshold,
                            polarity=polarity, variance_z=variance_z)
        tables.append(picks_table(str(path), p))
        counts.append(len(p))
        pols.append(p.polarity)
        fig = plot_picks(mic, p, diameter_A / px, f"{Path(path).name}: {len(p)} picks (threshold "
                         f"{p.threshold:.2f}, {p.n_rejected_variance} rejected in outlier regions)")
        job.save_figure(f"picks/{Path(path).stem}.png", fig, dpi=PNG_DPI)
        job.log.info("%s: %d picks, threshold %.3f, polarity %+d, rejected: %d at edges, %d by the regional "
                     "variance", path, len(p), p.threshold, p.polarity, p.extra.get("rejected_edge", 0),
                     p.extra.get("rejected_variance", 0))
    coords = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COORD_COLUMNS)
    star = job.write_star("coordinates.star", coords)
    return coords, {"micrographs": len(counts), "picks": int(sum(counts)), "picks_per_micrograph": counts,
                    "polarity": pols, "coordinates": str(star)}


def _ctf_pixel(ctf_table, path):
    if ctf_table is None or "rlnMicrographPixelSize" not in getattr(ctf_table, "columns", []):
        return None
    from cryoprism.preprocess.extract import _match_name

    k = _match_name(str(path), [str(n) for n in ctf_table["rlnMicrographName"]])
    return None if k is None else float(ctf_table["rlnMicrographPixelSize"].iloc[k])


def ctf_from_row(row, voltage_kV: float = 300.0, cs_mm: float = 2.7,
                 amplitude_contrast: float = 0.1) -> CTFParams:
    """CTF parameters of one row of a micrographs_ctf.star (optics merged; defaults otherwise)."""
    def g(c, d):
        return float(row[c]) if c in row.index and np.isfinite(float(row[c])) else d

    u = g("rlnDefocusU", None)
    return CTFParams(u, g("rlnDefocusV", u), g("rlnDefocusAngle", 0.0), g("rlnVoltage", voltage_kV),
                     g("rlnSphericalAberration", cs_mm), g("rlnAmplitudeContrast", amplitude_contrast),
                     g("rlnPhaseShift", 0.0))
