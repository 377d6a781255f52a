"""Fourier shell (ring) correlation, resolution thresholds, SSNR and differential phase residual.

Shells are the integer Fourier radii ``k = round(|k|)`` of :func:`cryoprism.fourier.radial_index`,
``k = 0 … L//2`` (Nyquist); corner voxels beyond Nyquist are left out. Shell ``k`` sits at spatial
frequency ``k / (L · pixel_size_A)`` (1/Å). 2-D inputs give the FRC, 3-D inputs the FSC. See
docs/metrics.md for the definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoprism.fourier import fftnc, radial_index


@dataclass(frozen=True)
class FSCResult:
    """An FSC/FRC curve. ``freq_invA[k] = k / (L · pixel_size_A)``; ``n_voxels[k]`` counts the Fourier
    voxels of shell ``k`` (both Friedel halves)."""

    freq_invA: np.ndarray
    curve: np.ndarray
    n_voxels: np.ndarray
    pixel_size_A: float
    box: int

    @property
    def resolution_A(self) -> np.ndarray:
        """``1 / freq`` of every shell in Å (``inf`` at shell 0)."""
        with np.errstate(divide="ignore"):
            return 1.0 / self.freq_invA

    def to_dict(self) -> dict:
        return {"freq_invA": self.freq_invA.tolist(), "fsc": self.curve.tolist(),
                "n_voxels": self.n_voxels.tolist(), "pixel_size_A": float(self.pixel_size_A),
                "box": int(self.box)}


def _check_pair(a, b, mask):
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3) or len(set(a.shape)) != 1:
        raise ValueError(f"expected a square image or a cubic volume, got shape {a.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != a.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the maps' {a.shape}")
        a = a * mask
        b = b * mask
    return a, b


def _float(x: np.ndarray) -> np.ndarray:
    """Keep float32 input in float32 (complex64 transforms); everything else goes to float64."""
    return x if x.dtype == np.float32 else np.asarray(x, dtype=np.float64)


def _shells(shape):
    L = shape[0]
    k = radial_index(shape).ravel()
    n_shells = L // 2 + 1
    keep = k < n_shells
    return k, keep, n_shells


def _shell_sums(values: np.ndarray, k: np.ndarray, keep: np.ndarray, n_shells: int) -> np.ndarray:
    return np.bincount(k[keep], weights=values.ravel()[keep], minlength=n_shells)


def fsc(a, b, pixel_size_A: float = 1.0, mask=None) -> FSCResult:
    """FSC (3-D) or FRC (2-D) of ``a`` and ``b``:
    ``FSC(k) = Re Σ_shell F_a F_b* / √(Σ_shell |F_a|² · Σ_shell |F_b|²)``.

    ``mask`` (same shape, soft or binary) multiplies both maps first. A shell where either map has no
    power gets 0.
    """
    a, b = _check_pair(a, b, mask)
    Fa = fftnc(_float(a), a.ndim)
    Fb = fftnc(_float(b), b.ndim)
    k, keep, n_shells = _shells(a.shape)
    num = _shell_sums((Fa.real * Fb.real + Fa.imag * Fb.imag), k, keep, n_shells)
    pa = _shell_sums(Fa.real ** 2 + Fa.imag ** 2, k, keep, n_shells)
    pb = _shell_sums(Fb.real ** 2 + Fb.imag ** 2, k, keep, n_shells)
    den = np.sqrt(pa * pb)
    curve = np.divide(num, den, out=np.zeros(n_shells), where=den > 0)
    n_vox = np.bincount(k[keep], minlength=n_shells)
    L = a.shape[0]
    freq = np.arange(n_shells) / (L * float(pixel_size_A))
    return FSCResult(freq_invA=freq, curve=curve, n_voxels=n_vox, pixel_size_A=float(pixel_size_A), box=L)


# --------------------------------------------------------------------------------------------------
# thresholds and resolution

THRESHOLDS = ("0.143", "0.5", "half-bit", "one-bit", "3sigma")


def threshold_curve(result: FSCResult, threshold) -> np.ndarray:
    """Threshold value at every shell.

    ``threshold`` is a number (constant: 0.143, 0.5, …) or one of ``"half-bit"``, ``"one-bit"``
    (van Heel & Schatz 2005, with ``n`` = voxels in the shell), ``"3sigma"`` (``3 / √(n/2)``: ``n/2``
    independent Friedel pairs per shell).
    """
    n = np.maximum(result.n_voxels.astype(np.float64), 1.0)
    if isinstance(threshold, str):
        t = threshold.lower().replace("_", "-").replace(" ", "")
        if t in ("half-bit", "halfbit", "1/2-bit"):
            r = 1.0 / np.sqrt(n)
            return (0.2071 + 1.9102 * r) / (1.2071 + 0.9102 * r)
        if t in ("one-bit", "onebit", "1-bit"):
            r = 1.0 / np.sqrt(n)
            return (0.5 + 2.4142 * r) / (1.5 + 1.4142 * r)
        if t in ("3sigma", "3-sigma", "3σ"):
            return 3.0 / np.sqrt(n / 2.0)
        try:
            threshold = float(t)
        except ValueError:
            raise ValueError(f"unknown FSC threshold {threshold!r}; use a number or one of {THRESHOLDS}")
    return np.full(len(n), float(threshold))


def resolution_at(result: FSCResult, threshold=0.143) -> float:
    """Resolution in Å where the curve first falls below ``threshold`` (a number or a name of
    :func:`threshold_curve`), searching from shell 1 outwards.

    The crossing frequency is linearly interpolated between the last shell at or above the threshold
    and the first below it (for curve-shaped thresholds, on ``curve − threshold``). If the curve never
    falls below, returns the Nyquist resolution ``2 · pixel_size_A`` (the map is Nyquist-limited).
    """
    t = threshold_curve(result, threshold)
    d = result.curve - t
    below = np.nonzero(d[1:] < 0)[0]
    if below.size == 0:
        return float(1.0 / result.freq_invA[-1])
    k = int(below[0]) + 1
    d0, d1 = max(float(d[k - 1]), 0.0), float(d[k])
    frac = d0 / (d0 - d1)  # d1 < 0, so the denominator is positive
    s = result.freq_invA[k - 1] + frac * (result.freq_invA[k] - result.freq_invA[k - 1])
    return float(1.0 / s) if s > 0 else float("inf")


# --------------------------------------------------------------------------------------------------
# SSNR


def full_map_fsc(curve) -> np.ndarray:
    """FSC expected for the full map (both halves averaged) from the half-map FSC: ``2F / (1 + F)``."""
    f = np.asarray(curve, dtype=np.float64)
    return 2 * f / (1 + f)


def ssnr_from_fsc(curve, full_map: bool = False) -> np.ndarray:
    """Spectral SNR per shell, ``SNR = F / (1 − F)``; negative FSC gives 0.

    With ``full_map=True`` the half-map FSC is first corrected to the full map, ``F ← 2F/(1+F)``
    (so the full-map SNR is twice the half-map SNR).
    """
    f = np.clip(np.asarray(curve, dtype=np.float64), 0.0, None)
    if full_map:
        f = full_map_fsc(f)
    f = np.minimum(f, 1.0 - 1e-12)
    return f / (1.0 - f)


# --------------------------------------------------------------------------------------------------
# differential phase residual


def dpr(a, b, pixel_size_A: float = 1.0, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Differential phase residual per shell, in degrees: returns ``(freq_invA, dpr_deg)``.

    ``DPR(k) = √(Σ_shell w Δφ² / Σ_shell w)``, ``w = |F_a| + |F_b|``, ``Δφ = arg(F_a F_b*)`` wrapped to
    (−180°, 180°]. Identical maps give 0; unrelated phases give ``180/√3 ≈ 103.9°``.
    """
    a, b = _check_pair(a, b, mask)
    Fa = fftnc(_float(a), a.ndim)
    Fb = fftnc(_float(b), b.ndim)
    k, keep, n_shells = _shells(a.shape)
    w = np.abs(Fa) + np.abs(Fb)
    dphi = np.angle(Fa * np.conj(Fb))
    num = _shell_sums(w * dphi ** 2, k, keep, n_shells)
    den = _shell_sums(w, k, keep, n_shells)
    out = np.sqrt(np.divide(num, den, out=np.zeros(n_shells), where=den > 0))
    L = a.shape[0]
    return np.arange(n_shells) / (L * float(pixel_size_A)), np.rad2deg(out)
