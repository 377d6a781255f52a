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
from functools import cached_property

import numpy as np
from scipy.special import spherical_jn

__all__ = ["SBBasis3D", "sb_basis_3d", "spherical_bessel_zeros", "real_sph_harm"]


def spherical_bessel_zeros(ell: int, bound: float) -> np.ndarray:
    """Positive zeros of ``j_ℓ`` below ``bound`` (bracketing on a fine grid + Brent)."""
    from scipy.optimize import brentq

    x = np.linspace(1e-6, bound + 1.0, int(20 * (bound + 2)))
    f = spherical_jn(ell, x)
    idx = np.nonzero(np.sign(f[:-1]) * np.sign(f[1:]) < 0)[0]
    z = np.array([brentq(lambda t: spherical_jn(ell, t), x[i], x[i + 1]) for i in idx])
    z = z[z > 1e-3] if ell > 0 else z
    return z[z <= bound]


def real_sph_harm(ell: int, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Real orthonormal spherical harmonics ``(2ℓ+1, ...)`` for m = −ℓ..ℓ (θ polar, φ azimuth)."""
    from scipy.special import sph_harm_y

    out = []
    for m in range(-ell, ell + 1):
        Y = sph_harm_y(ell, abs(m), theta, phi)
        if m < 0:
            out.append(np.sqrt(2) * (-1) ** m * Y.imag)
        elif m == 0:
            out.append(Y.real)
        else:
            out.append(np.sqrt(2) * (-1) ** m * Y.real)
    return np.stack(out)


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
        theta = np.arccos(np.clip(z / np.maximum(r, 1e-12), -1, 1))
        phi = np.arctan2(y, x)
        R = self.radius_px
        cols = []
        for ell, zs in enumerate(self.zeros):
            if len(zs) == 0:
                continue
            Y = real_sph_harm(ell, theta, phi)                       # (2ℓ+1, N)
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
        z = spherical_bessel_zeros(ell, bound)
        if len(z) == 0:
            break
        zeros.append(z)
        ell += 1
    return SBBasis3D(L=int(L), radius_px=R, bandlimit=float(bandlimit), zeros=tuple(zeros))
