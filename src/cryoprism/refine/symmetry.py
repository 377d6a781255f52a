"""Point-group symmetry C_n and D_n (RELION's convention: the n-fold axis along z, the D_n two-fold
axes along x and its rotations about z)."""

from __future__ import annotations

import re

import numpy as np

from cryoprism.geometry.rotations import axis_angle_to_matrix


def symmetry_group(name: str) -> np.ndarray:
    """Rotation matrices ``(|G|, 3, 3)`` of ``C1``, ``Cn`` or ``Dn`` (case-insensitive)."""
    m = re.fullmatch(r"([CcDd])(\d+)", str(name).strip())
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"symmetry must be Cn or Dn with n ≥ 1 (e.g. C1, C4, D2), got {name!r}")
    kind, n = m.group(1).upper(), int(m.group(2))
    cn = axis_angle_to_matrix(np.tile([0.0, 0.0, 1.0], (n, 1)), 360.0 * np.arange(n) / n)
    if kind == "C":
        return cn
    flip = axis_angle_to_matrix(np.array([1.0, 0.0, 0.0]), 180.0)
    return np.concatenate([cn, cn @ flip], 0)


def symmetrize(volume, group: np.ndarray) -> np.ndarray:
    """Average of the volume over the group's rotations (cubic-spline resampling about ``L//2``)."""
    if len(group) == 1:
        return np.asarray(volume)
    from cryoprism.metrics.align import transform_volume

    acc = np.zeros(np.shape(volume))
    for R in group:
        acc += transform_volume(volume, R)
    return acc / len(group)
