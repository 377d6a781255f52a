"""Rotations in RELION's convention, quaternions, SO(3) and sphere grids, angular distances.

Matrices are RELION matrices ``A`` (volume → particle frame, docs/conventions.md); angles are in
degrees at these edges. See docs/geometry.md.
"""

from cryoprism.geometry.euler import euler_to_matrix, matrix_to_euler, viewing_direction
from cryoprism.geometry.grids import (
    direction_to_euler,
    grid_spacing_deg,
    so3_grid,
    so3_grid_views,
    so3_grid_views_for,
    sphere_grid,
)
from cryoprism.geometry.rotations import (
    angular_distance_deg,
    axis_angle_to_matrix,
    direction_angle_deg,
    euler_to_quaternion,
    inplane_angle_deg,
    matrix_to_quaternion,
    quaternion_multiply,
    quaternion_to_euler,
    quaternion_to_matrix,
    rotvec_to_matrix,
    uniform_rotations,
    viewing_angle_distance_deg,
)

__all__ = [
    "euler_to_matrix", "matrix_to_euler", "viewing_direction",
    "quaternion_to_matrix", "matrix_to_quaternion", "quaternion_multiply", "euler_to_quaternion",
    "quaternion_to_euler", "axis_angle_to_matrix", "rotvec_to_matrix", "uniform_rotations",
    "angular_distance_deg", "direction_angle_deg", "viewing_angle_distance_deg", "inplane_angle_deg",
    "sphere_grid", "direction_to_euler", "so3_grid", "so3_grid_views", "so3_grid_views_for",
    "grid_spacing_deg",
]
