"""Beam-induced motion correction of a movie: global alignment, local deformation model, dose weighting.

Method (derivation in docs/preprocess.md, "Motion correction"):

1. **Fourier cropping.** Every frame is mean-subtracted, transformed once at full size and cropped
   in Fourier space to the alignment grid (``align_bin``, default 2: frequencies up to a quarter of a
   cycle per pixel, where the alignment B-factors leave no weight anyway). The cropped frames are kept
   in real space for the patches; the global alignment uses a further crop to at most ``global_px``²
   (default 1024²: for a 4k movie a 4× coarser grid, still sampling the B = 500 px² peak finely).
2. **Global alignment.** Each frame (cosine-tapered edges) is correlated with the sum of all the
   others, aligned with the current shifts, under a B-factor weight ``exp(−B k²/4)`` (``k`` in cycles
   per pixel, ``B`` in pixel², default 500). The peak is located to sub-pixel precision by a
   three-point Gaussian (log-parabola) fit in x and y; all shifts are updated together and the sum is
   rebuilt, until no shift moves by more than ``tol_px`` (Jacobi iteration of the "align to the sum of
   the others" scheme of Li et al. 2013 / MotionCor2, Zheng et al. 2017).
3. **Local alignment.** The field is cut into ``patches`` (default 5 × 5); in each patch the frames,
   cut at the globally shifted positions and moved by the fractional global shift, are aligned the same
   way (B = 150 pixel²); with ``patch_group`` k > 1 the frames are summed in groups of k first, each group
   measured at its mean frame index (MotionCor2's grouping; default 1). The measured
   residual shifts ``r_p(t)`` (patch minus global) are fitted by least squares with the smooth model of
   MotionCor2: a free offset per patch plus ``Σ_{c=1..3} τ^c · Σ_{a+b≤2} β_abc x^a y^b`` (``τ`` the
   frame index over the last index, ``x, y`` ∈ [−1, 1] over the frame), i.e. a deformation that is
   zero at the first frame, polynomial in time and quadratic in space; outliers beyond 4 robust
   standard deviations are dropped and the fit repeated once.
4. **Sums.** The frames are cut into tiles (``tile_px`` + margins); each tile of each frame is cut at the
   integer part of its displacement (global + local model at the tile centre) and resampled at the
   fractional rest with a Lanczos-16 kernel applied as a filter on the tile's transform (compact: the
   tile's periodic wrap stays in its margin), then accumulated plain and dose-weighted with the critical exposure
   of Grant & Grigorieff (2015): ``S(k) = √n · Σ_t q_t(k) F_t(k) / √(Σ_t q_t(k)²)``,
   ``q_t(k) = exp(−N_t / (2 Ne(k)))`` with ``N_t`` the exposure at the middle of frame ``t``.

Displacements are those of the specimen: the point at ``r`` in frame 0 appears at ``r + d(r, t)`` in
frame ``t``; ``shifts_px[0] = 0``. RELION's trajectory STAR stores the shifts that *align* the frames,
``−d`` (:func:`trajectory_star`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft

from cryoprism.parallel import batch_ranges, map_batches, map_reduce
from cryoprism.preprocess.movies import critical_exposure_e_A2


# ----------------------------------------------------------------------------- models and results
def _space_terms(degree: int) -> list[tuple[int, int]]:
    return [(a, s - a) for s in range(degree + 1) for a in range(s, -1, -1)]


@dataclass
class LocalMotionModel:
    """Smooth local deformation ``(dx, dy)(x, y, t)`` in pixels, zero at frame 0 (see module doc).

    ``coef[axis, c, j]`` multiplies ``τ^(c+1) · X^a Y^b`` with ``(a, b) = terms[j]``,
    ``τ = t / (n_frames − 1)``, ``X = 2x/W − 1``, ``Y = 2y/H − 1`` (x, y in pixels of the frame).
    """

    coef: np.ndarray  # (2, n_time, n_space)
    degree: int
    shape: tuple[int, int]  # (H, W)
    n_frames: int
    rms_residual_px: float = float("nan")  # of the fit to the patch measurements
    n_outliers: int = 0

    def __call__(self, x, y, t) -> tuple[np.ndarray, np.ndarray]:
        H, W = self.shape
        X = 2 * np.asarray(x, np.float64) / W - 1
        Y = 2 * np.asarray(y, np.float64) / H - 1
        tau = np.asarray(t, np.float64) / max(self.n_frames - 1, 1)
        S = np.stack([X**a * Y**b for a, b in _space_terms(self.degree)], axis=-1)
        tp = np.stack([tau ** (c + 1) for c in range(self.coef.shape[1])], axis=-1)
        out = []
        for ax in range(2):
            space = S @ self.coef[ax].T  # (..., n_time)
            out.append((space * tp).sum(axis=-1))
        return out[0], out[1]


@dataclass
class MotionResult:
    """Output of :func:`align_movie`. Displacements in pixels of the movie, [x, y]."""

    dose_weighted: np.ndarray  # (H, W) float32
    plain_sum: np.ndarray  # (H, W) float32
    shifts_px: np.ndarray  # (n_frames, 2) global displacement, shifts_px[0] = 0
    local_model: LocalMotionModel | None
    patch_trajectories: np.ndarray  # (n_patches, n_frames, 2) measured displacement of each patch
    patch_centres_px: np.ndarray  # (n_patches, 2) [x, y]
    pixel_size_A: float
    dose_per_frame_e_A2: float
    pre_exposure_e_A2: float = 0.0
    voltage_kV: float = 300.0
    timings_s: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.shifts_px.shape[0])

    def displacement(self, x, y) -> np.ndarray:
        """Estimated displacement ``(n_frames, *shape(x), 2)`` at pixel positions ``x, y``."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        t = np.arange(self.n_frames).reshape((-1,) + (1,) * x.ndim)
        dx = self.shifts_px[:, 0].reshape(t.shape) + 0 * x
        dy = self.shifts_px[:, 1].reshape(t.shape) + 0 * y
        if self.local_model is not None:
            lx, ly = self.local_model(x[None], y[None], t)
            dx, dy = dx + lx, dy + ly
        return np.stack([dx, dy], axis=-1)

    def stats(self) -> dict:
        """Accumulated global motion (Å): total, and early (first 4 e⁻/Å²) / late as RELION reports."""
        step = np.hypot(*np.diff(self.shifts_px, axis=0).T) * self.pixel_size_A
        dose_end = self.pre_exposure_e_A2 + self.dose_per_frame_e_A2 * np.arange(2, self.n_frames + 1)
        early = dose_end <= 4.0
        return {"total_motion_A": float(step.sum()), "early_motion_A": float(step[early].sum()),
                "late_motion_A": float(step[~early].sum())}


