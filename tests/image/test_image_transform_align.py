"""Shifts, rotations and cross-correlation alignment against analytic ground truth."""

import numpy as np
import pytest

from cryoprism.image import (
    align_rotation_translation,
    align_translation,
    circular_mask,
    fourier_shift,
    gaussian_blur,
    rotate,
)


def _gauss(L, cx, cy, sx=3.0, sy=3.0, theta=0.0):
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    x, y = xx - cx, yy - cy
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    return np.exp(-(u**2 / (2 * sx**2) + v**2 / (2 * sy**2)))


def test_integer_shift_is_roll(rng):
    x = rng.standard_normal((3, 32, 32))
    t = np.array([[3, -2], [0, 5], [-7, -1]])
    y = fourier_shift(x, t)
    for i in range(3):
        assert np.allclose(y[i], np.roll(x[i], (t[i, 1], t[i, 0]), axis=(0, 1)))
    v = rng.standard_normal((16, 16, 16))
    assert np.allclose(fourier_shift(v, [1, -2, 3], ndim=3), np.roll(v, (3, -2, 1), axis=(0, 1, 2)))


def test_subpixel_shift_of_gaussian():
    L = 64
    g = _gauss(L, 0, 0)
    y = fourier_shift(g, [2.37, -1.61])
    assert np.abs(y - _gauss(L, 2.37, -1.61)).max() < 1e-6
    assert np.allclose(fourier_shift(y, [-2.37, 1.61]), g, atol=1e-10)


