"""cryoprism.denoise: steerable PCA with Wiener shrinkage and covariance Wiener filtering with CTF (CWF).

MFVDM denoising lives in classify2d.
"""

from cryoprism.denoise.cwf import CWFModel, cwf_denoise, fit_cwf
from cryoprism.denoise.spca import SteerablePCA, fit_spca

__all__ = ["SteerablePCA", "fit_spca", "CWFModel", "cwf_denoise", "fit_cwf"]
