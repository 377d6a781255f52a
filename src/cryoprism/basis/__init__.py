"""cryoprism.basis: steerable bases (2-D Fourier–Bessel, 3-D spherical Bessel × spherical harmonics)."""

from cryoprism.basis.fb2d import FBBasis2D, bessel_zeros_below, fb_basis_2d

__all__ = ["FBBasis2D", "fb_basis_2d", "bessel_zeros_below"]
