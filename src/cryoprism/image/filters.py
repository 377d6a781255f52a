"""Fourier filters with soft edges (raised cosine or Gaussian) and Gaussian blur.

Cutoffs are given as a resolution in Å (``resolution_A``) or a spatial frequency in 1/Å
(``freq_invA``), with the pixel size in Å. With ``pixel_size_A=1`` the units are pixels and
cycles/pixel. All functions act on the trailing ``ndim`` axes and are batched over leading axes.
"""

from __future__ import annotations

import numpy as np

from cryoprism.fourier.core import fftnc, ifftnc, radius_grid

EDGES = ("cosine", "gaussian")


def _cutoff_invA(resolution_A, freq_invA, what):
    if (resolution_A is None) == (freq_invA is None):
        raise ValueError(f"{what}: give exactly one of resolution_A (Å) or freq_invA (1/Å)")
    if freq_invA is not None:
        f = float(freq_invA)
    else:
        if float(resolution_A) <= 0:
            raise ValueError(f"{what}: resolution_A must be positive, got {resolution_A}")
        f = 1.0 / float(resolution_A)
    if f < 0:
        raise ValueError(f"{what}: negative frequency {f}")
    return f


def lowpass_profile(s: np.ndarray, cutoff_invA: float, edge: str = "cosine",
                    width_invA: float | None = None) -> np.ndarray:
    """Low-pass transfer function H(s), equal to 1/2 at ``s = cutoff_invA``.

    * ``cosine``: 1 below ``fc − w/2``, 0 above ``fc + w/2``, ``½(1 + cos(π (s − fc + w/2) / w))``
      in between (raised cosine of full width ``w = width_invA``; ``w = 0`` is a hard edge).
    * ``gaussian``: ``exp(−ln 2 · (s / fc)²)`` (``width_invA`` unused).
    """
    s = np.asarray(s, dtype=np.float64)
    fc = float(cutoff_invA)
    if edge == "gaussian":
        if fc <= 0:
            return (s == 0).astype(np.float64)
        return np.exp(-np.log(2.0) * (s / fc) ** 2)
    if edge != "cosine":
        raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
    w = 0.0 if width_invA is None else float(width_invA)
    if w <= 0:
        return np.where(s < fc, 1.0, np.where(s == fc, 0.5, 0.0))
    t = np.clip((s - (fc - 0.5 * w)) / w, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def apply_radial_filter(x: np.ndarray, H: np.ndarray, ndim: int = 2) -> np.ndarray:
    """Multiply the centred transform of ``x`` by ``H`` (broadcast over leading axes); real in → real out."""
    y = ifftnc(fftnc(x, ndim) * H, ndim)
    if not np.iscomplexobj(x):
        y = y.real
    return y.astype(np.result_type(x.dtype, np.float32), copy=False)


def _default_width(shape, pixel_size_A):
    # three Fourier pixels of the largest axis
    return 3.0 / (max(shape) * pixel_size_A)


def _grid(x, ndim, pixel_size_A):
    return radius_grid(np.shape(x)[-ndim:], pixel_size_A)


def lowpass(x: np.ndarray, pixel_size_A: float = 1.0, *, resolution_A: float | None = None,
            freq_invA: float | None = None, edge: str = "cosine", width_invA: float | None = None,
            ndim: int = 2) -> np.ndarray:
    """Low-pass filter; the transfer is 1/2 at the cutoff (default cosine edge 3 Fourier pixels wide)."""
    fc = _cutoff_invA(resolution_A, freq_invA, "lowpass")
    w = _default_width(np.shape(x)[-ndim:], pixel_size_A) if width_invA is None else width_invA
    return apply_radial_filter(x, lowpass_profile(_grid(x, ndim, pixel_size_A), fc, edge, w), ndim)


def highpass(x: np.ndarray, pixel_size_A: float = 1.0, *, resolution_A: float | None = None,
             freq_invA: float | None = None, edge: str = "cosine", width_invA: float | None = None,
             ndim: int = 2) -> np.ndarray:
    """High-pass filter ``1 − H_lowpass``; the transfer is 1/2 at the cutoff."""
    fc = _cutoff_invA(resolution_A, freq_invA, "highpass")
    w = _default_width(np.shape(x)[-ndim:], pixel_size_A) if width_invA is None else width_invA
    H = 1.0 - lowpass_profile(_grid(x, ndim, pixel_size_A), fc, edge, w)
    return apply_radial_filter(x, H, ndim)


def bandpass(x: np.ndarray, pixel_size_A: float = 1.0, *, low_resolution_A: float | None = None,
             high_resolution_A: float | None = None, low_freq_invA: float | None = None,
             high_freq_invA: float | None = None, edge: str = "cosine", width_invA: float | None = None,
             ndim: int = 2) -> np.ndarray:
    """Band-pass: keeps frequencies between the low cutoff (coarse, e.g. 200 Å) and the high one (e.g. 8 Å).

    Transfer ``H_low(s; high cutoff) · (1 − H_low(s; low cutoff))``.
    """
    f_lo = _cutoff_invA(low_resolution_A, low_freq_invA, "bandpass low cutoff")
    f_hi = _cutoff_invA(high_resolution_A, high_freq_invA, "bandpass high cutoff")
    if f_lo >= f_hi:
        raise ValueError(f"bandpass: low cutoff {f_lo:g} 1/Å must be below high cutoff {f_hi:g} 1/Å")
    w = _default_width(np.shape(x)[-ndim:], pixel_size_A) if width_invA is None else width_invA
    s = _grid(x, ndim, pixel_size_A)
    H = lowpass_profile(s, f_hi, edge, w) * (1.0 - lowpass_profile(s, f_lo, edge, w))
    return apply_radial_filter(x, H, ndim)


def gaussian_blur(x: np.ndarray, sigma_px: float, ndim: int = 2) -> np.ndarray:
    """Convolve with a unit-sum Gaussian of standard deviation ``sigma_px`` pixels (periodic boundary).

    Done in Fourier space: ``H(k) = exp(−2π² σ² k²)`` with ``k`` in cycles/pixel.
    """
    if sigma_px < 0:
        raise ValueError(f"sigma_px must be ≥ 0, got {sigma_px}")
    k = _grid(x, ndim, 1.0)
    return apply_radial_filter(x, np.exp(-2.0 * np.pi**2 * float(sigma_px) ** 2 * k * k), ndim)
