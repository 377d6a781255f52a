"""Noise power spectrum from the background of a batch of images, whitening and recolouring."""

from __future__ import annotations

import numpy as np

from cryoprism.fourier.core import fft2c, ifft2c, radial_index
from cryoprism.fourier.resample import radial_average, shells_to_grid
from cryoprism.image.masks import circular_mask
from cryoprism.parallel import batch_ranges, map_reduce


def n_bins_with_corners(L: int) -> int:
    """Shells needed to cover the corners of an ``L × L`` transform."""
    return int(np.ceil(np.sqrt(2.0) * (L // 2))) + 2


def noise_power_spectrum(images, radius_px: float, edge_px: float = 3.0, batch_size: int = 256,
                         progress: bool = False) -> np.ndarray:
    """Radial noise power spectrum (``|F|²/N`` per pixel, by integer shell) from the background.

    ``images``: an ``(n, L, L)`` array, memory map or sliceable stack, or a
    :class:`~cryoprism.io.ParticleStack` (read in batches).
    Each image has its background mean removed and is multiplied by the background window
    ``w = 1 − circular_mask(radius_px, edge_px)`` (the particle zeroed with a soft edge). The
    power spectra are averaged over all images (in batches, through :mod:`cryoprism.parallel`; a
    memory-mapped stack is fine), divided by ``mean(w²)`` to account for the masked pixels and
    rotationally averaged. Returns shells ``0 … ceil(√2·(L/2+1))`` (corners included); shell 0
    (the removed mean) is set to shell 1.
    """
    from cryoprism.io.particles import ParticleStack

    if isinstance(images, ParticleStack):
        n, L = images.n, images.box

        def rows(a, b):
            return images.images(np.arange(a, b))
    else:
        n, L = images.shape[0], images.shape[-1]
        if images.ndim != 3 or images.shape[1] != L:
            raise ValueError(f"expected a stack (n, L, L), got {images.shape}")

        def rows(a, b):
            return images[a:b]
    w = 1.0 - circular_mask(L, radius_px, edge_px, dtype=np.float64)
    w2 = float(np.mean(w * w))
    if w2 <= 0:
        raise ValueError(f"radius {radius_px} px leaves no background in a {L}² box")
    bg = w > 0.999

    def one(rng):
        x = np.asarray(rows(*rng), dtype=np.float64)
        mu = x[:, bg].mean(axis=1)
        F = fft2c((x - mu[:, None, None]) * w)
        return (F.real**2 + F.imag**2).sum(axis=0) / (L * L)

    total = map_reduce(one, batch_ranges(n, batch_size), progress=progress, desc="noise spectrum")
    nb = n_bins_with_corners(L)
    nps = radial_average(total / (n * w2), 2, nb)
    counts = np.bincount(radial_index((L, L)).ravel(), minlength=nb)[:nb]
    for k in range(1, nb):  # shells with no pixels (beyond the corners) copy the previous one
        if counts[k] == 0:
            nps[k] = nps[k - 1]
    nps[0] = nps[1]
    return nps


def _nps_grid(nps, L):
    g = shells_to_grid(np.asarray(nps, dtype=np.float64), (L, L))
    floor = 1e-12 * max(float(np.max(g)), 1e-300)
    return np.maximum(g, floor)


def whiten(x: np.ndarray, nps: np.ndarray) -> np.ndarray:
    """Divide the transform by ``√NPS`` so the noise becomes white with unit variance per pixel."""
    x = np.asarray(x)
    L = x.shape[-1]
    y = ifft2c(fft2c(x) / np.sqrt(_nps_grid(nps, L))).real
    return y.astype(np.result_type(x.dtype, np.float32), copy=False)


def recolour(x: np.ndarray, nps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`whiten`: multiply the transform by ``√NPS``."""
    x = np.asarray(x)
    L = x.shape[-1]
    y = ifft2c(fft2c(x) * np.sqrt(_nps_grid(nps, L))).real
    return y.astype(np.result_type(x.dtype, np.float32), copy=False)
