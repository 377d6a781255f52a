"""The refinement's automatic soft solvent mask (the particle sphere is ``image.spherical_mask``).

The solvent mask is post-processing's :func:`cryoprism.image.auto_mask` (threshold of the low-passed
map chosen from the data, dilated, raised-cosine edge).
"""

from __future__ import annotations

import numpy as np

from cryoprism.image.masks import auto_mask


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