# ----------------------------------------------------------------------------- Fourier helpers
def _crop_rfft(F: np.ndarray, h: int, w: int) -> np.ndarray:
    """Crop an rfft2 half-spectrum ``(..., H, W//2+1)`` to the low frequencies of an ``h × w`` grid."""
    H = F.shape[-2]
    if h == H and w // 2 + 1 == F.shape[-1]:
        return F
    top = F[..., : h // 2, : w // 2 + 1]
    bot = F[..., H - h // 2:, : w // 2 + 1]
    return np.concatenate([top, bot], axis=-2)


def _kgrid(h: int, w: int):
    """Integer frequencies of an rfft2 grid: ky (h, 1), kx (1, w//2+1)."""
    return (np.fft.fftfreq(h) * h)[:, None], np.arange(w // 2 + 1, dtype=np.float64)[None, :]


def _phase(h: int, w: int, dx, dy) -> np.ndarray:
    """Half-spectrum factor that moves content by ``(−dx, −dy)`` pixels (undoes a displacement d);
    scalars give ``(h, w//2+1)``, arrays of n displacements ``(n, h, w//2+1)`` (separable: the
    exponentials are formed per axis, then multiplied)."""
    dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
    ey = np.exp(2j * np.pi * np.multiply.outer(dy, np.fft.fftfreq(h))).astype(np.complex64)[..., :, None]
    ex = np.exp(2j * np.pi * np.multiply.outer(dx, np.arange(w // 2 + 1) / w)).astype(np.complex64)[..., None, :]
    return ey * ex


def _taper(h: int, w: int, frac: float = 0.1) -> np.ndarray:
    """Separable window: 1 inside, raised-cosine edges of ``frac`` of each side."""
    def one(n):
        e = max(1, int(round(frac * n)))
        v = np.ones(n, np.float32)
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(e) + 0.5) / e)
        v[:e] = r
        v[n - e:] = r[::-1]
        return v
    return one(h)[:, None] * one(w)[None, :]


def _bweight(h: int, w: int, bfactor_px2: float) -> np.ndarray:
    ky, kx = _kgrid(h, w)
    k2 = (ky / h) ** 2 + (kx / w) ** 2
    wgt = np.exp(-bfactor_px2 * k2 / 4.0)
    wgt[0, 0] = 0.0
    return wgt.astype(np.float32)


def _subpixel(v_m, v_0, v_p) -> float:
    """Offset of the maximum from three samples: Gaussian (log-parabola) fit, else parabola."""
    if v_m > 0 and v_0 > 0 and v_p > 0:
        a, b, c = np.log(v_m), np.log(v_0), np.log(v_p)
    else:
        a, b, c = v_m, v_0, v_p
    den = a - 2 * b + c
    if den >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


def _peak(cc: np.ndarray, max_shift: float) -> tuple[float, float]:
    """Sub-pixel ``(x, y)`` of the maximum of a cross-correlation map (zero shift at index 0) within
    ``|x|, |y| ≤ max_shift``."""
    h, w = cc.shape
    ry = int(min(max_shift, h // 2 - 2))
    rx = int(min(max_shift, w // 2 - 2))
    win = np.roll(cc, (ry + 1, rx + 1), axis=(0, 1))[: 2 * ry + 3, : 2 * rx + 3]
    inner = win[1:-1, 1:-1]
    iy, ix = np.unravel_index(int(np.argmax(inner)), inner.shape)
    iy, ix = iy + 1, ix + 1
    sy = _subpixel(win[iy - 1, ix], win[iy, ix], win[iy + 1, ix])
    sx = _subpixel(win[iy, ix - 1], win[iy, ix], win[iy, ix + 1])
    return ix - rx - 1 + sx, iy - ry - 1 + sy


def align_spectra(G: np.ndarray, shape: tuple[int, int], bfactor_px2: float, *, max_shift_px: float,
                  d0: np.ndarray | None = None, max_iter: int = 10, tol_px: float = 0.01,
                  cc_size: int = 1024, n_workers: int | None = None) -> tuple[np.ndarray, int]:
    """Align frames given by their half-spectra ``G (n, h, w//2+1)`` to the sum of the others.

    Returns ``(d (n, 2) [x, y] displacements in pixels of this grid, iterations)``; ``d0`` starts the
    iteration. The correlation map is computed on at most ``cc_size`` pixels a side (Fourier-cropped).
    """
    n = G.shape[0]
    h, w = shape
    wgt = _bweight(h, w, bfactor_px2)
    ch, cw = min(h, cc_size // 2 * 2), min(w, cc_size // 2 * 2)
    fy, fx = h / ch, w / cw
    d = np.zeros((n, 2)) if d0 is None else np.array(d0, np.float64)
    it = 0
    for it in range(1, max_iter + 1):
        aligned = G * _phase(h, w, d[:, 0], d[:, 1])   # every frame moved by its current estimate
        S = aligned.sum(0)

        def one(t):
            A = aligned[t]
            P = _crop_rfft(wgt * (S - A) * np.conj(A), ch, cw)
            cc = sfft.irfft2(P, s=(ch, cw), workers=1)
            px, py = _peak(cc, max_shift_px / min(fx, fy))
            return px * fx, py * fy

        delta = np.array(map_batches(one, list(range(n)), n_workers=n_workers, progress=False))
        d -= delta
        if np.abs(delta).max() < tol_px:
            break
    return d, it


# ----------------------------------------------------------------------------- local model fit
def fit_local_model(centres_px: np.ndarray, residual_px: np.ndarray, shape, degree: int = 2,
                    n_time: int = 3, times=None, n_frames: int | None = None) -> LocalMotionModel:
    """Least-squares fit of the smooth model to residual patch displacements ``(p, m, 2)``.

    ``times``: the (possibly fractional) frame index of each of the ``m`` measurements (default
    ``0 … m−1``; a group of frames is measured at its mean index); ``n_frames`` of the movie (default m).
    Each patch has a free offset (its reference is the patch's own sum); the model is zero at t = 0.
    """
    p, n, _ = residual_px.shape
    H, W = shape
    n_frames = int(n_frames or n)
    times = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    X = 2 * centres_px[:, 0] / W - 1
    Y = 2 * centres_px[:, 1] / H - 1
    terms = _space_terms(degree)
    S = np.stack([X**a * Y**b for a, b in terms], axis=1)  # (p, ns)
    tau = times / max(n_frames - 1, 1)
    T = np.stack([tau ** (c + 1) for c in range(n_time)], axis=1)  # (n, nt)
    ns, nt = S.shape[1], T.shape[1]
    rows_model = (T[None, :, :, None] * S[:, None, None, :]).reshape(p * n, nt * ns)
    offsets = np.repeat(np.eye(p), n, axis=0)
    A = np.hstack([offsets, rows_model])
    coef = np.zeros((2, nt, ns))
    keep = np.ones(p * n, bool)
    resid_all = np.zeros((p * n, 2))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # a small system: threaded BLAS on busy cores is far slower
        _fit_rounds(A, residual_px, p, nt, ns, coef, keep, resid_all)
    rms = float(np.sqrt(np.mean(np.sum(resid_all[keep] ** 2, axis=1))))
    return LocalMotionModel(coef, degree, (int(H), int(W)), n_frames, rms, int((~keep).sum()))


def _fit_rounds(A, residual_px, p, nt, ns, coef, keep, resid_all):
    """Least squares, then once more without the measurements beyond 4 robust standard deviations."""
    for rnd in range(2):
        for ax in range(2):
            b = residual_px[:, :, ax].reshape(-1)
            sol, *_ = np.linalg.lstsq(A[keep], b[keep], rcond=None)
            coef[ax] = sol[p:].reshape(nt, ns)
            resid_all[:, ax] = b - A @ sol
        if rnd == 0:
            r = np.hypot(resid_all[:, 0], resid_all[:, 1])
            sigma = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-6
            keep[:] = r <= np.median(r) + 4 * sigma
            if keep.sum() < A.shape[1] + 2:
                keep[:] = True


# ----------------------------------------------------------------------------- sums
def dose_filters(n_frames: int, shape_rfft_s: np.ndarray, dose_per_frame_e_A2: float, voltage_kV: float,
                 pre_exposure_e_A2: float = 0.0) -> np.ndarray:
    """``q_t(s) = exp(−N_t / (2 Ne(s)))`` at mid-frame exposures ``N_t``, shape ``(n, *s.shape)``."""
    ne = critical_exposure_e_A2(shape_rfft_s, voltage_kV)
    N = pre_exposure_e_A2 + dose_per_frame_e_A2 * (np.arange(n_frames) + 0.5)
    return np.exp(-N.reshape((-1,) + (1,) * ne.ndim) / (2 * ne[None])).astype(np.float32)


LANCZOS_A = 16


def _lanczos_response(N: int, f: np.ndarray, full: bool, a: int = LANCZOS_A) -> np.ndarray:
    """DFT (length N, or N//2+1 for the half axis) of the 2a+1 taps ``h[m] = L(m + f)`` of a Lanczos-``a``
    kernel ``L(x) = sinc(x) sinc(x/a)`` (normalised to unit sum), one row per fractional shift ``f``.

    Multiplying a tile's transform by it resamples the tile at ``x + f`` with a compact kernel, so
    the periodic wrap of the tile reaches only ``a`` pixels into its margin (a plain phase ramp is a
    periodic sinc, whose slowly decaying tails carry the far edge of the tile into its interior).
    """
    m = np.arange(-a, a + 1, dtype=np.float64)
    x = m[None, :] + np.asarray(f, np.float64)[:, None]
    h = np.sinc(x) * np.sinc(x / a) * (np.abs(x) < a)
    h /= h.sum(axis=1, keepdims=True)
    k = np.fft.fftfreq(N) * N if full else np.arange(N // 2 + 1, dtype=np.float64)
    E = np.exp(-2j * np.pi * np.outer(m, k) / N)
    return (h @ E).astype(np.complex64)


def sum_frames(frames, displacement_at, pixel_size_A: float, dose_per_frame_e_A2: float,
               voltage_kV: float = 300.0, pre_exposure_e_A2: float = 0.0, *, tile_px: int = 256,
               margin_px: int = 32, n_workers: int | None = None, progress: bool = False):
    """Aligned plain and dose-weighted sums (see module doc, step 4).

    ``displacement_at(xc, yc)`` returns ``(n_frames, *xc.shape, 2)`` displacements at tile centres.
    """
    n, H, W = frames.shape
    T = int(min(tile_px, max(H, W)))
    M = int(margin_px)
    nty, ntx = -(-H // T), -(-W // T)
    yc = (np.arange(nty) * T + T / 2).clip(0, H - 1)
    xc = (np.arange(ntx) * T + T / 2).clip(0, W - 1)
    XC, YC = np.meshgrid(xc, yc)
    D = np.asarray(displacement_at(XC, YC), np.float64).reshape(n, nty * ntx, 2)
    P = int(np.ceil(np.abs(D).max())) + M + 1
    N = T + 2 * M
    ky, kx = _kgrid(N, N)
    s = np.hypot(ky, kx) / (N * pixel_size_A)
    q = dose_filters(n, s, dose_per_frame_e_A2, voltage_kV, pre_exposure_e_A2)
    norm = np.sqrt(n / np.maximum((q.astype(np.float64) ** 2).sum(axis=0), 1e-30)).astype(np.float32)
    tiles_y0 = np.repeat(np.arange(nty) * T, ntx)
    tiles_x0 = np.tile(np.arange(ntx) * T, nty)
    pad = ((P, P + nty * T - H), (P, P + ntx * T - W))

    def batch(rng):
        acc_dw = np.zeros((nty * ntx, N, N // 2 + 1), np.complex64)
        acc = np.zeros_like(acc_dw)
        for t in range(*rng):
            fp = np.pad(np.asarray(frames[t], np.float32), pad, mode="edge")
            r = np.rint(D[t])
            frac = D[t] - r
            tiles = np.stack([fp[P + y0 - M + int(oy): P + y0 - M + int(oy) + N,
                                 P + x0 - M + int(ox): P + x0 - M + int(ox) + N]
                              for y0, x0, (ox, oy) in zip(tiles_y0, tiles_x0, r)])
            X = sfft.rfft2(tiles, workers=1)
            X *= _lanczos_response(N, frac[:, 1], full=True)[:, :, None]
            X *= _lanczos_response(N, frac[:, 0], full=False)[:, None, :]
            acc += X
            X *= q[t][None]
            acc_dw += X
        return acc_dw, acc

    def add(a, b):
        a[0][...] += b[0]
        a[1][...] += b[1]
        return a

    bs = max(1, -(-n // (4 * max(1, n_workers or 2))))
    acc_dw, acc = map_reduce(batch, batch_ranges(n, bs), add, n_workers=n_workers, desc="sum", progress=progress)

    def assemble(A):
        out = sfft.irfft2(A, s=(N, N), workers=n_workers or 1)[:, M:M + T, M:M + T]
        img = out.reshape(nty, ntx, T, T).transpose(0, 2, 1, 3).reshape(nty * T, ntx * T)
        return np.ascontiguousarray(img[:H, :W], dtype=np.float32)

    acc_dw *= norm[None]
    return assemble(acc_dw), assemble(acc)


# ----------------------------------------------------------------------------- the whole movie
def _parse_patches(patches) -> tuple[int, int]:
    if patches is None:
        return 0, 0
    if isinstance(patches, str):
        a, _, b = patches.lower().partition("x")
        return int(a), int(b or a)
    if np.ndim(patches) == 0:
        return int(patches), int(patches)
    return int(patches[0]), int(patches[1])


def align_movie(frames, pixel_size_A: float, *, dose_per_frame_e_A2: float, voltage_kV: float = 300.0,
                pre_exposure_e_A2: float = 0.0, patches=(5, 5), align_bin: int = 2,
                bfactor_global_px2: float = 500.0, bfactor_local_px2: float = 150.0,
                patch_overlap: float = 0.5, max_shift_px: float = 80.0, max_local_shift_px: float = 10.0,
                max_iter: int = 10, global_px: int = 1024, patch_group: int = 1,
                tol_px: float = 0.01, model_degree: int = 2, tile_px: int = 256,
                n_workers: int | None = None, progress: bool = False) -> MotionResult:
    """Motion-correct a movie ``frames (n, H, W)`` (any real dtype; counts or gain-corrected).

    ``patches``: (nx, ny), "5x5" or 0/None for global alignment only. ``pixel_size_A`` is needed by
    the dose weighting (spatial frequencies in 1/Å). See the module doc for the method.
    """
    import time

    t0 = time.perf_counter()
    n, H, W = frames.shape
    if n < 2:
        raise ValueError(f"a movie needs at least 2 frames, got {n}")
    if pixel_size_A is None or pixel_size_A <= 0:
        raise ValueError("the pixel size (Å) is needed for dose weighting")
    b = max(1, int(align_bin))
    hb, wb = H // b // 2 * 2, W // b // 2 * 2
    # the global alignment runs on at most global_px² (Fourier-cropped further)
    hg, wg = min(hb, global_px) // 2 * 2, min(wb, global_px) // 2 * 2
    gy, gx = b * hb / hg, b * wb / wg  # movie pixels per global-grid pixel
    taper = _taper(hb, wb)
    Rb = np.zeros((n, hb, wb), np.float32)
    G = np.zeros((n, hg, wg // 2 + 1), np.complex64)

    def prep(t):
        f = np.asarray(frames[t], np.float32)
        f = f - f.mean()
        if b == 1:
            Rb[t] = f[:hb, :wb]
        else:
            Rb[t] = sfft.irfft2(_crop_rfft(sfft.rfft2(f, workers=1), hb, wb), s=(hb, wb), workers=1)
        G[t] = _crop_rfft(sfft.rfft2(Rb[t] * taper, workers=1), hg, wg)

    map_batches(prep, list(range(n)), n_workers=n_workers, desc="frames", progress=progress)
    t1 = time.perf_counter()
    g = 0.5 * (gy + gx)
    d_g, it_g = align_spectra(G, (hg, wg), bfactor_global_px2 / g**2, max_shift_px=max_shift_px / g,
                              max_iter=max_iter, tol_px=tol_px / g, n_workers=n_workers)
    G = None  # noqa: F841 (free the spectra)
    d_b = d_g * np.array([gx, gy]) / b
    d_b -= d_b[0]
    shifts = d_b * b
    t2 = time.perf_counter()

    npx, npy = _parse_patches(patches)
    model = None
    traj = np.zeros((0, n, 2))
    centres = np.zeros((0, 2))
    if npx >= 1 and npy >= 1 and npx * npy >= 4:
        mb = int(np.ceil(np.abs(d_b).max())) + 2
        sy, sx = (hb - 2 * mb) / npy, (wb - 2 * mb) / npx  # patch spacing
        ph_ = int(min(sy * (1 + patch_overlap), hb - 2 * mb)) // 2 * 2
        pw_ = int(min(sx * (1 + patch_overlap), wb - 2 * mb)) // 2 * 2
        if min(ph_, pw_) < 32:
            raise ValueError(f"patches of {pw_ * b}x{ph_ * b} pixels are too small: use fewer patches")
        ptaper = _taper(ph_, pw_)
        o = np.rint(d_b).astype(int)
        frac = d_b - o
        corners = [(int(np.clip(round(mb + (i + 0.5) * sy - ph_ / 2), mb, hb - mb - ph_)),
                    int(np.clip(round(mb + (j + 0.5) * sx - pw_ / 2), mb, wb - mb - pw_)))
                   for i in range(npy) for j in range(npx)]

        def one_patch(c):
            y0, x0 = c
            stack = np.stack([Rb[t, y0 + o[t, 1]:y0 + o[t, 1] + ph_, x0 + o[t, 0]:x0 + o[t, 0] + pw_]
                              for t in range(n)])
            stack = stack - stack.mean(axis=(1, 2), keepdims=True)
            Gp = sfft.rfft2(stack * ptaper[None], workers=1).astype(np.complex64)
            for t in range(n):  # the global shift, exactly: integer cut above, fraction here
                Gp[t] *= _phase(ph_, pw_, *frac[t])
            Gg = np.stack([Gp[groups == j].sum(axis=0) for j in range(n_groups)])
            dp, _ = align_spectra(Gg, (ph_, pw_), bfactor_local_px2 / b**2,
                                  max_shift_px=max_local_shift_px / b, max_iter=max_iter,
                                  tol_px=max(tol_px, 0.02) / b, n_workers=1)
            return dp * b  # residual displacement of each group, movie pixels

        k = max(1, int(patch_group)) if n >= 6 * max(1, int(patch_group)) else 1
        groups = np.arange(n) // k
        n_groups = int(groups.max()) + 1
        t_group = np.array([np.arange(n)[groups == j].mean() for j in range(n_groups)])
        resid = np.stack(map_batches(one_patch, corners, n_workers=n_workers, desc="patches", progress=progress))
        centres = np.array([[(x0 + pw_ / 2) * b, (y0 + ph_ / 2) * b] for y0, x0 in corners], np.float64)
        model = fit_local_model(centres, resid, (H, W), degree=model_degree, times=t_group, n_frames=n)
        traj = shifts[None] + np.stack([np.stack([np.interp(np.arange(n), t_group, r[:, ax]) for ax in range(2)],
                                                 axis=-1) for r in resid])
    t3 = time.perf_counter()

    res = MotionResult(np.zeros(0), np.zeros(0), shifts, model, traj, centres, float(pixel_size_A),
                       float(dose_per_frame_e_A2), float(pre_exposure_e_A2), float(voltage_kV))
    dw, plain = sum_frames(frames, res.displacement, pixel_size_A, dose_per_frame_e_A2, voltage_kV,
                           pre_exposure_e_A2, tile_px=tile_px, n_workers=n_workers, progress=progress)
    res.dose_weighted, res.plain_sum = dw, plain
    t4 = time.perf_counter()
    res.timings_s = {"prepare": t1 - t0, "global": t2 - t1, "global_iterations": it_g, "local": t3 - t2,
                     "sum": t4 - t3, "total": t4 - t0}
    return res


# ----------------------------------------------------------------------------- outputs
def trajectory_star(result: MotionResult, movie_name: str, *, binning: float = 1.0) -> dict:
    """RELION-style per-movie motion STAR blocks (``general``, ``global_shift``, ``local_shift``).

    Shifts are in pixels of the movie and are those that align each frame (``−d``), with frame 1 at 0
    as RELION writes them; ``local_shift`` lists the measured patch shifts relative to the global ones.
    """
    import pandas as pd

    n = result.n_frames
    H, W = result.dose_weighted.shape
    general = {"rlnImageSizeX": int(W), "rlnImageSizeY": int(H), "rlnImageSizeZ": int(n),
               "rlnMicrographMovieName": movie_name, "rlnMicrographBinning": float(binning),
               "rlnMicrographOriginalPixelSize": result.pixel_size_A,
               "rlnMicrographDoseRate": result.dose_per_frame_e_A2,
               "rlnMicrographPreExposure": result.pre_exposure_e_A2, "rlnVoltage": result.voltage_kV,
               "rlnMicrographStartFrame": 1, "rlnMotionModelVersion": 0}
    glob = pd.DataFrame({"rlnMicrographFrameNumber": np.arange(1, n + 1),
                         "rlnMicrographShiftX": -result.shifts_px[:, 0],
                         "rlnMicrographShiftY": -result.shifts_px[:, 1]})
    blocks = {"general": general, "global_shift": glob}
    if result.patch_trajectories.shape[0]:
        p = result.patch_trajectories.shape[0]
        rel = result.patch_trajectories - result.shifts_px[None]
        rel = rel - rel[:, :1]
        blocks["local_shift"] = pd.DataFrame({
            "rlnMicrographFrameNumber": np.tile(np.arange(1, n + 1), p),
            "rlnCoordinateX": np.repeat(result.patch_centres_px[:, 0], n),
            "rlnCoordinateY": np.repeat(result.patch_centres_px[:, 1], n),
            "rlnMicrographShiftX": -rel[:, :, 0].reshape(-1),
            "rlnMicrographShiftY": -rel[:, :, 1].reshape(-1)})
    return blocks


def read_trajectory_star(path) -> np.ndarray:
    """Global displacements ``(n, 2)`` [x, y] (the negated shifts) from a RELION motion STAR file."""
    import starfile

    blocks = starfile.read(path, always_dict=True)
    g = blocks["global_shift"]
    return -np.column_stack([g["rlnMicrographShiftX"].to_numpy(float), g["rlnMicrographShiftY"].to_numpy(float)])


def plot_trajectories(result: MotionResult, title: str = ""):
    """Figure: global track (frames coloured by time) and the local model at the patch centres
    (exaggerated to fill the patch spacing; the factor is in the title), over the measured patch tracks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 5))
    s = result.shifts_px
    ax[0].plot(s[:, 0], s[:, 1], "-", color="0.6", lw=0.8)
    sc = ax[0].scatter(s[:, 0], s[:, 1], c=np.arange(len(s)), s=12, cmap="viridis")
    ax[0].set_aspect("equal", "datalim")
    ax[0].set_xlabel("x (px)")
    ax[0].set_ylabel("y (px)")
    ax[0].set_title(f"global drift, {result.stats()['total_motion_A']:.1f} Å in total")
    fig.colorbar(sc, ax=ax[0], label="frame")
    H, W = result.dose_weighted.shape
    ax[1].set_xlim(0, W)
    ax[1].set_ylim(H, 0)
    ax[1].set_aspect("equal")
    if result.local_model is not None and len(result.patch_centres_px):
        c = result.patch_centres_px
        t = np.arange(result.n_frames)
        lx, ly = result.local_model(c[None, :, 0], c[None, :, 1], t[:, None])
        meas = result.patch_trajectories - result.shifts_px[None]
        meas = meas - meas[:, :1]
        amp = max(float(np.hypot(lx, ly).max()), 0.05)
        d = np.hypot(*(c[:, None, :] - c[None, :, :]).transpose(2, 0, 1))
        spacing = float(d[d > 0].min()) if len(c) > 1 else float(W)
        scale = max(1.0, round(0.45 * spacing / amp))
        for i in range(len(c)):
            ax[1].plot(c[i, 0] + scale * meas[i, :, 0], c[i, 1] + scale * meas[i, :, 1], ".", ms=1.5,
                       color="0.6")
            ax[1].plot(c[i, 0] + scale * lx[:, i], c[i, 1] + scale * ly[:, i], "-", color="C3", lw=1.2)
        ax[1].set_title(f"local model (×{scale:.0f}); fit r.m.s. {result.local_model.rms_residual_px:.2f} px")
    else:
        ax[1].set_title("no local model (global alignment only)")
    ax[1].set_xlabel("x (px)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
