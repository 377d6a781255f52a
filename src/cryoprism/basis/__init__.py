"""cryoprism.basis: steerable bases (2-D Fourier–Bessel, 3-D spherical Bessel × spherical harmonics)."""

from cryoprism.basis.fb2d import FBBasis2D, bessel_zeros_below, fb_basis_2d
from cryoprism.basis.sb3d import SBBasis3D, real_sph_harm, sb_basis_3d, spherical_bessel_zeros

__all__ = ["FBBasis2D", "fb_basis_2d", "bessel_zeros_below", "SBBasis3D", "sb_basis_3d",
           "spherical_bessel_zeros", "real_sph_harm"]
