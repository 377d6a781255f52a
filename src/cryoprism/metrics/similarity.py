"""Pixel-wise similarity of images or volumes: MSE, PSNR and SSIM (ours, Gaussian window).

Every function compares ``x`` with a reference ``ref`` over the trailing ``ndim`` axes and broadcasts
over leading axes (a stack of images gives one value per image).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _axes(x: np.ndarray, ndim: int | None):
    nd = x.ndim if ndim is None else int(ndim)
    if nd < 1 or nd > x.ndim:
        raise ValueError(f"ndim={ndim} does not fit an array of shape {x.shape}")
    return tuple(range(x.ndim - nd, x.ndim))


def mse(x, ref, ndim: int | None = None) -> np.ndarray:
    """Mean squared error over the trailing ``ndim`` axes (all axes when ``None``)."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    x, ref = np.broadcast_arrays(x, ref)
    return np.mean((x - ref) ** 2, axis=_axes(x, ndim))


def psnr(x, ref, data_range: float | None = None, ndim: int | None = None) -> np.ndarray:
    """Peak SNR in dB: ``10 log10(data_range² / MSE)``; ``data_range`` defaults to ``max − min`` of
    ``ref`` over the same axes."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    x, ref = np.broadcast_arrays(x, ref)
    ax = _axes(x, ndim)
    if data_range is None:
        data_range = ref.max(axis=ax) - ref.min(axis=ax)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(data_range, dtype=np.float64) ** 2 / mse(x, ref, ndim))


def gaussian_window(sigma_px: float, truncate: float = 3.5) -> np.ndarray:
    """Normalised 1-D Gaussian window of radius ``int(truncate · sigma + ½)``."""
    r = int(truncate * sigma_px + 0.5)
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma_px) ** 2)
    return w / w.sum()


def ssim(x, ref, data_range: float | None = None, sigma_px: float = 1.5, ndim: int = 2,
         k1: float = 0.01, k2: float = 0.03, full: bool = False):
    """Structural similarity (Wang et al. 2004) with a Gaussian window, batched over leading axes.

    Local statistics are weighted by a separable Gaussian window (``sigma_px``, truncated at 3.5σ):
    ``μ = w * x``, ``σ² = w * x² − μ²``, ``σ_xr = w * (x·ref) − μ_x μ_r`` (no sample-size correction), and

        SSIM = (2 μ_x μ_r + C1)(2 σ_xr + C2) / ((μ_x² + μ_r² + C1)(σ_x² + σ_r² + C2)),

    ``C1 = (k1 · D)²``, ``C2 = (k2 · D)²``, ``D = data_range`` (default: ``max − min`` of ``ref`` per
    item). The mean is taken over the interior, leaving out a border of the window radius, so edge
    handling does not matter. Returns one value per leading index (and the SSIM map with ``full``).
    """
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    x, ref = np.broadcast_arrays(x, ref)
    ax = _axes(x, ndim)
    w = gaussian_window(sigma_px)
    r = len(w) // 2
    if any(x.shape[a] <= 2 * r for a in ax):
        raise ValueError(f"images of shape {x.shape} are too small for a window of radius {r}")
    if data_range is None:
        data_range = ref.max(axis=ax, keepdims=True) - ref.min(axis=ax, keepdims=True)
    else:
        data_range = np.asarray(data_range, dtype=np.float64)
        data_range = data_range.reshape(data_range.shape + (1,) * len(ax))
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2

    def smooth(a):
        for axis in ax:
            a = ndimage.correlate1d(a, w, axis=axis, mode="reflect")
        return a

    mx, mr = smooth(x), smooth(ref)
    vx = smooth(x * x) - mx * mx
    vr = smooth(ref * ref) - mr * mr
    cxr = smooth(x * ref) - mx * mr
    smap = ((2 * mx * mr + c1) * (2 * cxr + c2)) / ((mx * mx + mr * mr + c1) * (vx + vr + c2))
    inner = tuple(slice(r, -r) if a in ax else slice(None) for a in range(x.ndim))
    val = smap[inner].mean(axis=ax)
    return (val, smap) if full else val
