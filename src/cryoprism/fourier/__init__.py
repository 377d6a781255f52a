"""Centred FFT helpers, frequency grids (1/Å), radial averages and Fourier resampling."""

from cryoprism.fourier.core import (
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
from cryoprism.fourier.resample import (
    crop,
    crop_or_pad,
    downsample,
    fourier_resize,
    n_shells,
    pad,
    power_spectrum,
    radial_average,
    radial_power_spectrum,
    shell_frequencies,
    shells_to_grid,
    upsample,
)

__all__ = [
    "fft2c", "fft3c", "fftnc", "freq_grid", "freqs_1d", "ifft2c", "ifft3c", "ifftnc",
    "radial_index", "radius_grid", "real_grid",
    "crop", "crop_or_pad", "downsample", "fourier_resize", "n_shells", "pad", "power_spectrum",
    "radial_average", "radial_power_spectrum", "shell_frequencies", "shells_to_grid", "upsample",
]
