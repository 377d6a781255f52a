"""Masks of the refinement: the particle sphere and an automatic soft solvent mask.

The solvent mask here is the refinement's own small step (threshold of the low-passed map, dilated,
raised-cosine edge); a shared post-processing mask function is expected to replace it.
"""

from __future__ import annotations

import numpy as np

from cryoprism.image.filters import lowpass
from cryoprism.image.masks import soft_edge, spherical_mask


def soft_sphere(L: int, radius_px: float, edge_px: float = 2.0) -> np.ndarray:
    """``(L, L, L)`` ball about ``L//2`` with a raised-cosine edge (float32)."""
    return spherical_mask(L, radius_px, edge_px)


def auto_solvent_mask(volume, pixel_size_A: float, lowpass_A: float = 15.0, threshold: float = 0.1,
                      dilate_px: float = 3.0, edge_px: float = 3.0) -> np.ndarray | None:
    """Soft mask around the density: the map low-passed to ``lowpass_A`` (at least 2 pixels) is
    thresholded at ``threshold`` × its maximum, the region grown by ``dilate_px`` and given a
    raised-cosine edge of ``edge_px`` (distance transform). None when the map has no clear density
    (empty region or one covering more than 90 % of the box)."""
    from scipy.ndimage import distance_transform_edt

    v = np.asarray(volume, np.float64)
    lp = lowpass(v, pixel_size_A, resolution_A=max(lowpass_A, 4 * pixel_size_A), ndim=3)
    top = float(lp.max())
    if not np.isfinite(top) or top <= 0:
        return None
    core = lp > threshold * top
    frac = float(core.mean())
    if frac == 0 or frac > 0.9:
        return None
    d = distance_transform_edt(~core)
    return soft_edge(d, dilate_px, edge_px).astype(np.float32)