def test_rotate_direction_and_accuracy():
    L = 65
    x = np.zeros((L, L))
    x[L // 2, L // 2 + 6] = 1  # a point at (x=+6, y=0)
    y = rotate(x, 90.0, order=1)
    assert y[L // 2 + 6, L // 2] == pytest.approx(1.0)  # → (x=0, y=+6): x rotates toward y
    g = _gauss(L, 5.0, 0.0, 6.0, 2.5, 0.0)
    r = rotate(np.stack([g, g]), [30.0, -75.0])
    for ang, ri in zip([30.0, -75.0], r):
        a = np.deg2rad(ang)
        expect = _gauss(L, 5 * np.cos(a), 5 * np.sin(a), 6.0, 2.5, a)
        assert np.abs(ri - expect).max() < 0.01


def _particle(rng, L):
    return gaussian_blur(rng.standard_normal((L, L)), 2.0) * circular_mask(L, L * 0.35, 4)


def test_align_translation_subpixel(rng):
    L = 64
    ref = _particle(rng, L)
    t = np.array([[1.37, -2.61], [-4.05, 0.52], [0.0, 0.0], [7.3, 6.9]])
    imgs = fourier_shift(np.broadcast_to(ref, (4, L, L)), t)
    imgs = imgs + 0.1 * ref.std() * rng.standard_normal((4, L, L))
    a = align_translation(imgs, ref)
    assert np.abs(a.shifts_px - t).max() < 0.05
    assert np.all(a.score > 0.9)
    a2 = align_translation(imgs, ref, max_shift_px=5)  # the 7.3, 6.9 shift lies outside the search
    assert np.abs(a2.shifts_px[:3] - t[:3]).max() < 0.05
    assert np.hypot(*a2.shifts_px[3]) <= 5 + 1.5


def test_align_rotation_translation(rng):
    L = 80
    ref = _particle(rng, L)
    angles = np.array([12.3, 200.7, 315.2])
    t = np.array([[1.3, -2.6], [0.25, 0.4], [-5.7, 3.1]])
    imgs = fourier_shift(rotate(np.broadcast_to(ref, (3, L, L)), angles), t)
    imgs = imgs + 0.1 * ref.std() * rng.standard_normal(imgs.shape)
    a = align_rotation_translation(imgs, ref)
    d = (a.angles_deg - angles + 180) % 360 - 180
    assert np.abs(d).max() < 0.3, a.angles_deg
    assert np.abs(a.shifts_px - t).max() < 0.1


def test_rotation_and_shift_conventions_match_relion_projection():
    """An in-plane RELION psi rotates the projection by −psi; an origin o gives shift(projection, −o)."""
    forward = pytest.importorskip("cryoprism.forward")
    from cryoprism.geometry import euler_to_matrix

    L = 48
    v = forward.gaussian_blob_volume(L, centers_px=((8, 0, 0), (0, -5, 3)), sigmas_px=(2.5, 3.0))
    p0 = forward.project(v, euler_to_matrix(0.0, 0.0, 0.0)[None])[0]
    for psi in (30.0, -70.0):
        p1 = forward.project(v, euler_to_matrix(0.0, 0.0, psi)[None])[0]
        assert np.abs(p1 - rotate(p0, -psi)).max() < 2e-3 * np.abs(p1).max()
        a = align_rotation_translation(p1, p0)
        assert abs((a.angles_deg + psi + 180) % 360 - 180) < 0.1
    o = np.array([3.0, -2.0])
    p = forward.project(v, euler_to_matrix(0.0, 0.0, 0.0)[None], origins_px=o[None])[0]
    assert np.abs(p - fourier_shift(p0, -o)).max() < 1e-5 * np.abs(p0).max()


@pytest.mark.parametrize("size", [None, 32])
def test_align_templates_finds_the_template_and_shift(rng, size):
    """Noisy shifted copies of three different templates: the right template and the drawn shift."""
    from cryoprism.image.align import align_templates

    L = 64
    yy, xx = np.mgrid[:L, :L] - L // 2
    T = np.stack([np.exp(-((xx - a) ** 2 + (yy - b) ** 2) / 20.0) + 0.5 * np.exp(-((xx - c) ** 2 + yy ** 2) / 8.0)
                  for a, b, c in [(3, 0, -8), (-5, 4, 6), (0, -6, 9)]])
    k = rng.integers(0, 3, 24)
    t = rng.uniform(-8, 8, (24, 2))
    X = fourier_shift(T[k], t) * 1e-4 + rng.normal(0, 0.05e-4, (24, L, L))   # scale must not matter
    m = align_templates(X, T, max_shift_px=13, size=size)
    assert np.array_equal(m.template, k)
    tol = 0.15 if size is None else 0.5                # parabola on the 1 px / 2 px grid
    assert np.abs(m.shifts_px - t).max() < tol
    assert np.all(m.score > 0.8)
    # outside the search radius: the peak is not reachable
    far = align_templates(fourier_shift(T[:1], np.array([[10.0, 0.0]])), T, max_shift_px=5)
    assert np.hypot(*far.shifts_px[0]) <= 5.5


def test_template_peaks_gives_every_templates_peak(rng):
    """Each image is a shifted copy of one template: its own template peaks at the drawn shift and
    scores highest; align_templates is the row-wise best of these peaks."""
    from cryoprism.image.align import align_templates, template_peaks

    L = 48
    yy, xx = np.mgrid[:L, :L] - L // 2
    T = np.stack([np.exp(-((xx - a) ** 2 + (yy - b) ** 2) / 12.0) + 0.6 * np.exp(-((xx - c) ** 2 + yy ** 2) / 6.0)
                  for a, b, c in [(3, 0, -8), (-5, 4, 6), (0, -6, 9), (6, 6, -4)]])
    k = np.array([0, 1, 2, 3, 1, 0])
    t = rng.uniform(-5, 5, (6, 2))
    X = fourier_shift(T[k], t) + rng.normal(0, 0.02, (6, L, L))
    score, shifts = template_peaks(X, T, max_shift_px=8)
    assert score.shape == (6, 4) and shifts.shape == (6, 4, 2)
    assert np.array_equal(score.argmax(axis=1), k)
    assert np.abs(shifts[np.arange(6), k] - t).max() < 0.15
    m = align_templates(X, T, max_shift_px=8)
    assert np.array_equal(m.template, k)
    np.testing.assert_allclose(m.shifts_px, shifts[np.arange(6), k])
    # every peak stays inside the search radius (plus at most half a pixel of parabola along x and y)
    assert np.hypot(shifts[..., 0], shifts[..., 1]).max() <= 8 + 0.5 * np.sqrt(2)
