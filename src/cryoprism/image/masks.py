"""Circular (2-D) and spherical (3-D) masks with raised-cosine soft edges, centred at ``L//2``."""

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
