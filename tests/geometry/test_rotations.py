"""Quaternions, distances, random rotations: checked against scipy and analytic cases."""

import numpy as np
from scipy import stats
from scipy.spatial.transform import Rotation

from cryoprism.geometry import (
    angular_distance_deg,
    axis_angle_to_matrix,
    direction_angle_deg,
    euler_to_matrix,
    euler_to_quaternion,
    inplane_angle_deg,
    matrix_to_euler,
    matrix_to_quaternion,
    quaternion_multiply,
    quaternion_to_euler,
    quaternion_to_matrix,
    rotvec_to_matrix,
    uniform_rotations,
    viewing_angle_distance_deg,
    viewing_direction,
)


def _scipy_relion(e):
    return np.swapaxes(Rotation.from_euler("ZYZ", e, degrees=True).as_matrix(), -1, -2)


def test_quaternion_matches_scipy(rng):
    e = rng.uniform([-180, 0, -180], [180, 180, 180], size=(200, 3))
    A = _scipy_relion(e)
    q = matrix_to_quaternion(A)
    xyzw = Rotation.from_matrix(A).as_quat()  # scipy: scalar last
    ref = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    ref *= np.sign(ref[:, :1] + (ref[:, :1] == 0))
    assert np.allclose(q, ref, atol=1e-10)
    assert np.all(q[:, 0] >= 0)
    assert np.allclose(quaternion_to_matrix(q), A, atol=1e-12)
    assert np.allclose(euler_to_quaternion(*e.T), q, atol=1e-10)
    back = np.stack(quaternion_to_euler(q), axis=1)
    assert np.allclose(euler_to_matrix(*back.T), A, atol=1e-10)


def test_quaternion_near_180_degrees_and_identity():
    # rotations by ~180° exercise the x/y/z-dominant branches
    for axis in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]):
        for ang in (179.999, 180.0, 0.0):
            R = axis_angle_to_matrix(axis, ang)
            ref = Rotation.from_rotvec(np.deg2rad(ang) * np.array(axis) / np.linalg.norm(axis)).as_matrix()
            assert np.allclose(R, ref, atol=1e-12)
            assert np.allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-12)


def test_quaternion_product_composes(rng):
    p, q = rng.standard_normal((2, 50, 4))
    assert np.allclose(quaternion_to_matrix(quaternion_multiply(p, q)),
                       quaternion_to_matrix(p) @ quaternion_to_matrix(q), atol=1e-12)


def test_rotvec_matches_scipy(rng):
    v = rng.standard_normal((30, 3)) * 0.7
    v[0] = 0.0
    assert np.allclose(rotvec_to_matrix(v), Rotation.from_rotvec(v).as_matrix(), atol=1e-12)


def test_angular_distance_analytic_and_scipy(rng):
    A = uniform_rotations(100, rng)
    # rotate each by a known angle about a random axis: distance is that angle
    ang = rng.uniform(0, 180, 100)
    ang[:3] = [0.0, 1e-4, 180.0]
    R = axis_angle_to_matrix(rng.standard_normal((100, 3)), ang)
    assert np.allclose(angular_distance_deg(R @ A, A), ang, atol=1e-6)
    assert np.allclose(angular_distance_deg(A, A @ R), ang, atol=1e-6)
    B = uniform_rotations(100, rng)
    ref = np.rad2deg((Rotation.from_matrix(A) * Rotation.from_matrix(B).inv()).magnitude())
    assert np.allclose(angular_distance_deg(A, B), ref, atol=1e-8)
    # broadcasting: one against many
    assert angular_distance_deg(A[0], B).shape == (100,)


def test_viewing_and_inplane_angles():
    A = euler_to_matrix(30.0, 50.0, 10.0)
    B = euler_to_matrix(30.0, 50.0, 75.0)
    assert np.isclose(viewing_angle_distance_deg(A, B), 0.0, atol=1e-6)
    assert np.isclose(inplane_angle_deg(A, B), 65.0)  # psi_B - psi_A
    # tilt 40 vs 100 at equal rot: 60° apart; opposite directions are 180° or 0° (antipodal)
    C = euler_to_matrix(0.0, 40.0, 0.0)
    D = euler_to_matrix(0.0, 100.0, 33.0)
    assert np.isclose(viewing_angle_distance_deg(C, D), 60.0)
    E = euler_to_matrix(180.0, 140.0, 0.0)  # direction −(sin40, 0, cos40)
    assert np.allclose(viewing_direction(E), -viewing_direction(C))
    assert np.isclose(viewing_angle_distance_deg(C, E), 180.0)
    assert np.isclose(viewing_angle_distance_deg(C, E, antipodal=True), 0.0, atol=1e-6)
    assert np.isclose(direction_angle_deg([1, 0, 0], [1, 1e-9, 0]), np.rad2deg(1e-9), rtol=1e-6)


def test_uniform_rotations_are_haar():
    R = uniform_rotations(20000, 7)
    assert R.shape == (20000, 3, 3)
    assert np.allclose(R @ np.swapaxes(R, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    # Haar: E[R] = 0 (so E[tr R] = 0) and E[tr² R] = 1 (character orthogonality)
    tr = np.trace(R, axis1=1, axis2=2)
    se = tr.std() / np.sqrt(len(tr))
    assert abs(tr.mean()) < 4 * se
    assert abs((tr ** 2).mean() - 1.0) < 0.05
    rot, tilt, psi = matrix_to_euler(R)
    # cos(tilt) ~ U(-1, 1), rot and psi ~ U(-180, 180)
    assert stats.kstest(np.cos(np.deg2rad(tilt)), stats.uniform(-1, 2).cdf).pvalue > 1e-3
    assert stats.kstest(rot, stats.uniform(-180, 360).cdf).pvalue > 1e-3
    assert stats.kstest(psi, stats.uniform(-180, 360).cdf).pvalue > 1e-3
    # rotation angle ω has density (1 − cos ω)/π on [0, π]
    om = np.deg2rad(angular_distance_deg(R, np.eye(3)))
    cdf = lambda w: (w - np.sin(w)) / np.pi
    assert stats.kstest(om, cdf).pvalue > 1e-3


def test_uniform_rotations_seeded():
    assert np.array_equal(uniform_rotations(5, 3), uniform_rotations(5, np.random.default_rng(3)))


def test_haar_test_can_fail(rng):
    # the tilt check above rejects a naive sampler with tilt uniform in degrees
    tilt = rng.uniform(0, 180, 20000)
    assert stats.kstest(np.cos(np.deg2rad(tilt)), stats.uniform(-1, 2).cdf).pvalue < 1e-3
