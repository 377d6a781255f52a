"""Image normalisation from the background (outside the particle radius)."""

from __future__ import annotations

import numpy as np

from cryoprism.image.masks import radial_mask


def background_mask(shape, radius_px: float) -> np.ndarray:
    """Boolean mask of the background: pixels farther than ``radius_px`` from the centre ``L//2``."""
    return radial_mask(shape, radius_px, 0.0, dtype=np.float64) == 0


def background_stats(x: np.ndarray, radius_px: float, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each image's background (``r > radius_px``).

    Both have shape ``x.shape[:-ndim]``.
    """
    x = np.asarray(x)
    bg = background_mask(x.shape[-ndim:], radius_px)
    if not bg.any():
        raise ValueError(f"radius {radius_px} px leaves no background in a box of {x.shape[-ndim:]}")
    v = x[..., bg].astype(np.float64)
    return v.mean(axis=-1), v.std(axis=-1)


def normalize(x: np.ndarray, radius_px: float, ndim: int = 2) -> np.ndarray:
    """``(x − μ_bg) / σ_bg`` per image: background mean 0 and standard deviation 1 (Sorzano 2004).

    Images with a constant background (σ = 0) are only mean-subtracted.
    """
    x = np.asarray(x)
    mu, sd = background_stats(x, radius_px, ndim)
    sd = np.where(sd > 0, sd, 1.0)
    ex = (Ellipsis,) + (None,) * ndim
    y = (x - mu[ex]) / sd[ex]
    return y.astype(np.result_type(x.dtype, np.float32), copy=False)
