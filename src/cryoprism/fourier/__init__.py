"""Centred FFT helpers, frequency grids (1/Å), radial averages and Fourier resampling."""

from cryoprism.fourier.core import (
    WORKERS,
    fft2c,
    fft3c,
    fftnc,
    freq_grid,
    freqs_1d,
    ifft2c,
    ifft3c,
    ifftnc,
    radial_index,
    radius_grid,
    real_grid,
)

__all__ = [
    "WORKERS", "fft2c", "fft3c", "fftnc", "freq_grid", "freqs_1d", "ifft2c", "ifft3c", "ifftnc",
    "radial_index", "radius_grid", "real_grid",
]
