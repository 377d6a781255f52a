"""Projection / back-projection against independently computed truths."""

import numpy as np
import pytest

from cryoprism.forward import backproject, gaussian_blob_volume, project
from cryoprism.geometry import euler_to_matrix


def _rand_rot(rng, n):
    return euler_to_matrix(*rng.uniform(0, 360, (3, n)))


def _analytic_blob(L, center_xyz, sigma, rotations, origins=None):
    """Line integral along the particle z of exp(-|r-c|²/2σ²): a 2-D Gaussian at (A c)_xy - origin."""
    c = rotations @ np.asarray(center_xyz, float)
    if origins is not None:
        c[:, :2] -= origins
    g = np.arange(L) - L // 2
    Y, X = np.meshgrid(g, g, indexing="ij")
    d2 = (X[None] - c[:, 0, None, None]) ** 2 + (Y[None] - c[:, 1, None, None]) ** 2
    return np.sqrt(2 * np.pi) * sigma * np.exp(-d2 / (2 * sigma**2))


@pytest.mark.parametrize("L,dtype", [(32, np.float64), (33, np.float64), (32, np.float32)])
def test_blob_projection_matches_line_integral(rng, L, dtype):
    c0, s = (1.5, -2.0, 0.7), 2.5
    vol = gaussian_blob_volume(L, [c0], [s], dtype=dtype)
    A = _rand_rot(rng, 6)
    origins = rng.normal(0, 2.0, (6, 2))
    img = project(vol, A, origins_px=origins)
    ref = _analytic_blob(L, c0, s, A, origins)
    assert img.dtype == dtype
    assert np.abs(img - ref).max() / np.abs(ref).max() < 1e-4


def test_identity_projection_is_voxel_sum_odd_box(rng):
    L = 15
    vol = rng.standard_normal((L, L, L))
    img = project(vol, np.eye(3)[None])[0]
    np.testing.assert_allclose(img, vol.sum(axis=0), atol=1e-9)


def test_identity_projection_even_box_smooth_volume():
    # even box: the unpaired -L/2 frequency is dropped, which a smooth volume does not feel
    L = 24
    vol = gaussian_blob_volume(L, [(1.0, -1.0, 2.0), (-2.0, 1.0, -1.0)], [1.8, 2.0], [1.0, 0.5],
                               dtype=np.float64)
    img = project(vol, np.eye(3)[None])[0]
    np.testing.assert_allclose(img, vol.sum(axis=0), atol=1e-5)  # Nyquist content ~1e-7


def test_rotation_about_z_moves_blob_like_A():
    # rot = 90° about z: A maps volume (x,y) to the particle frame, the blob at x=+5 lands at A(5,0,0)
    L = 32
    vol = gaussian_blob_volume(L, [(5.0, 0.0, 0.0)], [1.5], dtype=np.float64)
    A = euler_to_matrix(90.0, 0.0, 0.0)
    img = project(vol, A[None])[0]
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    expect = A @ np.array([5.0, 0.0, 0.0])  # (0, -5, 0) for RELION's A
    assert (ix - L // 2, iy - L // 2) == (round(expect[0]), round(expect[1]))


def test_origin_sign_relion():
    L = 32
    vol = gaussian_blob_volume(L, [(0.0, 0.0, 0.0)], [1.5], dtype=np.float64)
    origin = np.array([[3.0, -5.0]])  # [x, y] pixels
    img = project(vol, np.eye(3)[None], origins_px=origin)[0]
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    assert (ix, iy) == (L // 2 - 3, L // 2 + 5)


def test_ctf_multiplies_centred_transform(rng):
    L = 20
    vol = gaussian_blob_volume(L, [(1.0, 2.0, -1.0)], [2.0], dtype=np.float64)
    A = _rand_rot(rng, 3)
    ctf = rng.uniform(-1, 1, (3, L, L))
    ctf = 0.5 * (ctf + np.flip(np.roll(ctf, -1 if L % 2 == 0 else 0, axis=(1, 2)), axis=(1, 2)))
    plain = project(vol, A)
    with_ctf = project(vol, A, ctf=ctf)
    # independent centred transform with numpy
    F = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(plain, axes=(1, 2))), axes=(1, 2))
    ref = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(F * ctf, axes=(1, 2))), axes=(1, 2)).real
    np.testing.assert_allclose(with_ctf, ref, atol=1e-9 * np.abs(plain).max())


@pytest.mark.parametrize("L", [16, 17])
def test_backproject_is_adjoint_float64(rng, L):
    n = 9
    x = rng.standard_normal((L, L, L))
    y = rng.standard_normal((n, L, L))
    A = _rand_rot(rng, n)
    o = rng.normal(0, 3, (n, 2))
    ctf = rng.standard_normal((n, L, L))
    lhs = np.vdot(project(x, A, o, ctf), y)
    rhs = np.vdot(x, backproject(y, A, o, ctf))
    assert abs(lhs - rhs) <= 1e-6 * abs(lhs)


def test_backproject_is_adjoint_float32(rng):
    L, n = 16, 5
    x = rng.standard_normal((L, L, L)).astype(np.float32)
    y = rng.standard_normal((n, L, L)).astype(np.float32)
    A = _rand_rot(rng, n)
    Px = project(x, A).astype(np.float64)
    Pty = backproject(y, A).astype(np.float64)
    lhs, rhs = np.vdot(Px, y), np.vdot(x, Pty)
    # float32 NUFFT at eps 1e-6: compare against the scale of the terms
    assert abs(lhs - rhs) <= 1e-5 * np.linalg.norm(Px) * np.linalg.norm(y)


def test_chunking_does_not_change_result(rng):
    L = 12
    vol = rng.standard_normal((L, L, L))
    A = _rand_rot(rng, 7)
    np.testing.assert_allclose(project(vol, A, chunk=3), project(vol, A, chunk=512), atol=1e-10)
