"""Cross-correlation alignment: translations with a sub-pixel peak, and 2-D rotation + translation.

Model: ``image ≈ fourier_shift(rotate(reference, angle_deg), shift_px)`` (shifts in (x, y) order,
pixels; angles from x toward y, degrees). Everything is batched over a stack of images against one
reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryoprism.fourier.core import fft2c, ifft2c
from cryoprism.image.transform import rotate


@dataclass(frozen=True)
class Alignment:
    """Alignment of n images to a reference (arrays over images)."""

    shifts_px: np.ndarray  # (n, 2) (x, y): image ≈ shift(rotate(reference, angle), shift)
    angles_deg: np.ndarray  # (n,) zeros for translation-only alignment
    score: np.ndarray  # (n,) normalised cross-correlation at the peak


@dataclass(frozen=True)
class TemplateMatch:
    """Best template per image (:func:`align_templates`)."""

    shifts_px: np.ndarray  # (n, 2) (x, y): image ≈ shift(templates[template], shift)
    template: np.ndarray  # (n,) index of the best template
    score: np.ndarray  # (n,) normalised cross-correlation at the peak


def _as_stack(x):
    x = np.asarray(x, dtype=np.float64)
    return (x[None], True) if x.ndim == 2 else (x, False)


def cross_correlation(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Circular cross-correlation ``CC(t) = Σ_x image(x) · reference(x − t)`` on a centred grid.

    ``CC[..., L//2 + ty, L//2 + tx]`` is the correlation at shift ``t``; an image equal to the
    reference shifted by ``t`` peaks there.
    """
    return ifft2c(fft2c(images) * np.conj(fft2c(reference))).real


