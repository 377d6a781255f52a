"""Sub-pixel Fourier shifts and spline rotations about the centre ``L//2``."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cryoprism.fourier.core import fftnc, ifftnc


def shift_phases(shape, shifts_px: np.ndarray) -> np.ndarray:
    """Phase ramps ``exp(−2πi k·t / L)`` for shifts ``t`` given as ``(..., ndim)`` in (x, y[, z]) order."""
    ndim = len(shape)
    t = np.asarray(shifts_px, dtype=np.float64)
    if t.shape[-1] != ndim:
        raise ValueError(f"shifts need {ndim} components (x, y[, z]), got shape {t.shape}")
    lead = t.shape[:-1]
    phase = np.zeros(lead + tuple(shape))
    for ax in range(ndim):  # component ax of t is (x, y, z)[ax] → array axis ndim-1-ax
        arr_ax = ndim - 1 - ax
        n = shape[arr_ax]
        k = (np.arange(n) - n // 2) / n
        kshape = [1] * ndim
        kshape[arr_ax] = n
        phase = phase + t[..., ax].reshape(lead + (1,) * ndim) * k.reshape(kshape)
    return np.exp(-2j * np.pi * phase)


def fourier_shift(x: np.ndarray, shifts_px, ndim: int = 2) -> np.ndarray:
    """Shift by ``shifts_px`` pixels (x, y[, z] order; content moves toward larger indices), periodic.

    ``x`` is ``(..., L, L)`` and ``shifts_px`` broadcasts as ``(..., ndim)`` (one shift per image of a
    stack, or one for all). Sub-pixel shifts are band-limited (sinc) interpolation; integer shifts
    equal ``np.roll``.
    """
    x = np.asarray(x)
    shape = x.shape[-ndim:]
    y = ifftnc(fftnc(x, ndim) * shift_phases(shape, shifts_px), ndim)
    if not np.iscomplexobj(x):
        y = y.real
    return y.astype(np.result_type(x.dtype, np.float32), copy=False)


def rotation_matrix_2d(angle_deg: float) -> np.ndarray:
    """Active rotation by ``angle_deg`` from the x axis toward the y axis, acting on (x, y)."""
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def rotate(x: np.ndarray, angles_deg, order: int = 3, mode: str = "constant",
           cval: float = 0.0) -> np.ndarray:
    """Rotate images ``(..., L, L)`` about ``(L//2, L//2)`` by ``angles_deg`` (scalar or one per image).

    A point at (x, y) from the centre moves to ``R(θ)(x, y)`` (x toward y). With RELION angles,
    an in-plane ``psi`` rotates the projection by ``−psi``. Spline interpolation of order ``order``
    (scipy.ndimage, prefiltered); outside the box ``mode``/``cval`` apply.
    """
    x = np.asarray(x)
    lead = x.shape[:-2]
    H, W = x.shape[-2:]
    flat = x.reshape((-1, H, W))
    ang = np.broadcast_to(np.asarray(angles_deg, dtype=np.float64), lead).reshape(-1)
    out = np.empty(flat.shape, dtype=np.result_type(x.dtype, np.float32))
    c = np.array([H // 2, W // 2], dtype=np.float64)
    for i in range(flat.shape[0]):  # ndimage has no batched affine transform with per-image matrices
        a = np.deg2rad(ang[i])
        # output (y, x) samples input at R(−θ)·(out − c) + c in (y, x) order
        m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])  # inverse rot in (y, x) order
        off = c - m @ c
        out[i] = ndimage.affine_transform(flat[i], m, offset=off, order=order, mode=mode, cval=cval)
    return out.reshape(x.shape)
