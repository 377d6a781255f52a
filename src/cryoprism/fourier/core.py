"""Centred FFTs and frequency grids (see docs/conventions.md, "Fourier transforms").

Zero frequency and the real-space centre both sit at index ``L // 2``. Forward transforms are
unnormalised, inverse transforms carry ``1/N``. All transforms act on the trailing 2 (images) or 3
(volumes) axes, so stacks transform in one call.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from cryoprism.parallel.config import fft_workers  # threads of one scipy.fft call (settings)


def _axes(ndim: int) -> tuple[int, ...]:
    return tuple(range(-ndim, 0))


def fftnc(x: np.ndarray, ndim: int) -> np.ndarray:
    """Centred forward FFT over the last ``ndim`` axes."""
    ax = _axes(ndim)
    return sfft.fftshift(sfft.fftn(sfft.ifftshift(x, axes=ax), axes=ax, workers=fft_workers()), axes=ax)


def ifftnc(x: np.ndarray, ndim: int) -> np.ndarray:
    """Centred inverse FFT over the last ``ndim`` axes (carries 1/N)."""
    ax = _axes(ndim)
    return sfft.fftshift(sfft.ifftn(sfft.ifftshift(x, axes=ax), axes=ax, workers=fft_workers()), axes=ax)


def fft2c(x):
    """Centred 2-D FFT of an image ``[y, x]`` or a stack ``[n, y, x]``."""
    return fftnc(x, 2)


def ifft2c(x):
    """Centred inverse 2-D FFT."""
    return ifftnc(x, 2)


def fft3c(x):
    """Centred 3-D FFT of a volume ``[z, y, x]`` (or a stack of volumes)."""
    return fftnc(x, 3)


def ifft3c(x):
    """Centred inverse 3-D FFT."""
    return ifftnc(x, 3)


def freqs_1d(L: int, pixel_size_A: float = 1.0) -> np.ndarray:
    """Frequencies of a centred axis of length ``L``: ``(i - L//2) / (L * pixel_size_A)`` in 1/Å.

    With ``pixel_size_A=1`` the unit is cycles per pixel (Nyquist = 0.5).
    """
    return (np.arange(L) - L // 2) / (L * pixel_size_A)


def freq_grid(shape, pixel_size_A: float = 1.0, polar: bool = False):
    """Frequency grid of a centred 2-D or 3-D transform.

    Returns a tuple of arrays in array-axis order (``(sy, sx)`` or ``(sz, sy, sx)``) in 1/Å. With
    ``polar=True`` and a 2-D shape, returns ``(s, angle)``: the radial frequency and ``atan2(sy, sx)``.
    """
    shape = tuple(int(n) for n in shape)
    axes = [freqs_1d(n, pixel_size_A) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    if polar:
        if len(shape) != 2:
            raise ValueError("polar=True needs a 2-D shape")
        sy, sx = grids
        return np.hypot(sx, sy), np.arctan2(sy, sx)
    return tuple(grids)


def radius_grid(shape, pixel_size_A: float = 1.0) -> np.ndarray:
    """Radial frequency ``|s|`` of a centred transform (1/Å; cycles/pixel with pixel_size_A=1)."""
    grids = freq_grid(shape, pixel_size_A)
    return np.sqrt(sum(g * g for g in grids))


def radial_index(shape) -> np.ndarray:
    """Integer shell index ``round(|k|)`` (in Fourier pixels) of every element of a centred grid."""
    k = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    return np.rint(np.sqrt(sum(g.astype(np.float64) ** 2 for g in k))).astype(np.int64)


def real_grid(shape) -> tuple[np.ndarray, ...]:
    """Real-space coordinates (pixels from the centre ``L//2``) in array-axis order."""
    return tuple(np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij"))
