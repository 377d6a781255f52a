"""Image processing: filters, masks, normalisation, whitening, shifts/rotations and alignment.

Resampling (Fourier crop/pad, crop/pad, power spectra, radial averages) lives in
:mod:`cryoprism.fourier` and is re-exported here.
"""

from cryoprism.fourier.resample import (
    crop,
    downsample,
    pad,
    power_spectrum,
    radial_average,
    radial_power_spectrum,
    upsample,
)
from cryoprism.image.align import (
    Alignment,
    TemplateMatch,
    align_rotation_translation,
    align_templates,
    align_translation,
    cross_correlation,
    polar_transform,
    template_peaks,
)
from cryoprism.image.filters import (
    apply_radial_filter,
    bandpass,
    gaussian_blur,
    highpass,
    lowpass,
    lowpass_profile,
)
from cryoprism.image.masks import (
    auto_mask,
    circular_mask,
    mask_threshold,
    radial_mask,
    soft_edge,
    spherical_mask,
)
from cryoprism.image.normalize import background_mask, background_stats, normalize
from cryoprism.image.transform import fourier_shift, rotate, rotation_matrix_2d, shift_phases
from cryoprism.image.whiten import noise_power_spectrum, recolour, whiten

__all__ = [
    "Alignment", "TemplateMatch", "auto_mask", "mask_threshold", "align_rotation_translation", "align_templates",
    "align_translation",
    "template_peaks", "apply_radial_filter",
    "background_mask", "background_stats", "bandpass", "circular_mask", "crop", "cross_correlation",
    "downsample", "fourier_shift", "gaussian_blur", "highpass", "lowpass", "lowpass_profile",
    "noise_power_spectrum", "normalize", "pad", "polar_transform", "power_spectrum", "radial_average",
    "radial_mask", "radial_power_spectrum", "recolour", "rotate", "rotation_matrix_2d", "shift_phases",
    "soft_edge", "spherical_mask", "upsample", "whiten",
]
