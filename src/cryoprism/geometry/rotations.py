"""Quaternions, random rotations and angular distances for RELION rotation matrices.

All matrices are RELION matrices ``A`` (docs/conventions.md, "Rotations"): ``A`` maps volume
coordinates ``(x, y, z)`` to particle-frame coordinates. Batched inputs carry the rotation in the
last two axes (``(..., 3, 3)``). Angles are degrees at these edges, radians inside.

Quaternions are **scalar first**, ``q = (w, x, y, z)`` with ``w = cos(ω/2)`` and ``(x, y, z) =
sin(ω/2) · axis``, and describe the same matrix ``A`` (``quaternion_to_matrix(q) = A``). ``q`` and
``−q`` give the same rotation; the functions here return the representative with ``w ≥ 0``.
"""

from __future__ import annotations

import numpy as np

from cryoprism.geometry.euler import euler_to_matrix, matrix_to_euler, viewing_direction

# --------------------------------------------------------------------------------------------------
# quaternions


def _canonical(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of unit quaternions ``(..., 4)`` (scalar first; normalised here)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    R = np.empty(q.shape[:-1] + (3, 3))
    R[..., 0, 0] = 1 - 2 * (y * y + z * z)
    R[..., 0, 1] = 2 * (x * y - z * w)
    R[..., 0, 2] = 2 * (x * z + y * w)
    R[..., 1, 0] = 2 * (x * y + z * w)
    R[..., 1, 1] = 1 - 2 * (x * x + z * z)
    R[..., 1, 2] = 2 * (y * z - x * w)
    R[..., 2, 0] = 2 * (x * z - y * w)
    R[..., 2, 1] = 2 * (y * z + x * w)
    R[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return R


def matrix_to_quaternion(R) -> np.ndarray:
    """Unit quaternions ``(..., 4)`` (scalar first, ``w ≥ 0``) of rotation matrices ``(..., 3, 3)``.

    Uses the largest of the four diagonal combinations for numerical stability (Shepperd's method).
    """
    R = np.asarray(R, dtype=np.float64)
    shape = R.shape[:-2]
    R = R.reshape(-1, 3, 3)
    t = np.trace(R, axis1=1, axis2=2)
    # candidates: 4w², 4x², 4y², 4z² (each plus terms); pick the largest for stability
    d = np.stack([t, R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]], axis=1)
    k = np.argmax(d, axis=1)
    q = np.empty((R.shape[0], 4))
    # k == 0: w dominant
    m = k == 0
    s = np.sqrt(1.0 + t[m]) * 2
    q[m] = np.stack([0.25 * s, (R[m, 2, 1] - R[m, 1, 2]) / s, (R[m, 0, 2] - R[m, 2, 0]) / s,
                     (R[m, 1, 0] - R[m, 0, 1]) / s], axis=1)
    m = k == 1
    s = np.sqrt(1.0 + R[m, 0, 0] - R[m, 1, 1] - R[m, 2, 2]) * 2
    q[m] = np.stack([(R[m, 2, 1] - R[m, 1, 2]) / s, 0.25 * s, (R[m, 0, 1] + R[m, 1, 0]) / s,
                     (R[m, 0, 2] + R[m, 2, 0]) / s], axis=1)
    m = k == 2
    s = np.sqrt(1.0 + R[m, 1, 1] - R[m, 0, 0] - R[m, 2, 2]) * 2
    q[m] = np.stack([(R[m, 0, 2] - R[m, 2, 0]) / s, (R[m, 0, 1] + R[m, 1, 0]) / s, 0.25 * s,
                     (R[m, 1, 2] + R[m, 2, 1]) / s], axis=1)
    m = k == 3
    s = np.sqrt(1.0 + R[m, 2, 2] - R[m, 0, 0] - R[m, 1, 1]) * 2
    q[m] = np.stack([(R[m, 1, 0] - R[m, 0, 1]) / s, (R[m, 0, 2] + R[m, 2, 0]) / s,
                     (R[m, 1, 2] + R[m, 2, 1]) / s, 0.25 * s], axis=1)
    return _canonical(q).reshape(shape + (4,))


def quaternion_multiply(p, q) -> np.ndarray:
    """Hamilton product ``p ⊗ q`` (scalar first); ``R(p ⊗ q) = R(p) @ R(q)``."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    pw, px, py, pz = np.moveaxis(p, -1, 0)
    qw, qx, qy, qz = np.moveaxis(q, -1, 0)
    return np.stack([
        pw * qw - px * qx - py * qy - pz * qz,
        pw * qx + px * qw + py * qz - pz * qy,
        pw * qy - px * qz + py * qw + pz * qx,
        pw * qz + px * qy - py * qx + pz * qw,
    ], axis=-1)


def euler_to_quaternion(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """Quaternion(s) of the RELION matrix ``euler_to_matrix(rot, tilt, psi)`` (degrees in)."""
    return matrix_to_quaternion(euler_to_matrix(rot_deg, tilt_deg, psi_deg))


def quaternion_to_euler(q):
    """RELION Euler angles ``(rot, tilt, psi)`` in degrees of quaternion(s) ``q``."""
    return matrix_to_euler(quaternion_to_matrix(q))


def axis_angle_to_matrix(axis, angle_deg) -> np.ndarray:
    """Active right-handed rotation by ``angle_deg`` about ``axis`` (``(..., 3)``, normalised here)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    half = np.deg2rad(np.asarray(angle_deg, dtype=np.float64))[..., None] / 2
    q = np.concatenate([np.cos(half) * np.ones(axis.shape[:-1] + (1,)), np.sin(half) * axis], axis=-1)
    return quaternion_to_matrix(q)


def rotvec_to_matrix(rotvec_rad) -> np.ndarray:
    """Rotation matrices of rotation vectors (axis × angle, **radians**), ``(..., 3)`` → ``(..., 3, 3)``.

    Internal helper for local searches; exact at zero.
    """
    v = np.asarray(rotvec_rad, dtype=np.float64)
    th = np.linalg.norm(v, axis=-1, keepdims=True)
    # sin(θ/2)/θ with its limit 1/2 at θ = 0
    f = np.where(th > 1e-12, np.sin(th / 2) / np.where(th > 1e-12, th, 1.0), 0.5 - th ** 2 / 48)
    q = np.concatenate([np.cos(th / 2), f * v], axis=-1)
    return quaternion_to_matrix(q)


# --------------------------------------------------------------------------------------------------
# random rotations


def uniform_rotations(n: int, rng=None) -> np.ndarray:
    """``n`` rotation matrices ``(n, 3, 3)`` drawn from the Haar (uniform) measure on SO(3).

    A normalised 4-D standard normal vector is uniform on the unit 3-sphere; the double cover
    S³ → SO(3) pushes the uniform measure to the Haar measure.
    """
    rng = np.random.default_rng(rng)
    q = rng.standard_normal((int(n), 4))
    return quaternion_to_matrix(q)


# --------------------------------------------------------------------------------------------------
# distances


def angular_distance_deg(A, B) -> np.ndarray:
    """Geodesic distance on SO(3) in degrees: the angle of the rotation ``A Bᵀ`` (0…180).

    Broadcasts over leading axes (``(..., 3, 3)``). Computed as ``2 asin(‖A − B‖_F / (2√2))``, which
    equals ``acos((tr(A Bᵀ) − 1) / 2)`` but stays accurate for small angles.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    fro = np.sqrt(np.sum((A - B) ** 2, axis=(-2, -1)))
    return np.rad2deg(2 * np.arcsin(np.clip(fro / (2 * np.sqrt(2)), 0.0, 1.0)))


def direction_angle_deg(u, v, antipodal: bool = False) -> np.ndarray:
    """Angle in degrees between direction vectors ``(..., 3)`` (normalised here).

    With ``antipodal=True``, ``u`` and ``−u`` count as the same direction (result in 0…90).
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    c = np.sum(u * v, axis=-1)
    if antipodal:
        c = np.abs(c)
    # atan2(|u×v|, u·v) is accurate at every angle
    s = np.linalg.norm(np.cross(u, v), axis=-1)
    return np.rad2deg(np.arctan2(s, c))


def viewing_angle_distance_deg(A, B, antipodal: bool = False) -> np.ndarray:
    """Angle in degrees between the viewing directions (third rows) of rotations ``A`` and ``B``.

    Ignores the in-plane angle. ``antipodal=True`` treats opposite viewing directions as equal (the
    projections along ``d`` and ``−d`` of a real volume are mirror images), giving 0…90.
    """
    return direction_angle_deg(viewing_direction(A), viewing_direction(B), antipodal=antipodal)


def inplane_angle_deg(A, B) -> np.ndarray:
    """In-plane angle in degrees (−180…180] that takes particle frame ``B`` to particle frame ``A``.

    ``M = A Bᵀ`` maps particle-frame-B coordinates to particle-frame-A coordinates. When ``A`` and
    ``B`` share their viewing direction, ``M`` is a rotation about z by this angle (so
    ``A = R_z(angle) B``); otherwise the angle of the z-rotation closest to ``M`` in the least-squares
    sense, ``atan2(M₁₀ − M₀₁, M₀₀ + M₁₁)``. With RELION Euler angles at equal ``rot`` and ``tilt``,
    the result is ``psi_B − psi_A`` (RELION's ``R_z(ψ)ᵀ`` rotates by ``−ψ``).
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    M = A @ np.swapaxes(B, -1, -2)
    return np.rad2deg(np.arctan2(M[..., 1, 0] - M[..., 0, 1], M[..., 0, 0] + M[..., 1, 1]))
