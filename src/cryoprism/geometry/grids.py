"""Deterministic near-uniform grids on the sphere of viewing directions and on SO(3).

* :func:`sphere_grid` — Fibonacci (golden-angle) spiral of unit vectors.
* :func:`so3_grid` — exactly ``n`` rotations from a super-Fibonacci spiral on the unit quaternions.
* :func:`so3_grid_views` — structured grid: viewing directions × evenly spaced in-plane angles, for
  searches that compute one projection per direction and rotate it in-plane.
* :func:`grid_spacing_deg` — measured nearest-neighbour and covering angles of a rotation grid.

See docs/geometry.md for the constructions and the measured spacings.
"""

from __future__ import annotations

import numpy as np

from cryoprism.geometry.euler import euler_to_matrix
from cryoprism.geometry.rotations import matrix_to_quaternion, quaternion_to_matrix, uniform_rotations

_GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))  # 2π (1 − 1/φ)
# super-Fibonacci constants: φ = √2 and ψ the real root > 1 of ψ⁴ = ψ + 4
_SF_PHI = np.sqrt(2.0)
_SF_PSI = 1.533751168755204288118041


def sphere_grid(n: int, hemisphere: bool = False) -> np.ndarray:
    """``n`` near-uniform unit vectors ``(n, 3)`` (x, y, z) on the sphere (Fibonacci spiral).

    Point ``i`` has ``z = 1 − (2i + 1)/n`` (equal-area bands) and azimuth ``i`` × golden angle.
    ``hemisphere=True`` covers ``z ≥ 0`` only (``z = 1 − (i + ½)/n``), for views of a real volume
    where ``d`` and ``−d`` give mirror-image projections.
    """
    n = int(n)
    if n < 1:
        raise ValueError("sphere_grid needs n >= 1")
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (i + 0.5) / n if hemisphere else 1.0 - (2.0 * i + 1.0) / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * _GOLDEN_ANGLE
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def direction_to_euler(directions) -> tuple[np.ndarray, np.ndarray]:
    """RELION ``(rot, tilt)`` in degrees whose viewing direction is ``directions`` ``(..., 3)``.

    The viewing direction of ``euler_to_matrix(rot, tilt, psi)`` is ``(sinθ cosφ, sinθ sinφ, cosθ)``.
    """
    d = np.asarray(directions, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    tilt = np.arccos(np.clip(d[..., 2], -1.0, 1.0))
    rot = np.arctan2(d[..., 1], d[..., 0])
    return np.rad2deg(rot), np.rad2deg(tilt)


def so3_grid(n: int) -> np.ndarray:
    """Exactly ``n`` near-uniform rotations ``(n, 3, 3)`` (super-Fibonacci spiral, deterministic).

    Quaternion ``i`` (``s = i + ½``): ``(r sin α, r cos α, R sin β, R cos β)`` with ``r = √(s/n)``,
    ``R = √(1 − s/n)``, ``α = 2π s/√2``, ``β = 2π s/ψ`` (ψ⁴ = ψ + 4). The radius split makes the
    points equal-volume in the Hopf coordinates of S³; the two irrational rotation numbers spread
    them like a 2-D Fibonacci lattice. Measured spacing: :func:`grid_spacing_deg`, docs/geometry.md.
    """
    n = int(n)
    if n < 1:
        raise ValueError("so3_grid needs n >= 1")
    s = np.arange(n, dtype=np.float64) + 0.5
    r = np.sqrt(s / n)
    R = np.sqrt(1.0 - s / n)
    a = 2 * np.pi * s / _SF_PHI
    b = 2 * np.pi * s / _SF_PSI
    q = np.stack([r * np.sin(a), r * np.cos(a), R * np.sin(b), R * np.cos(b)], axis=1)
    return quaternion_to_matrix(q)


def so3_grid_views(n_directions: int, n_inplane: int, hemisphere: bool = False):
    """Viewing directions × in-plane angles: ``(n_directions · n_inplane, 3, 3)`` RELION matrices.

    Directions come from :func:`sphere_grid` and in-plane angles ``psi = 360° j / n_inplane``. Rows
    are ordered direction-major (``index = d · n_inplane + j``). Returns ``(rotations, angles_deg)``
    with ``angles_deg`` ``(m, 3)`` = (rot, tilt, psi). For spacing matched between the two factors,
    take ``n_inplane ≈ √(π · n_directions)`` (see :func:`so3_grid_views_for`).
    """
    d = sphere_grid(n_directions, hemisphere=hemisphere)
    rot, tilt = direction_to_euler(d)
    psi = 360.0 * np.arange(int(n_inplane)) / int(n_inplane)
    ang = np.stack([np.repeat(rot, len(psi)), np.repeat(tilt, len(psi)), np.tile(psi, len(rot))], axis=1)
    return euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2]), ang


def so3_grid_views_for(n: int) -> tuple[int, int]:
    """``(n_directions, n_inplane)`` with product ≈ ``n`` and matched angular spacing.

    Directions spaced ``≈ √(4π / n_d)`` rad match in-plane steps ``2π / n_ψ`` when
    ``n_ψ = √(π n_d)``, i.e. ``n_ψ = (π n)^{1/3}``.
    """
    n_psi = max(1, int(round((np.pi * n) ** (1.0 / 3.0))))
    n_dir = max(1, int(round(n / n_psi)))
    return n_dir, n_psi


def _max_abs_dot(qa: np.ndarray, qb: np.ndarray, exclude_self: bool, chunk: int = 2048) -> np.ndarray:
    """For every row of ``qa``, the largest ``|qa·qb|`` over rows of ``qb`` (optionally not itself)."""
    out = np.empty(len(qa))
    for s in range(0, len(qa), chunk):
        d = np.abs(qa[s:s + chunk] @ qb.T)
        if exclude_self:
            idx = np.arange(s, min(s + chunk, len(qa)))
            d[idx - s, idx] = -1.0
        out[s:s + chunk] = d.max(axis=1)
    return out


def grid_spacing_deg(rotations, n_probe: int = 20000, rng=0) -> dict:
    """Measured spacing of a rotation grid (degrees).

    Returns ``nn_min`` / ``nn_mean`` / ``nn_max`` (smallest / mean / largest angle from a grid point to
    its nearest other grid point) and ``covering`` (largest angle from ``n_probe`` Haar-random rotations
    to the grid, an estimate from below of the covering radius). Cost O(n · (n + n_probe)).
    """
    q = matrix_to_quaternion(rotations).reshape(-1, 4)
    nn = 2 * np.arccos(np.clip(_max_abs_dot(q, q, True), 0.0, 1.0))
    probes = matrix_to_quaternion(uniform_rotations(n_probe, rng))
    cov = 2 * np.arccos(np.clip(_max_abs_dot(probes, q, False), 0.0, 1.0))
    deg = lambda x: float(np.rad2deg(x))
    return {"n": int(len(q)), "nn_min": deg(nn.min()), "nn_max": deg(nn.max()), "nn_mean": deg(nn.mean()),
            "covering": deg(cov.max())}
