"""Rotations in RELION's convention, quaternions, SO(3) and sphere grids, angular distances."""

from cryoprism.geometry.euler import euler_to_matrix, matrix_to_euler, viewing_direction

__all__ = ["euler_to_matrix", "matrix_to_euler", "viewing_direction"]
