"""RELION ZYZ Euler angles ↔ rotation matrices (docs/conventions.md, "Rotations").

``A = euler_to_matrix(rot, tilt, psi)`` maps volume coordinates ``(x, y, z)`` to particle-frame
coordinates; the projection integrates along the particle frame's z axis, and the image's Fourier
transform is the central slice ``V̂(Aᵀ (kx, ky, 0))``. Angles are in degrees at this edge. Defined
here, at the file edge where STAR angles become matrices; ``cryoprism.geometry`` re-exports them.
"""

from __future__ import annotations

import numpy as np


def euler_to_matrix(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """RELION ``Euler_angles2matrix``. Scalars give ``(3, 3)``; arrays of length n give ``(n, 3, 3)``."""
    a, b, g = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (rot_deg, tilt_deg, psi_deg))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    A = np.empty(a.shape + (3, 3))
    A[..., 0, 0] = cg * cc - sg * sa
    A[..., 0, 1] = cg * cs + sg * ca
    A[..., 0, 2] = -cg * sb
    A[..., 1, 0] = -sg * cc - cg * sa
    A[..., 1, 1] = -sg * cs + cg * ca
    A[..., 1, 2] = sg * sb
    A[..., 2, 0] = sc
    A[..., 2, 1] = ss
    A[..., 2, 2] = cb
    return A


def matrix_to_euler(A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`euler_to_matrix` (RELION ``Euler_matrix2angles``); degrees, tilt in [0, 180].

    At tilt 0 or 180 (gimbal lock) ``rot`` is set to 0 and the whole in-plane angle goes into ``psi``.
    """
    A = np.asarray(A, dtype=np.float64)
    single = A.ndim == 2
    A = A.reshape(-1, 3, 3)
    cb = np.clip(A[:, 2, 2], -1.0, 1.0)
    sb = np.hypot(A[:, 2, 0], A[:, 2, 1])
    tilt = np.arctan2(sb, cb)
    ok = sb > 1e-9
    rot = np.where(ok, np.arctan2(A[:, 2, 1], A[:, 2, 0]), 0.0)
    psi = np.where(ok, np.arctan2(A[:, 1, 2], -A[:, 0, 2]),
                   # gimbal lock: A = Rz-like block; rot = 0 → A[0,0]=cg*cb, A[0,1]=sg
                   np.arctan2(A[:, 0, 1], A[:, 0, 0] * np.sign(cb + (cb == 0))))
    out = tuple(np.rad2deg(v) for v in (rot, tilt, psi))
    if single:
        return tuple(float(v[0]) for v in out)
    return out
