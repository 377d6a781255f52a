"""Pose search: scores peak at the true pose and shift (noise-free data with CTF, so the answer is known)."""

import numpy as np

from cryoprism.ctf import CTFParams
from cryoprism.ctf.model import ctf_2d
from cryoprism.forward import project
from cryoprism.forward.volumes import gaussian_blob_volume
from cryoprism.fourier import fft2c
from cryoprism.geometry import angular_distance_deg, so3_grid, uniform_rotations
from cryoprism.refine import fourier_set, global_search, local_search, rotation_stencil
from cryoprism.refine.search import GridSlices, shift_grid

L, PX = 24, 5.0


def _volume():
    centres = [(0, 0, 0), (5, 1, -2), (-3, 4, 2), (1, -5, 4), (-4, -3, -4)]
    return gaussian_blob_volume(L, centres, [2.5, 1.8, 1.5, 2.0, 1.6], [1.0, 0.8, 0.6, 0.7, 0.5]).astype(np.float32)


def _data(vol, rot, org, rng):
    n = len(rot)
    p = CTFParams(rng.uniform(8000, 20000, n), rng.uniform(8000, 20000, n), 0.0)
    c = ctf_2d(L, PX, p)
    im = project(vol, rot, org, c)
    return im, c


def test_global_search_finds_pose_and_shift_on_grid(rng):
    vol = _volume()
    grid = so3_grid(300)
    pick = rng.choice(300, 6, replace=False)
    org = rng.integers(-2, 3, (6, 2)).astype(float)
    im, c = _data(vol, grid[pick], org, rng)
    fs = fourier_set(L, 8)
    Y = fft2c(im)[:, fs.iy, fs.ix]
    C = c[:, fs.iy, fs.ix]
    P = fft2c(project(vol, grid))[:, fs.iy, fs.ix]  # any projector will do: here the forward model itself
    sl = global_search(np.conj(Y) * C, C * C, GridSlices.of(P), np.zeros((6, 2)), shift_grid(3, 1), fs, L, top=3)
    assert np.array_equal(sl.index[:, 0], pick)
    np.testing.assert_allclose(sl.origins_px[:, 0], org, atol=1e-9)


def test_local_search_steps_to_the_true_neighbour(rng):
    vol = _volume()
    start = uniform_rotations(5, rng)
    st = rotation_stencil(4.0)
    k = rng.integers(1, 27, 5)
    truth = start @ st[k]
    org0 = rng.uniform(-2, 2, (5, 2))
    org = org0 + np.array([0.5, -0.5])
    im, c = _data(vol, truth, org, rng)
    fs = fourier_set(L, 10)
    Y = fft2c(im)[:, fs.iy, fs.ix]
    C = c[:, fs.iy, fs.ix]
    cand = start[:, None] @ st[None]
    lr = local_search(Y, C, np.ones(fs.n, np.float32), vol, cand, org0, shift_grid(0.75, 0.5), fs, L)
    assert np.all(angular_distance_deg(lr.rotations, truth) < 1e-3)
    np.testing.assert_allclose(lr.origins_px, org, atol=1e-9)
    # noise-free data at the right pose: the residual is NUFFT round-off only
    assert lr.residual_shell.sum() < 1e-6 * np.sum(np.abs(Y) ** 2)


def test_rotation_stencil_is_a_cube_of_small_rotations():
    st = rotation_stencil(3.0)
    assert st.shape == (27, 3, 3)
    d = angular_distance_deg(np.eye(3)[None], st)
    assert d[0] < 1e-9
    np.testing.assert_allclose(np.sort(d)[1:7], 3.0, rtol=1e-9)
    np.testing.assert_allclose(d.max(), 3.0 * np.sqrt(3), rtol=1e-9)


def test_translational_search_finds_large_shifts_and_the_grid_search_uses_its_candidates(rng):
    """Origins far from the centre (up to 6 px, beyond a ±2-step search around 0) are found by scoring all
    shifts of the range against a coarse grid; the fine grid at the candidate origins then finds pose and
    shift."""
    from cryoprism.refine.search import origin_candidates

    vol = _volume()
    fine = so3_grid(300)
    pick = rng.choice(300, 6, replace=False)
    org = np.array([[6, 0], [-5, 3], [0, -6], [4, 4], [-3, -5], [5, -2]], float)
    im, c = _data(vol, fine[pick], org, rng)
    fs = fourier_set(L, 8)
    Y = fft2c(im)[:, fs.iy, fs.ix]
    C = c[:, fs.iy, fs.ix]
    A, w2 = np.conj(Y) * C, C * C
    coarse = GridSlices.of(fft2c(project(vol, so3_grid(60)))[:, fs.iy, fs.ix])
    cand = origin_candidates(A, w2, coarse, shift_grid(7, 1), fs, L, top=3, min_separation_px=2.0)
    assert cand.shape == (6, 3, 2)
    assert np.all(np.hypot(*(cand - org[:, None]).transpose(2, 0, 1)).min(1) <= 1.0 + 1e-9)
    sep = np.hypot(*(cand[:, :, None] - cand[:, None]).transpose(3, 0, 1, 2))
    assert np.all(sep[:, ~np.eye(3, dtype=bool)] >= 2.0 - 1e-9)  # candidates kept apart
    P = GridSlices.of(fft2c(project(vol, fine))[:, fs.iy, fs.ix])
    sl = global_search(A, w2, P, cand, shift_grid(1, 1), fs, L, top=2)
    assert np.array_equal(sl.index[:, 0], pick)
    np.testing.assert_allclose(sl.origins_px[:, 0], org, atol=1e-9)


def test_low_scale_flags_the_particles_searched_at_a_wrong_origin(rng):
    """Noise-free particles have fitted scale 1 at their true pose; those whose true origin lies 6 px from
    the searched one fit no grid projection well (scale well below the batch's median) and are flagged."""
    from cryoprism.refine.search import low_scale

    vol = _volume()
    grid = so3_grid(300)
    pick = rng.choice(300, 8, replace=False)
    org = np.zeros((8, 2))
    far = np.array([1, 4, 6])
    org[far] = [[6, 0], [0, -6], [-4, 5]]
    im, c = _data(vol, grid[pick], org, rng)
    fs = fourier_set(L, 8)
    Y = fft2c(im)[:, fs.iy, fs.ix]
    C = c[:, fs.iy, fs.ix]
    P = GridSlices.of(fft2c(project(vol, grid))[:, fs.iy, fs.ix])
    sl = global_search(np.conj(Y) * C, C * C, P, np.zeros((8, 2)), np.zeros((1, 2)), fs, L, top=2)
    assert np.array_equal(np.flatnonzero(low_scale(sl, C * C, P, 0.8)), far)
