"""Guinier B-factor estimate and B-factor application (sharpening / blurring).

Amplitudes fall off as ``|F(s)| ∝ exp(−B s² / 4)`` (crystallographic B, Å²; ``s = 1/d`` in 1/Å), so
the shell-averaged power follows ``ln ⟨|F|²⟩(s) = c − (B/2) s²``: a straight line against ``s² = 1/d²``
(the Guinier plot) whose slope gives ``B = −2 · slope``. See docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoprism.fourier import fftnc, ifftnc, radial_index, radius_grid


@dataclass(frozen=True)
class GuinierFit:
    """Least-squares line ``ln⟨|F|²⟩ = intercept − (bfactor_A2/2) · s²`` over the fitted shells.

    ``s2_invA2`` / ``ln_power`` hold every shell (0 … L//2) of the Guinier plot; ``fitted`` marks the
    shells used.
    """

    bfactor_A2: float
    intercept: float
    s2_invA2: np.ndarray
    ln_power: np.ndarray
    fitted: np.ndarray


def guinier_bfactor(volume, pixel_size_A: float, d_low_A: float = 10.0, d_high_A: float | None = None,
                    mask=None) -> GuinierFit:
    """Estimate the B-factor (Å²) of a map from its Guinier plot between ``d_low_A`` and ``d_high_A``.

    ``d_high_A`` defaults to Nyquist (``2 · pixel_size_A``). Positive B = amplitudes decaying with
    frequency (a blurred map). ``mask`` multiplies the map first.
    """
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim not in (2, 3) or len(set(v.shape)) != 1:
        raise ValueError(f"expected a square image or a cubic volume, got shape {v.shape}")
    if mask is not None:
        v = v * np.asarray(mask)
    L = v.shape[0]
    d_high_A = 2.0 * pixel_size_A if d_high_A is None else float(d_high_A)
    if not d_high_A < d_low_A:
        raise ValueError(f"d_high_A ({d_high_A}) must be finer (smaller) than d_low_A ({d_low_A})")
    F = fftnc(v, v.ndim)
    k = radial_index(v.shape).ravel()
    n_sh = L // 2 + 1
    keep = k < n_sh
    p = np.bincount(k[keep], weights=(np.abs(F) ** 2).ravel()[keep], minlength=n_sh)
    n = np.bincount(k[keep], minlength=n_sh)
    mean_p = p / np.maximum(n, 1)
    s = np.arange(n_sh) / (L * pixel_size_A)
    with np.errstate(divide="ignore"):
        lnp = np.log(mean_p)
    fitted = (s >= 1.0 / d_low_A) & (s <= 1.0 / d_high_A) & np.isfinite(lnp)
    if fitted.sum() < 3:
        raise ValueError(f"fewer than 3 shells between {d_low_A} Å and {d_high_A} Å; widen the band")
    slope, icpt = np.polyfit(s[fitted] ** 2, lnp[fitted], 1)
    return GuinierFit(bfactor_A2=float(-2.0 * slope), intercept=float(icpt), s2_invA2=s ** 2,
                      ln_power=lnp, fitted=fitted)


def apply_bfactor(volume, pixel_size_A: float, bfactor_A2: float) -> np.ndarray:
    """Multiply the transform by ``exp(−B s² / 4)``: ``B > 0`` blurs, ``B < 0`` sharpens.

    Sharpening a map whose Guinier fit gave ``B`` is ``apply_bfactor(map, px, −B)`` (usually followed by
    a low-pass at the FSC resolution, :func:`cryoprism.image.filters.lowpass`). Keeps the input's dtype.
    """
    v = np.asarray(volume)
    s = radius_grid(v.shape[-v.ndim:], pixel_size_A)
    out = ifftnc(fftnc(v, v.ndim) * np.exp(-float(bfactor_A2) * s ** 2 / 4.0), v.ndim).real
    return out.astype(v.dtype if np.issubdtype(v.dtype, np.floating) else np.float64)
