"""Masks of the refinement: the particle sphere and an automatic soft solvent mask.

The solvent mask is post-processing's :func:`cryoprism.image.auto_mask` (threshold of the low-passed
map chosen from the data, dilated, raised-cosine edge).
"""

from __future__ import annotations

import numpy as np

from cryoprism.image.masks import auto_mask, spherical_mask


def soft_sphere(L: int, radius_px: float, edge_px: float = 2.0) -> np.ndarray:
    """``(L, L, L)`` ball about ``L//2`` with a raised-cosine edge (float32)."""
    return spherical_mask(L, radius_px, edge_px)


def auto_solvent_mask(volume, pixel_size_A: float) -> np.ndarray | None:
    """The automatic soft solvent mask of :func:`cryoprism.image.auto_mask` (the one post-processing
    uses), or None when the map has no clear density (nothing above the threshold, or a region covering
    more than 90 % of the box) — the refinement then keeps the particle sphere."""
    try:
        m = auto_mask(volume, pixel_size_A, edge_px=3.0)
    except ValueError:
        return None
    if not np.isfinite(m).all() or float((m > 0.5).mean()) > 0.9:
        return None
    return m
