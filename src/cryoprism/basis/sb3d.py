"""3-D spherical-Bessel × spherical-harmonic basis on a ball (docs/basis.md).

    φ_{ℓ,m,s}(r) = N_{ℓ,s} j_ℓ(z_{ℓ,s} |r| / R) Y_ℓ^m(r̂)   for |r| ≤ R (0 outside),
    N_{ℓ,s} = √2 / (R^{3/2} |j_{ℓ+1}(z_{ℓ,s})|),

``z_{ℓ,s}`` the s-th positive zero of the spherical Bessel function ``j_ℓ`` and ``Y_ℓ^m`` real
orthonormal spherical harmonics, so the functions are orthonormal on the ball (continuous inner
product). Kept: ``z_{ℓ,s} ≤ 2π c R`` (sampling criterion, c = band limit in cycles per voxel).

Expansion is by least squares on the voxels inside the ball (`expand`), evaluation by the matrix
product (`evaluate`). The basis matrix has ``N_ball × n_basis`` entries, so this is meant for the
small boxes where an expansion of a volume is needed (≤ 32³–48³); it is dense, not fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import spherical_jn

__all__ = ["SBBasis3D", "sb_basis_3d", "spherical_bessel_zeros", "real_sph_harm"]


@lru_cache(maxsize=None)
def spherical_bessel_zeros(ell: int, zmax: float) -> tuple[float, ...]:
    """Positive zeros of ``j_ℓ`` up to ``zmax`` (bracketed on a fine grid, refined by Brent)."""
    step = 0.05
    x = np.arange(max(ell, 1e-3) + step, zmax + 2 * step, step)
    f = spherical_jn(ell, x)
    idx = np.nonzero(np.sign(f[:-1]) * np.sign(f[1:]) < 0)[0]
    zs = [brentq(lambda t: spherical_jn(ell, t), x[i], x[i + 1], xtol=1e-14) for i in idx]
    return tuple(z for z in zs if z <= zmax)


def real_sph_harm(ell_max: int, dirs: np.ndarray) -> np.ndarray:
    """Real orthonormal spherical harmonics at unit vectors ``dirs`` ``(n, 3)`` (x, y, z).

    Returns ``(n, (ℓ_max+1)²)``, column ``ℓ² + ℓ + m``: ``√2 P̄_ℓ^m(cosθ) cos(mφ)`` for ``m > 0``,
    ``P̄_ℓ^0(cosθ)`` for ``m = 0`` and ``√2 P̄_ℓ^{|m|}(cosθ) sin(|m|φ)`` for ``m < 0``, with
    ``P̄`` the fully normalised associated Legendre functions (stable three-term recursion).
    """
    d = np.asarray(dirs, dtype=np.float64)
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-300)
    x = np.clip(d[:, 2], -1.0, 1.0)
    st = np.sqrt(np.maximum(1.0 - x * x, 0.0))
    phi = np.arctan2(d[:, 1], d[:, 0])
    n = d.shape[0]
    out = np.zeros((n, (ell_max + 1) ** 2))
    pmm = np.full(n, np.sqrt(1.0 / (4 * np.pi)))
    for m in range(ell_max + 1):
        if m > 0:
            pmm = -np.sqrt((2 * m + 1) / (2.0 * m)) * st * pmm
        plm2, plm1 = None, pmm
        cols = {m: pmm}
        if m + 1 <= ell_max:
            plm2, plm1 = pmm, np.sqrt(2 * m + 3.0) * x * pmm
            cols[m + 1] = plm1
        for ell in range(m + 2, ell_max + 1):
            a = np.sqrt((4.0 * ell * ell - 1) / (ell * ell - m * m))
            b = np.sqrt(((ell - 1.0) ** 2 - m * m) / (4.0 * (ell - 1) ** 2 - 1))
            p = a * (x * plm1 - b * plm2)
            plm2, plm1 = plm1, p
            cols[ell] = p
        for ell, p in cols.items():
            if m == 0:
                out[:, ell * ell + ell] = p
            else:
                out[:, ell * ell + ell + m] = np.sqrt(2.0) * p * np.cos(m * phi)
                out[:, ell * ell + ell - m] = np.sqrt(2.0) * p * np.sin(m * phi)
    return out


@dataclass(frozen=True, eq=False)
class SBBasis3D:
    L: int
    radius_px: float
    bandlimit: float
    zeros: tuple = field(repr=False)   # zeros[ℓ] = array of z_{ℓ,s}

    @cached_property
    def labels(self) -> np.ndarray:
        """``(n_basis, 3)`` rows (ℓ, m, s)."""
        rows = [(ell, m, s) for ell, z in enumerate(self.zeros) for m in range(-ell, ell + 1)
                for s in range(len(z))]
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    @property
    def n_basis(self) -> int:
        return len(self.labels)

    @cached_property
    def _ball(self):
        g = np.arange(self.L) - self.L // 2
        z, y, x = np.meshgrid(g, g, g, indexing="ij")
        r = np.sqrt(x * x + y * y + z * z)
        inside = r <= self.radius_px
        return inside, r[inside], x[inside], y[inside], z[inside]

    @cached_property
    def matrix(self) -> np.ndarray:
        """Basis sampled on the voxels of the ball: ``(N_ball, n_basis)`` float64."""
        inside, r, x, y, z = self._ball
        dirs = np.stack([x, y, z], axis=-1).astype(np.float64)
        dirs[r == 0] = (0.0, 0.0, 1.0)
        Yall = real_sph_harm(len(self.zeros) - 1, dirs)               # (N, (ℓmax+1)²)
        R = self.radius_px
        cols = []
        for ell, zs in enumerate(self.zeros):
            if len(zs) == 0:
                continue
            Y = Yall[:, ell * ell:(ell + 1) * (ell + 1)].T             # (2ℓ+1, N), m = −ℓ..ℓ
            norm = np.sqrt(2.0) / (R ** 1.5 * np.abs(spherical_jn(ell + 1, zs)))
            rad = spherical_jn(ell, np.outer(r, zs) / R) * norm[None, :]   # (N, S)
            for mi in range(2 * ell + 1):
                cols.append(Y[mi][:, None] * rad)
        return np.concatenate(cols, axis=1)

    @cached_property
    def _lstsq(self):
        return np.linalg.pinv(self.matrix)

    def expand(self, volume: np.ndarray) -> np.ndarray:
        """Least-squares coefficients ``(n_basis,)`` (or ``(n, n_basis)``) of volumes ``(L, L, L)``."""
        v = np.asarray(volume, dtype=np.float64)
        inside = self._ball[0]
        vals = v[..., inside]
        return vals @ self._lstsq.T

    def evaluate(self, coefs: np.ndarray) -> np.ndarray:
        """Volumes ``(L, L, L)`` (zero outside the ball) from coefficients."""
        c = np.asarray(coefs, dtype=np.float64)
        inside = self._ball[0]
        out = np.zeros(c.shape[:-1] + (self.L,) * 3)
        out[..., inside] = c @ self.matrix.T
        return out


def sb_basis_3d(L: int, radius_px: float | None = None, bandlimit: float = 0.5) -> SBBasis3D:
    """Spherical-Bessel basis for ``L³`` volumes within ``radius_px`` voxels of ``L//2``."""
    R = float(L // 2 if radius_px is None else radius_px)
    bound = 2 * np.pi * bandlimit * R
    zeros = []
    ell = 0
    while True:
        z = np.array(spherical_bessel_zeros(ell, float(bound)))
        if len(z) == 0:
            break
        zeros.append(z)
        ell += 1
    return SBBasis3D(L=int(L), radius_px=R, bandlimit=float(bandlimit), zeros=tuple(zeros))
