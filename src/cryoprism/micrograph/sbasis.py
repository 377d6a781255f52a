"""3-D spherical-Bessel × real spherical-harmonic volume basis (Kreymer, Singer & Bendory 2025, eqs. 6–9 and 13–16).

A volume is represented by its Fourier transform on the ball ``|k| ≤ c`` (``c`` in cycles/pixel,
0.5 = Nyquist):

    V̂(k) = Σ_{ℓ ≤ ℓ_max} Σ_{m=-ℓ}^{ℓ} Σ_{s=1}^{S_ℓ} x_{ℓms} · i^ℓ · N_{ℓs} j_ℓ(z_{ℓs} |k| / c) · Y_{ℓm}(k̂)

with ``Y_{ℓm}`` the *real* orthonormal spherical harmonics, ``z_{ℓs}`` the positive zeros of the
spherical Bessel function ``j_ℓ`` and ``N_{ℓs} = √2 / (c^{3/2} |j_{ℓ+1}(z_{ℓs})|)``. The factor
``i^ℓ`` makes every real-space basis function real, so a real volume has **real** coefficients
``x`` (this is the conjugate symmetry ``x_{ℓ,-m} = (-1)^m conj(x_{ℓm})`` of the complex basis of
Kreymer, Singer & Bendory 2025, written in the real basis). The functions are orthonormal on the
Fourier ball and hence
(Parseval) in real space. ``S_ℓ`` counts the zeros with ``z_{ℓs} ≤ 2π c R`` (``R = L/2``): the
Nyquist criterion for a volume supported in a ball of radius ``R``.

Real-space basis function (plane-wave expansion, derivation in docs/micrograph_em.md):

    ψ_{ℓms}(r) = 4π (-1)^ℓ N_{ℓs} Y_{ℓm}(r̂) ∫_0^c j_ℓ(z_{ℓs} k / c) j_ℓ(2π k |r|) k² dk

Projection along z of ψ_{ℓms} (Fourier slice at ``k_z = 0``, then the 2-D inverse transform in
polar coordinates):

    Φ_{ℓms}(ρ, θ) = 2π (-1)^{(ℓ+|m|)/2} N_{ℓs} Y_{ℓm}(cos θ, sin θ, 0) ∫_0^c j_ℓ(z k/c) J_{|m|}(2π k ρ) k dk

(zero when ``ℓ + |m|`` is odd). The radial integrals are evaluated directly by Gauss–Legendre
quadrature on the patch grid (no PSWF expansion).

Rotations: ``Y_ℓ(Aᵀ u) = M_ℓ(A) Y_ℓ(u)`` with a real orthogonal ``(2ℓ+1)²`` matrix (the real Wigner-D
matrix), computed here by least squares on a Fibonacci point set (exact up to round-off, because
``Y_ℓ(Aᵀ u)`` lies in the span of the degree-ℓ harmonics). The coefficients of the rotated volume
``V_A(r) = V(Aᵀ r)`` (the volume in the particle frame of RELION matrix ``A``) are ``M_ℓᵀ x_ℓ``.

The special functions (spherical-Bessel zeros, real spherical harmonics) come from ``cryoprism.basis.sb3d``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import jv, spherical_jn

from cryoprism.basis.sb3d import real_sph_harm, spherical_bessel_zeros
from cryoprism.geometry.grids import sphere_grid

_NQUAD = 96


# --------------------------------------------------------------------------------------------------
# the basis


@dataclass(frozen=True)
class SphericalBesselBasis:
    """Index tables of the basis (see module docstring). Build with :func:`make_basis`.

    ``ells, ms, ss`` give ``(ℓ, m, s)`` of every coefficient, ordered ℓ-major, then m, then s, so
    the coefficients of degree ℓ reshape to ``(2ℓ+1, S_ℓ)`` (``blocks[ℓ]`` is that slice).
    """

    L: int
    ell_max: int
    bandlimit: float  # c, cycles/pixel
    radius_px: float
    ells: np.ndarray
    ms: np.ndarray
    ss: np.ndarray
    zeros: np.ndarray
    norms: np.ndarray
    n_radial: tuple  # S_ℓ for ℓ = 0..ℓ_max
    blocks: tuple = field(repr=False)  # slice of each ℓ

    @property
    def n(self) -> int:
        return int(self.ells.size)


def make_basis(L: int, ell_max: int, bandlimit: float = 0.5, radius_px: float | None = None
               ) -> SphericalBesselBasis:
    """Basis for volumes of box ``L``: degrees ``ℓ ≤ ell_max``, Fourier band limit ``bandlimit``
    (cycles/pixel, ≤ 0.5), ``S_ℓ = #{s : z_{ℓs} ≤ 2π · bandlimit · radius_px}`` (``radius_px``
    defaults to ``L/2``). Degrees with no admissible zero are dropped."""
    c = float(bandlimit)
    if not 0 < c <= 0.5 + 1e-12:
        raise ValueError(f"bandlimit must be in (0, 0.5] cycles/pixel, got {bandlimit}")
    R = L / 2.0 if radius_px is None else float(radius_px)
    zmax = 2 * np.pi * c * R
    ells, ms, ss, zeros, norms, nrad, blocks = [], [], [], [], [], [], []
    start = 0
    for ell in range(int(ell_max) + 1):
        zs = np.array(spherical_bessel_zeros(ell, float(zmax)))
        S = zs.size
        nrad.append(S)
        for m in range(-ell, ell + 1):
            for s in range(S):
                ells.append(ell)
                ms.append(m)
                ss.append(s + 1)
                zeros.append(zs[s])
                norms.append(np.sqrt(2.0) / (c ** 1.5 * abs(spherical_jn(ell + 1, zs[s]))))
        blocks.append(slice(start, start + (2 * ell + 1) * S))
        start += (2 * ell + 1) * S
    return SphericalBesselBasis(
        L=int(L), ell_max=int(ell_max), bandlimit=c, radius_px=R,
        ells=np.array(ells, dtype=np.int64), ms=np.array(ms, dtype=np.int64),
        ss=np.array(ss, dtype=np.int64), zeros=np.array(zeros), norms=np.array(norms),
        n_radial=tuple(nrad), blocks=tuple(blocks))


def _quad(c: float, nq: int = _NQUAD):
    t, w = np.polynomial.legendre.leggauss(nq)
    return 0.5 * c * (t + 1), 0.5 * c * w


def _sh_columns(basis: SphericalBesselBasis) -> np.ndarray:
    return basis.ells ** 2 + basis.ells + basis.ms


def volume_matrix(basis: SphericalBesselBasis, points: np.ndarray) -> np.ndarray:
    """Real-space basis functions ``ψ`` at ``points`` ``(n, 3)`` (x, y, z in pixels from the
    centre): ``(n, basis.n)``."""
    p = np.asarray(points, dtype=np.float64)
    r = np.linalg.norm(p, axis=1)
    dirs = np.where(r[:, None] > 0, p, np.array([0.0, 0.0, 1.0]))
    Y = real_sph_harm(basis.ell_max, dirs)[:, _sh_columns(basis)]
    k, w = _quad(basis.bandlimit)
    out = np.empty((p.shape[0], basis.n))
    for ell in range(basis.ell_max + 1):
        sl = basis.blocks[ell]
        if sl.stop == sl.start:
            continue
        S = basis.n_radial[ell]
        zs = basis.zeros[sl][:S]
        jk = spherical_jn(ell, np.outer(zs, k) / basis.bandlimit) * (w * k * k)  # (S, q)
        jr = spherical_jn(ell, 2 * np.pi * np.outer(r, k))  # (n, q)
        g = jr @ jk.T  # (n, S)
        g = np.tile(g, (1, 2 * ell + 1))  # m-major then s, matches ordering
        out[:, sl] = 4 * np.pi * (-1) ** ell * basis.norms[sl] * Y[:, sl] * g
    return out


def grid_points(L: int) -> np.ndarray:
    """Voxel centres of an ``L³`` box as ``(L³, 3)`` (x, y, z) pixels from ``L//2``; row order is
    the C order of a ``[z, y, x]`` array."""
    z, y, x = np.meshgrid(*(np.arange(L) - L // 2,) * 3, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(np.float64)


def evaluate_volume(basis: SphericalBesselBasis, coef: np.ndarray, L: int | None = None) -> np.ndarray:
    """The volume ``Σ x ψ`` sampled on an ``L³`` grid (``[z, y, x]``, default ``basis.L``)."""
    L = basis.L if L is None else int(L)
    Psi = volume_matrix(basis, grid_points(L))
    return (Psi @ np.asarray(coef, dtype=np.float64)).reshape(L, L, L)


def fit_volume(basis: SphericalBesselBasis, volume: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of a voxel map ``[z, y, x]`` (box ``L``) in ``basis``."""
    v = np.asarray(volume, dtype=np.float64)
    Psi = volume_matrix(basis, grid_points(v.shape[0]))
    coef, *_ = np.linalg.lstsq(Psi, v.ravel(), rcond=1e-10)
    return coef