def _dft_grid(P: np.ndarray, ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
    """``C[n, i, j] = Re Σ_k P[n, k] exp(2πi (k_y ty[n, i] + k_x tx[n, j]) / L) / L²``.

    A matrix-multiply DFT written with ``einsum`` (numpy's own loops): batched BLAS calls on small
    matrices slow down by an order of magnitude when the cores are oversubscribed.
    """
    n, L, _ = P.shape
    k = (np.arange(L) - L // 2).astype(np.float32)
    Ey = np.exp((2j * np.pi / L) * ty[:, :, None].astype(np.float32) * k).astype(np.complex64)
    Ex = np.exp((2j * np.pi / L) * tx[:, :, None].astype(np.float32) * k).astype(np.complex64)
    return np.einsum("nil,njl->nij", np.einsum("nik,nkl->nil", Ey, P), Ex).real / (L * L)


def _refine_peak(P: np.ndarray, t0: np.ndarray, upsample: int) -> tuple[np.ndarray, np.ndarray]:
    """Maximise ``Σ_k P(k) exp(2πi k·t/L)`` near the integer peak ``t0`` (n, 2) to ~1/upsample px.

    Two matrix-multiply DFT stages (±0.75 px in steps of 1/4, then ±1/4 px in steps of
    1/upsample), then a parabola through the best fine sample and its neighbours.
    """
    n = P.shape[0]
    P = P.astype(np.complex64)
    r = np.arange(n)
    t = t0.astype(np.float64)
    C = None
    for half, step in ((0.75, 0.25), (0.25, 1.0 / upsample)):
        d = np.arange(-round(half / step), round(half / step) + 1) * step
        ty = t[:, 1, None] + d[None, :]
        tx = t[:, 0, None] + d[None, :]
        C = _dft_grid(P, ty, tx)
        m = d.size
        j = C.reshape(n, -1).argmax(axis=1)
        iy, ix = np.unravel_index(j, (m, m))
        t = np.stack([tx[r, ix], ty[r, iy]], axis=1)

    def para(cm, c0, cp):
        den = cm - 2 * c0 + cp
        return np.where(den != 0, 0.5 * (cm - cp) / np.where(den == 0, 1, den), 0.0)

    iyc, ixc = np.clip(iy, 1, m - 2), np.clip(ix, 1, m - 2)
    fy = para(C[r, iyc - 1, ixc], C[r, iyc, ixc], C[r, iyc + 1, ixc])
    fx = para(C[r, iyc, ixc - 1], C[r, iyc, ixc], C[r, iyc, ixc + 1])
    fy = np.where(iy == iyc, np.clip(fy, -0.5, 0.5), 0.0)
    fx = np.where(ix == ixc, np.clip(fx, -0.5, 0.5), 0.0)
    t = t + np.stack([fx, fy], axis=1) * step
    return t, C[r, iy, ix]


def align_translation(images: np.ndarray, reference: np.ndarray, max_shift_px: float | None = None,
                      upsample: int = 20) -> Alignment:
    """Shift ``t`` (x, y) with ``image ≈ fourier_shift(reference, t)``, per image, to ~1/upsample px.

    ``reference`` is one image ``(L, L)`` for all, or one per image ``(n, L, L)``. The integer peak
    of the cross-correlation (within ``max_shift_px`` of 0 if given) is refined by evaluating the
    correlation with matrix-multiply DFTs of the cross-power spectrum (see ``_refine_peak``). The
    score is the normalised correlation ``CC / (‖image − mean‖ ‖reference − mean‖)``.
    """
    x, single = _as_stack(images)
    ref = np.asarray(reference, dtype=np.float64)
    n, L, _ = x.shape
    x = x - x.mean(axis=(1, 2), keepdims=True)
    ref = ref - ref.mean(axis=(-2, -1), keepdims=True)
    Fi, Fr = fft2c(x), fft2c(ref)
    P = Fi * np.conj(Fr)
    cc = ifft2c(P).real
    if max_shift_px is not None:
        yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
        cc = np.where((xx**2 + yy**2 <= max_shift_px**2)[None], cc, -np.inf)
    j = cc.reshape(n, -1).argmax(axis=1)
    iy, ix = np.unravel_index(j, (L, L))
    t0 = np.stack([ix - L // 2, iy - L // 2], axis=1).astype(np.float64)
    t, peak = _refine_peak(P, t0, int(upsample)) if upsample > 1 else (t0, cc.reshape(n, -1).max(axis=1))
    norm = np.sqrt((x**2).sum(axis=(1, 2)) * (ref**2).sum(axis=(-2, -1)))
    score = peak / np.where(norm > 0, norm, 1.0)
    if single:
        return Alignment(t[0], np.zeros(()), score[0])
    return Alignment(t, np.zeros(n), score)


def polar_transform(x: np.ndarray, n_radii: int, n_angles: int, r_min: float, r_max: float) -> np.ndarray:
    """Sample ``(n, L, L)`` images on a polar grid about ``L//2``: ``(n, n_radii, n_angles)``
    (angles ``2π j / n_angles`` from x toward y; bilinear interpolation)."""
    n, L, _ = x.shape
    r = np.linspace(r_min, r_max, n_radii)
    a = 2 * np.pi * np.arange(n_angles) / n_angles
    yy = L // 2 + r[:, None] * np.sin(a)[None, :]
    xx = L // 2 + r[:, None] * np.cos(a)[None, :]
    coords = np.stack([np.broadcast_to(np.arange(n)[:, None, None], (n,) + yy.shape),
                       np.broadcast_to(yy, (n,) + yy.shape), np.broadcast_to(xx, (n,) + yy.shape)])
    return ndimage.map_coordinates(x, coords, order=1, mode="nearest")


def _rotation_candidates(x, ref, n_angles):
    """In-plane angle from the polar correlation of Fourier magnitudes (180° ambiguous)."""
    n, L, _ = x.shape
    A = np.abs(fft2c(x))
    B = np.abs(fft2c(ref))[None]
    r_min, r_max = 2.0, 0.8 * (L // 2)
    n_r = max(8, int(r_max - r_min))
    pa = polar_transform(A, n_r, n_angles, r_min, r_max)
    pb = polar_transform(B, n_r, n_angles, r_min, r_max)
    w = np.linspace(r_min, r_max, n_r)[None, :, None]
    pa = (pa - pa.mean(axis=2, keepdims=True)) * w
    pb = (pb - pb.mean(axis=2, keepdims=True)) * w
    # C(Δ) = Σ_r Σ_φ pa(r, φ) pb(r, φ − Δ)
    C = np.fft.ifft(np.fft.fft(pa, axis=2) * np.conj(np.fft.fft(pb, axis=2)), axis=2).real.sum(axis=1)
    j = C.argmax(axis=1)
    cm, c0, cp = C[np.arange(n), j - 1], C[np.arange(n), j], C[np.arange(n), (j + 1) % n_angles]
    den = cm - 2 * c0 + cp
    frac = np.where(den != 0, 0.5 * (cm - cp) / np.where(den == 0, 1, den), 0.0)
    return (j + np.clip(frac, -0.5, 0.5)) * 360.0 / n_angles


def align_rotation_translation(images: np.ndarray, reference: np.ndarray, n_angles: int = 720,
                               max_shift_px: float | None = None, upsample: int = 20,
                               refine: bool = True) -> Alignment:
    """Angle θ and shift t with ``image ≈ fourier_shift(rotate(reference, θ), t)``, per image.

    1. The Fourier magnitudes (translation invariant) are resampled on a polar grid and
       correlated along the angle with FFTs: the peak (parabola-refined) gives θ modulo 180°.
    2. Both θ and θ + 180° are tried with translational alignment against the rotated reference;
       the higher normalised correlation wins.
    3. With ``refine``, a golden-section search within ±(360/n_angles)° maximises the correlation.
    """
    x, single = _as_stack(images)
    ref = np.asarray(reference, dtype=np.float64)
    n = x.shape[0]
    theta = _rotation_candidates(x, ref, n_angles)
    best_t = np.zeros((n, 2))
    best_s = np.full(n, -np.inf)
    best_a = np.zeros(n)
    for extra in (0.0, 180.0):
        ang = (theta + extra) % 360.0
        res = align_translation(x, rotate(np.broadcast_to(ref, x.shape), ang), max_shift_px, upsample)
        better = res.score > best_s
        best_s = np.where(better, res.score, best_s)
        best_a = np.where(better, ang, best_a)
        best_t[better] = res.shifts_px[better]
    if refine:
        from scipy.optimize import minimize_scalar

        step = 360.0 / n_angles
        for i in range(n):
            f = lambda a: -align_translation(x[i], rotate(ref, a), max_shift_px, upsample).score  # noqa: E731
            opt = minimize_scalar(f, bounds=(best_a[i] - step, best_a[i] + step), method="bounded",
                                  options={"xatol": 0.01})
            if -opt.fun > best_s[i]:
                best_a[i] = opt.x % 360.0
                r = align_translation(x[i], rotate(ref, best_a[i]), max_shift_px, upsample)
                best_s[i], best_t[i] = r.score, r.shifts_px
    if single:
        return Alignment(best_t[0], best_a[0], best_s[0])
    return Alignment(best_t, best_a, best_s)


def align_templates(images: np.ndarray, templates: np.ndarray, max_shift_px: float | None = None,
                    size: int | None = None, batch_size: int | None = None) -> "TemplateMatch":
    """Best template and shift per image: ``image ≈ fourier_shift(templates[k], t)`` (multi-reference).

    For every image the cross-correlation with every template (each normalised to unit energy, so
    templates of different strength compete fairly) is searched over all shifts within
    ``max_shift_px``; the highest peak wins (:func:`template_peaks` gives every template's peak).
    ``size``: correlate only the central ``size × size`` Fourier coefficients (a Fourier crop:
    ``L/size`` times fewer operations, shifts on a grid of ``L/size`` px). ``score``: the peak over
    ``‖image‖ ‖template‖`` in the kept band. ``batch_size``: images per FFT batch (default: as many as
    keep the correlation maps near 256 MB).
    """
    x, single = _as_stack(images)
    score, shifts = template_peaks(x, templates, max_shift_px=max_shift_px, size=size, batch_size=batch_size)
    r = np.arange(x.shape[0])
    index = score.argmax(axis=1)
    out = TemplateMatch(shifts[r, index], index, score[r, index])
    if single:
        return TemplateMatch(out.shifts_px[0], out.template[0], out.score[0])
    return out


def template_peaks(images: np.ndarray, templates: np.ndarray, max_shift_px: float | None = None,
                   size: int | None = None, batch_size: int | None = None):
    """Peak of the cross-correlation of every image with every template: ``(score, shifts)``.

    ``score[i, k]``: normalised correlation peak (over ``‖image‖ ‖template‖`` in the kept band) within
    ``max_shift_px``; ``shifts[i, k]`` (x, y): ``image_i ≈ fourier_shift(templates[k], t)``, refined
    by a parabola through the peak and its neighbours. ``size`` and ``batch_size`` as in
    :func:`align_templates`.
    """
    import scipy.fft as sfft

    from cryoprism.parallel.config import fft_workers

    x, _ = _as_stack(images)
    T = np.asarray(templates, dtype=np.float64)
    n, L, _ = x.shape
    Ls = L if size is None else int(size)
    if not 2 <= Ls <= L:
        raise ValueError(f"size must be in [2, {L}], got {Ls}")
    c0 = (L - Ls) // 2
    band = (slice(None), slice(c0, c0 + Ls), slice(c0, c0 + Ls))
    FT = fft2c(T - T.mean(axis=(1, 2), keepdims=True))[band]
    FT /= np.maximum(np.sqrt((np.abs(FT) ** 2).sum(axis=(1, 2), keepdims=True)), 1e-30)
    # work in the unshifted FFT layout: no fftshift copies; cc[p, q] is the shift (q, p) modulo Ls
    # the correlation is real: keep the non-negative x-frequencies only (irfft2)
    h = Ls // 2 + 1
    FTc = np.ascontiguousarray(sfft.ifftshift(np.conj(FT), axes=(-2, -1))[..., :h]).astype(np.complex64)
    nt = FTc.shape[0]
    scale = L / Ls
    wrap = (np.arange(Ls) + Ls // 2) % Ls - Ls // 2          # unshifted index → signed shift
    yy, xx = np.meshgrid(wrap, wrap, indexing="ij")
    win = np.ones((Ls, Ls), bool) if max_shift_px is None else (xx**2 + yy**2) * scale**2 <= max_shift_px**2
    widx = np.flatnonzero(win)
    if batch_size is None:
        batch_size = max(1, int(2**28 // (nt * Ls * Ls * 12)))   # float32 maps + complex64 products
    shifts = np.zeros((n, nt, 2))
    score = np.zeros((n, nt))
    for a in range(0, n, batch_size):
        b = min(n, a + batch_size)
        m = b - a
        FX = fft2c(x[a:b] - x[a:b].mean(axis=(1, 2), keepdims=True))[band]
        norm = np.sqrt((np.abs(FX) ** 2).sum(axis=(1, 2)))
        prod = sfft.ifftshift(FX, axes=(-2, -1))[..., :h].astype(np.complex64)[:, None] * FTc[None]
        cc = sfft.irfft2(prod, s=(Ls, Ls), workers=fft_workers(), overwrite_x=True).reshape(m * nt, Ls, Ls)
        w = cc.reshape(m * nt, Ls * Ls)[:, widx].argmax(axis=1)
        py, px = np.divmod(widx[w], Ls)
        r = np.arange(m * nt)
        c0_ = cc[r, py, px]
        # parabola through the peak and its neighbours along x and y (sub-grid position)
        fine = []
        for dy, dx in ((0, 1), (1, 0)):
            cm = cc[r, (py - dy) % Ls, (px - dx) % Ls]
            cp = cc[r, (py + dy) % Ls, (px + dx) % Ls]
            den = cm - 2 * c0_ + cp
            ok = den < 0
            fine.append(np.where(ok, 0.5 * (cm - cp) / np.where(ok, den, -1.0), 0.0))
        t = (np.stack([wrap[px], wrap[py]], axis=1) + np.clip(np.stack(fine, 1), -0.5, 0.5)) * scale
        shifts[a:b] = t.reshape(m, nt, 2)
        # ifft2 normalises by Ls²; Parseval in the kept band: peak = Σ FX conj(FT) / Ls²
        score[a:b] = c0_.reshape(m, nt) * Ls**2 / np.where(norm > 0, norm, 1.0)[:, None]
    return score, shifts
