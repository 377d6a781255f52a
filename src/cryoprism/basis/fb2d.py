"""2-D Fourier–Bessel steerable basis with a NUFFT-based fast expansion (docs/basis.md).

The basis lives on the disk ``|ξ| ≤ c`` of the image's Fourier plane (c = band limit in cycles per
pixel, Nyquist = 0.5), as in Fan & Zhao (eq. 10) and Zhao, Shkolnisky & Singer (fast sPCA):

    ψ̂_{k,q}(ρ, φ) = (-i)^|k| N_{k,q} J_|k|(j_{|k|,q} ρ / c) e^{i k φ},   ρ ≤ c,
    N_{k,q} = 1 / (sqrt(π) c |J_{|k|+1}(j_{|k|,q})|)       (orthonormal on the disk).

The phase ``(-i)^|k|`` makes the real-space functions ``ψ_{k,q}(r, θ) = f_{k,q}(r) e^{ikθ}`` with a real
radial profile, so a real image has ``a_{-k,q} = conj(a_{k,q})`` and only ``k ≥ 0`` is stored.
Their samples on the pixel grid are orthonormal in ℓ²(Z²) (Parseval for the DTFT: they are band limited
to a disk inside the Nyquist square). Radial indices are kept while ``j_{k,q} ≤ 2π c R`` (R = particle
radius in pixels): the sampling (Klug–Crowther) criterion, which also bounds ``k ≤ 2π c R``.

* expand(images): ``a_{k,q} = Σ_x I(x) conj ψ_{k,q}(x) = ∫_disk Î(ξ) conj ψ̂_{k,q}(ξ) dξ``. Î is
  evaluated on a polar grid (Gauss–Legendre in ρ, uniform in φ) by one finufft type-2 call for the
  whole batch, an FFT over φ gives the angular components, and a Gauss–Legendre sum in ρ per angular
  frequency gives the coefficients (one small matrix product per k).
* evaluate(coefs): the adjoint: Î on the polar grid, then finufft type 1 with the quadrature weights.
* rotate(coefs, α): an image rotated by α (counter-clockwise in the (x, y) = (column, row) frame,
  i.e. the point at (x, y) moves to R_α (x, y)) has ``a_{k,q} e^{-ikα}``.
* reflect(coefs): the image reflected about the x axis (``I(x, -y)``) has ``conj(a_{k,q})``.

Coefficients are stored flat, ``(n, n_coef)`` complex, ordered by k then q; ``basis.k_slices[k]`` is
the slice of angular frequency k and ``basis.ks``/``basis.qs`` label each column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.fft as sfft
from scipy.special import jn_zeros, jv

from cryoprism.parallel.config import fft_workers, finufft_threads

__all__ = ["FBBasis2D", "fb_basis_2d", "bessel_zeros_below"]


def bessel_zeros_below(k: int, bound: float) -> np.ndarray:
    """Positive zeros of J_k that are ≤ ``bound`` (ascending)."""
    n = max(4, int(bound / np.pi) + 4)
    z = jn_zeros(k, n)
    while z[-1] <= bound:
        n *= 2
        z = jn_zeros(k, n)
    return z[z <= bound]


@dataclass(frozen=True, eq=False)
class FBBasis2D:
    """Fourier–Bessel basis for ``L × L`` images; build it with :func:`fb_basis_2d`."""

    L: int
    radius_px: float
    bandlimit: float
    zeros: tuple = field(repr=False)          # zeros[k] = array of j_{k,q} kept
    eps: float = 1e-9

    # ---------------------------------------------------------------- layout
    @property
    def k_max(self) -> int:
        return len(self.zeros) - 1

    @cached_property
    def counts(self) -> np.ndarray:
        """``p_k``: number of radial functions of each angular frequency k = 0..k_max."""
        return np.array([len(z) for z in self.zeros], dtype=np.int64)

    @cached_property
    def k_slices(self) -> list:
        off = np.concatenate([[0], np.cumsum(self.counts)])
        return [slice(int(off[k]), int(off[k + 1])) for k in range(len(self.zeros))]

    @property
    def n_coef(self) -> int:
        return int(self.counts.sum())

    @cached_property
    def ks(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.zeros)), self.counts)

    @cached_property
    def qs(self) -> np.ndarray:
        return np.concatenate([np.arange(c) for c in self.counts]).astype(np.int64)

    @property
    def n_real_dof(self) -> int:
        """Number of real degrees of freedom (k = 0 real, k > 0 complex and its conjugate)."""
        return int(self.counts[0] + 2 * self.counts[1:].sum())

    # ---------------------------------------------------------------- polar quadrature
    @cached_property
    def _grid(self):
        L, c = self.L, self.bandlimit
        r_img = L / np.sqrt(2.0) + 1.0                     # farthest pixel from the centre
        # angular content of Î at radius ≤ c is below 2π c r_img; alias-free up to k_max
        n_phi = int(np.ceil(self.k_max + 2 * np.pi * c * r_img + 8))
        n_phi += n_phi % 2
        # integrand in ρ oscillates like cos(2π ρ (R + r_img)): Gauss–Legendre with margin
        n_r = int(np.ceil(2 * c * (self.radius_px + r_img) + 16))
        x, w = np.polynomial.legendre.leggauss(n_r)
        rho = 0.5 * c * (x + 1.0)
        w_rho = 0.5 * c * w * rho                          # ∫ ... ρ dρ
        phi = 2 * np.pi * np.arange(n_phi) / n_phi
        # finufft frequencies (radians per pixel) in array-axis order (y, x)
        ty = (2 * np.pi * rho[:, None] * np.sin(phi)[None, :]).ravel()
        tx = (2 * np.pi * rho[:, None] * np.cos(phi)[None, :]).ravel()
        return dict(n_phi=n_phi, n_r=n_r, rho=rho, w_rho=w_rho, ty=ty, tx=tx)

    @cached_property
    def _radial(self):
        """Per k: matrix ``(n_r, p_k)`` of N_{k,q} J_k(j_{k,q} ρ_j / c)."""
        rho, c = self._grid["rho"], self.bandlimit
        out = []
        for k, z in enumerate(self.zeros):
            norm = 1.0 / (np.sqrt(np.pi) * c * np.abs(jv(k + 1, z)))
            out.append(jv(k, np.outer(rho, z) / c) * norm[None, :])
        return out

    @property
    def n_polar(self) -> tuple[int, int]:
        """Polar grid size ``(n_r, n_phi)`` of the fast transforms."""
        g = self._grid
        return g["n_r"], g["n_phi"]

    @property
    def polar_rho(self) -> np.ndarray:
        """Radial nodes of the polar grid (cycles per pixel)."""
        return self._grid["rho"]

    # ---------------------------------------------------------------- transforms
    def polar_ft(self, images: np.ndarray) -> np.ndarray:
        """Î on the polar grid: ``(n, n_r, n_phi)`` complex, Î(ξ) = Σ_x I(x) e^{-2πi ξ·x}."""
        import finufft

        images = np.asarray(images)
        single = images.ndim == 2
        if single:
            images = images[None]
        cdt = np.complex64 if images.dtype == np.float32 else np.complex128
        g = self._grid
        f = np.ascontiguousarray(images, dtype=cdt)
        vals = finufft.nufft2d2(g["ty"].astype(f.real.dtype), g["tx"].astype(f.real.dtype), f,
                                isign=-1, eps=max(self.eps, 1e-6 if cdt == np.complex64 else 1e-12),
                                nthreads=finufft_threads(1))
        vals = vals.reshape(images.shape[0], g["n_r"], g["n_phi"])
        return vals[0] if single else vals

    def angular_components(self, images: np.ndarray) -> np.ndarray:
        """``F_k(ρ_j) = ∫ Î(ρ_j, φ) e^{-ikφ} dφ`` for k = 0..k_max: ``(n, n_r, k_max+1)``."""
        pft = self.polar_ft(images)
        n_phi = self._grid["n_phi"]
        Fk = sfft.fft(pft, axis=-1, workers=fft_workers())[..., : self.k_max + 1]
        return Fk * (2 * np.pi / n_phi)

    def expand(self, images: np.ndarray) -> np.ndarray:
        """Coefficients ``(n, n_coef)`` (complex128; complex64 for float32 input) of images ``(n, L, L)``."""
        images = np.asarray(images)
        single = images.ndim == 2
        if single:
            images = images[None]
        if images.shape[-2:] != (self.L, self.L):
            raise ValueError(f"images must be {self.L}×{self.L}, got {images.shape[-2:]}")
        Fk = self.angular_components(images)               # (n, n_r, K)
        w = self._grid["w_rho"]
        out = np.empty((images.shape[0], self.n_coef), dtype=Fk.dtype)
        for k, sl in enumerate(self.k_slices):
            if sl.stop == sl.start:
                continue
            # a_kq = i^k Σ_j w_j ρ_j g_kq(ρ_j) F_k(ρ_j)
            out[:, sl] = (1j ** k) * (Fk[:, :, k] * w[None, :]) @ self._radial[k].astype(Fk.real.dtype)
        return out[0] if single else out

    def polar_spectrum(self, coefs: np.ndarray) -> np.ndarray:
        """Angular spectrum ``G_k(ρ_j) = (-i)^k Σ_q a_kq g_kq(ρ_j)`` for k = 0..k_max: ``(n, n_r, K)``."""
        coefs = np.atleast_2d(coefs)
        G = np.zeros((coefs.shape[0], self._grid["n_r"], self.k_max + 1), dtype=np.result_type(coefs, np.complex64))
        for k, sl in enumerate(self.k_slices):
            if sl.stop == sl.start:
                continue
            G[:, :, k] = ((-1j) ** k) * (coefs[:, sl] @ self._radial[k].T.astype(G.real.dtype))
        return G

    def evaluate_polar_spectrum(self, G: np.ndarray) -> np.ndarray:
        """Images from an angular spectrum ``G`` (n, n_r, k_max+1) of a real image (k ≥ 0 half)."""
        import finufft

        g = self._grid
        n_phi, K = g["n_phi"], self.k_max + 1
        full = np.zeros(G.shape[:2] + (n_phi,), dtype=G.dtype)
        full[..., :K] = G
        kk = np.arange(1, K)
        full[..., n_phi - kk] = ((-1.0) ** kk) * np.conj(G[..., 1:K])   # G_{-k} = (-1)^k conj(G_k)
        vals = sfft.ifft(full, axis=-1, workers=fft_workers()) * n_phi            # Î(ρ_j, φ_m)
        vals *= (g["w_rho"] * (2 * np.pi / n_phi))[None, :, None]
        rdt = G.real.dtype
        img = finufft.nufft2d1(g["ty"].astype(rdt), g["tx"].astype(rdt),
                               np.ascontiguousarray(vals.reshape(G.shape[0], -1)),
                               n_modes=(self.L, self.L), isign=1,
                               eps=max(self.eps, 1e-6 if rdt == np.float32 else 1e-12),
                               nthreads=finufft_threads(1))
        return img.real

    def evaluate(self, coefs: np.ndarray) -> np.ndarray:
        """Images ``(n, L, L)`` (real) from coefficients ``(n, n_coef)``: Σ_kq a_kq ψ_kq(x)."""
        coefs = np.asarray(coefs)
        single = coefs.ndim == 1
        img = self.evaluate_polar_spectrum(self.polar_spectrum(coefs))
        return img[0] if single else img

    # ---------------------------------------------------------------- group actions
    def rotate(self, coefs: np.ndarray, angles_rad) -> np.ndarray:
        """Coefficients of the images rotated counter-clockwise by ``angles_rad`` (scalar or (n,))."""
        coefs = np.asarray(coefs)
        a = np.asarray(angles_rad, dtype=np.float64)
        phase = np.exp(-1j * np.multiply.outer(a, self.ks))
        return coefs * phase

    def reflect(self, coefs: np.ndarray) -> np.ndarray:
        """Coefficients of the images reflected about the x axis, ``I(x, -y)``."""
        return np.conj(coefs)

    def norms(self, coefs: np.ndarray) -> np.ndarray:
        """ℓ² norm of the images the coefficients represent (k > 0 counts twice)."""
        w = np.where(self.ks == 0, 1.0, 2.0)
        return np.sqrt((np.abs(coefs) ** 2 * w).sum(axis=-1))


def fb_basis_2d(L: int, radius_px: float | None = None, bandlimit: float = 0.5,
                eps: float = 1e-9) -> FBBasis2D:
    """Fourier–Bessel basis for ``L × L`` images of particles within ``radius_px`` pixels of L//2.

    ``bandlimit`` is the Fourier disk radius in cycles per pixel (0.5 = Nyquist). Angular frequency k
    and radial index q are kept while ``j_{k,q} ≤ 2π · bandlimit · radius_px`` (sampling criterion).
    """
    L = int(L)
    R = float(L // 2 if radius_px is None else radius_px)
    if R <= 0 or not (0 < bandlimit <= 0.5):
        raise ValueError("radius_px must be > 0 and 0 < bandlimit ≤ 0.5")
    bound = 2 * np.pi * bandlimit * R
    zeros = []
    k = 0
    while True:
        z = bessel_zeros_below(k, bound)
        if len(z) == 0:
            break
        zeros.append(z)
        k += 1
    return FBBasis2D(L=L, radius_px=R, bandlimit=float(bandlimit), zeros=tuple(zeros), eps=eps)
