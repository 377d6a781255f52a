"""Circular (2-D) and spherical (3-D) masks with raised-cosine soft edges, centred at ``L//2``, and the
automatic soft solvent mask of a map (:func:`auto_mask`)."""

from __future__ import annotations

import numpy as np

from cryoprism.fourier.core import real_grid


def soft_edge(r: np.ndarray, radius_px: float, edge_px: float = 0.0) -> np.ndarray:
    """Radial mask profile: 1 for ``r ≤ radius``, ``½(1 + cos(π (r − radius)/edge))`` up to
    ``radius + edge``, 0 beyond (a hard edge when ``edge_px = 0``)."""
    r = np.asarray(r, dtype=np.float64)
    if edge_px <= 0:
        return (r <= radius_px).astype(np.float64)
    t = np.clip((r - radius_px) / edge_px, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def radial_mask(shape, radius_px: float, edge_px: float = 0.0, center=None,
                dtype=np.float32) -> np.ndarray:
    """Mask of any 2-D/3-D ``shape``; ``center`` (array-axis order) defaults to ``L//2`` per axis."""
    grids = real_grid(shape)
    if center is not None:
        off = [n // 2 - c for n, c in zip(shape, center)]
        grids = tuple(g + o for g, o in zip(grids, off))
    r = np.sqrt(sum(g.astype(np.float64) ** 2 for g in grids))
    return soft_edge(r, radius_px, edge_px).astype(dtype)


def circular_mask(L: int, radius_px: float, edge_px: float = 0.0, dtype=np.float32) -> np.ndarray:
    """``(L, L)`` disc of radius ``radius_px`` about ``(L//2, L//2)`` with a raised-cosine edge."""
    return radial_mask((L, L), radius_px, edge_px, dtype=dtype)


def spherical_mask(L: int, radius_px: float, edge_px: float = 0.0, dtype=np.float32) -> np.ndarray:
    """``(L, L, L)`` ball of radius ``radius_px`` about ``L//2`` with a raised-cosine edge."""
    return radial_mask((L, L, L), radius_px, edge_px, dtype=dtype)


def mask_threshold(volume, n_sigma: float = 4.0, peak_fraction: float = 0.05) -> float:
    """A density threshold chosen from the data: ``median + max(n_sigma · σ, peak_fraction · (max − median))``.

    The median and ``σ = 1.4826 · MAD`` describe the solvent (most of a cryo-EM box), so the first term
    keeps solvent noise out; the second keeps the threshold above the low-level tails of a clean map.
    """
    v = np.asarray(volume, dtype=np.float64)
    med = float(np.median(v))
    sigma = 1.4826 * float(np.median(np.abs(v - med)))
    return med + max(n_sigma * sigma, peak_fraction * (float(v.max()) - med))


def auto_mask(volume, pixel_size_A: float, *, lowpass_A: float = 15.0, threshold: float | None = None,
              extend_px: float = 3.0, edge_px: float = 6.0, min_component_fraction: float = 0.02,
              dtype=np.float32) -> np.ndarray:
    """Soft solvent mask of a map (e.g. the average of two half-maps), values in [0, 1].

    1. low-pass at ``lowpass_A`` (cosine edge; skipped when finer than Nyquist);
    2. threshold (default :func:`mask_threshold` of the low-passed map); connected pieces smaller than
       ``min_component_fraction`` of the largest are dropped (noise specks);
    3. dilation by ``extend_px`` and a raised-cosine edge ``edge_px`` wide, both measured with the
       Euclidean distance ``d`` to the thresholded set: ``m = soft_edge(d, extend_px, edge_px)``.
    """
    from scipy import ndimage

    from cryoprism.image.filters import lowpass

    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"auto_mask: expected a cubic volume, got shape {v.shape}")
    if lowpass_A and lowpass_A > 2.0 * pixel_size_A:
        v = lowpass(v, pixel_size_A, resolution_A=lowpass_A, ndim=3)
    t = mask_threshold(v) if threshold is None else float(threshold)
    binary = v > t
    labels, n = ndimage.label(binary)
    if n == 0:
        raise ValueError(f"auto_mask: no voxel above the threshold {t:.4g} (map maximum {v.max():.4g})")
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.concatenate([[False], sizes >= min_component_fraction * sizes.max()])
    binary = keep[labels]
    d = ndimage.distance_transform_edt(~binary)
    return soft_edge(d, extend_px, edge_px).astype(dtype)
