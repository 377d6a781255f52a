"""RELION ZYZ Euler angles ↔ rotation matrices (docs/conventions.md, "Rotations").

``euler_to_matrix`` / ``matrix_to_euler`` are defined in :mod:`cryoprism.io.euler` (the file edge
where STAR angles become matrices) and re-exported here.
"""

from __future__ import annotations

import numpy as np

from cryoprism.io.euler import euler_to_matrix, matrix_to_euler

__all__ = ["euler_to_matrix", "matrix_to_euler", "viewing_direction"]


def viewing_direction(A) -> np.ndarray:
    """Direction (volume frame) along which the projection integrates: the third row of ``A``."""
    return np.asarray(A)[..., 2, :]
