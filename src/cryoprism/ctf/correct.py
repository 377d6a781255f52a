"""CTF correction of particle images: phase flipping, Wiener filtering, B-factor envelopes."""

from __future__ import annotations

import numpy as np

from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.fourier.core import fftnc, ifftnc, radius_grid
from cryoprism.fourier.resample import shells_to_grid


def _ctf_grid(images, p: CTFParams, pixel_size_A: float):
    L = images.shape[-1]
    if images.shape[-2] != L:
        raise ValueError(f"CTF correction needs square images, got {images.shape[-2:]}")
    return ctf_2d(L, pixel_size_A, p, dtype=np.float64)


def _real(y, x):
    return y.real.astype(np.result_type(x.dtype, np.float32), copy=False)


def phase_flip(images: np.ndarray, p: CTFParams, pixel_size_A: float) -> np.ndarray:
    """Multiply each image's transform by ``sign(CTF)`` (CTF zeros map to 0).

    ``images`` is ``(L, L)`` with scalar parameters or ``(n, L, L)`` with parameters of n particles
    (or scalars shared by all).
    """
    images = np.asarray(images)
    C = _ctf_grid(images, p, pixel_size_A)
    return _real(ifftnc(fftnc(images, 2) * np.sign(C), 2), images)


def _ssnr_grid(ssnr, L):
    s = np.asarray(ssnr, dtype=np.float64)
    if s.ndim == 0:
        return s
    return shells_to_grid(s, (L, L))


def wiener_filter(images: np.ndarray, p: CTFParams, pixel_size_A: float, ssnr) -> np.ndarray:
    """Wiener CTF correction ``Ĉ·SSNR / (Ĉ²·SSNR + 1)`` (= ``Ĉ / (Ĉ² + 1/SSNR)``) of each image.

    ``ssnr`` is a scalar or a radial profile indexed by integer Fourier shell ``k`` (linear
    interpolation between shells; beyond the last shell the last value). SSNR = 0 gives 0.
    """
    images = np.asarray(images)
    L = images.shape[-1]
    C = _ctf_grid(images, p, pixel_size_A)
    S = _ssnr_grid(ssnr, L)
    if np.any(np.asarray(S) < 0):
        raise ValueError("SSNR must be non-negative")
    W = C * S / (C * C * S + 1.0)
    return _real(ifftnc(fftnc(images, 2) * W, 2), images)


def bfactor_envelope(s, bfactor_A2: float) -> np.ndarray:
    """``exp(−B s² / 4)`` at spatial frequencies ``s`` (1/Å), the CTF envelope of docs/conventions.md."""
    s = np.asarray(s, dtype=np.float64)
    return np.exp(-float(bfactor_A2) * s * s / 4.0)


def apply_bfactor(x: np.ndarray, bfactor_A2: float, pixel_size_A: float, ndim: int = 2) -> np.ndarray:
    """Multiply the transform by ``exp(−B s²/4)``: B > 0 blurs, B < 0 sharpens (images or volumes)."""
    x = np.asarray(x)
    s = radius_grid(x.shape[-ndim:], pixel_size_A)
    return _real(ifftnc(fftnc(x, ndim) * bfactor_envelope(s, bfactor_A2), ndim), x)
