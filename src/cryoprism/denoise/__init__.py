"""cryoprism.denoise: steerable PCA with Wiener shrinkage (MFVDM denoising lives in classify2d)."""

from cryoprism.denoise.spca import SteerablePCA, fit_spca

__all__ = ["SteerablePCA", "fit_spca"]