# --------------------------------------------------------------------------------------------------
# rotations


def wigner_real(ell_max: int, rotations: np.ndarray) -> list[np.ndarray]:
    """Real Wigner-D matrices: ``out[ℓ]`` is ``(n, 2ℓ+1, 2ℓ+1)`` with ``Y_ℓ(Aᵀ u) = M Y_ℓ(u)``.

    Least squares on ``2(ℓ_max+1)² + 32`` Fibonacci directions: ``Mᵀ = Y⁺ Y_rot``.
    """
    A = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    u = sphere_grid(2 * (ell_max + 1) ** 2 + 32)
    Y = real_sph_harm(ell_max, u)
    Yrot = real_sph_harm(ell_max, np.einsum("nji,pj->npi", A, u).reshape(-1, 3)).reshape(
        A.shape[0], u.shape[0], -1)  # row p of Aᵀ u: (Aᵀ u)_i = Σ_j A_ji u_j
    out = []
    for ell in range(ell_max + 1):
        cols = slice(ell * ell, (ell + 1) ** 2)
        pinv = np.linalg.pinv(Y[:, cols])  # (2ℓ+1, p)
        MT = np.einsum("ip,npj->nij", pinv, Yrot[:, :, cols])
        out.append(np.ascontiguousarray(np.transpose(MT, (0, 2, 1))))
    return out


