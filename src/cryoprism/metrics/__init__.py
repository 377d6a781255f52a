"""Map and image quality: FSC/FRC and resolution thresholds, SSNR, DPR, Guinier B-factor, MSE/PSNR/SSIM,
volume alignment over rotation, shift and handedness (docs/metrics.md); post-processing of half-maps:
mask-corrected FSC, sharpening, local resolution (docs/postprocess.md)."""

from cryoprism.metrics.align import AlignResult, align_volumes, transform_volume
from cryoprism.metrics.bfactor import GuinierFit, apply_bfactor, guinier_bfactor
from cryoprism.metrics.fsc import (
    THRESHOLDS,
    FSCResult,
    dpr,
    fsc,
    full_map_fsc,
    resolution_at,
    ssnr_from_fsc,
    threshold_curve,
)
from cryoprism.metrics.postprocess import local_resolution, mask_corrected_fsc
from cryoprism.metrics.similarity import gaussian_window, mse, psnr, ssim

__all__ = [
    "FSCResult", "fsc", "resolution_at", "threshold_curve", "THRESHOLDS", "ssnr_from_fsc", "full_map_fsc",
    "dpr", "GuinierFit", "guinier_bfactor", "apply_bfactor", "mse", "psnr", "ssim", "gaussian_window",
    "AlignResult", "align_volumes", "transform_volume", "mask_corrected_fsc", "local_resolution",
]