def rotate_coefficients(basis: SphericalBesselBasis, coef: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Coefficients of ``V_A(r) = V(Aᵀ r)`` for each RELION matrix ``A``: ``(n_rot, basis.n)``."""
    D = wigner_real(basis.ell_max, rotations)
    x = np.asarray(coef, dtype=np.float64)
    out = np.empty((D[0].shape[0], basis.n))
    for ell in range(basis.ell_max + 1):
        sl = basis.blocks[ell]
        if sl.stop == sl.start:
            continue
        xb = x[sl].reshape(2 * ell + 1, -1)  # (m, s)
        out[:, sl] = np.einsum("nmk,ms->nks", D[ell], xb).reshape(D[ell].shape[0], -1)
    return out


# --------------------------------------------------------------------------------------------------
# projections


def projection_images(basis: SphericalBesselBasis, size: int | None = None) -> np.ndarray:
    """Projections along z of every basis function on a ``size × size`` grid centred at
    ``size//2`` (default ``basis.L``): ``(size, size, basis.n)`` (``[y, x, coef]``)."""
    size = basis.L if size is None else int(size)
    yy, xx = np.meshgrid(np.arange(size) - size // 2, np.arange(size) - size // 2, indexing="ij")
    rho = np.hypot(xx, yy).ravel()
    th = np.arctan2(yy, xx).ravel()
    eq = np.stack([np.cos(th), np.sin(th), np.zeros_like(th)], axis=1)
    Y = real_sph_harm(basis.ell_max, eq)[:, _sh_columns(basis)]
    k, w = _quad(basis.bandlimit)
    out = np.zeros((rho.size, basis.n))
    absm = np.abs(basis.ms)
    keep = (basis.ells + absm) % 2 == 0
    cache = {}
    for j in np.nonzero(keep)[0]:
        ell, m, z = int(basis.ells[j]), int(absm[j]), basis.zeros[j]
        key = (ell, m, basis.ss[j])
        if key not in cache:
            jk = spherical_jn(ell, z * k / basis.bandlimit) * w * k
            cache[key] = jv(m, 2 * np.pi * np.outer(rho, k)) @ jk
        sign = (-1) ** ((ell + m) // 2)
        out[:, j] = 2 * np.pi * sign * basis.norms[j] * Y[:, j] * cache[key]
    return out.reshape(size, size, basis.n)


def projection_operator(basis: SphericalBesselBasis, rotations: np.ndarray, images: np.ndarray,
                        dtype=np.float32) -> np.ndarray:
    """Linear maps coefficients → particle image for each rotation: ``(n_rot, n_pix, basis.n)``.

    ``images`` are (possibly filtered) basis projections ``(..., basis.n)`` flattened over pixels;
    the image of ``V`` seen through RELION matrix ``A`` is ``op[A] @ x``.
    """
    Phi = np.asarray(images, dtype=np.float64).reshape(-1, basis.n)
    D = wigner_real(basis.ell_max, rotations)
    nrot = D[0].shape[0]
    out = np.empty((nrot, Phi.shape[0], basis.n), dtype=dtype)
    for ell in range(basis.ell_max + 1):
        sl = basis.blocks[ell]
        if sl.stop == sl.start:
            continue
        S = basis.n_radial[ell]
        Pb = Phi[:, sl].reshape(-1, 2 * ell + 1, S)  # (pix, m', s)
        # A[:, (m, s)] = Σ_m' M[m, m'] Φ[:, (m', s)]   (x' = Mᵀ x)
        out[:, :, sl] = np.einsum("nmk,pks->npms", D[ell], Pb).reshape(nrot, Phi.shape[0], -1)
    return out


def project_coefficients(basis: SphericalBesselBasis, coef: np.ndarray, rotations: np.ndarray,
                         size: int | None = None) -> np.ndarray:
    """Particle images ``(n_rot, size, size)`` of the volume with coefficients ``coef``."""
    size = basis.L if size is None else int(size)
    xr = rotate_coefficients(basis, coef, rotations)
    Phi = projection_images(basis, size).reshape(-1, basis.n)
    return (xr @ Phi.T).reshape(-1, size, size)
