"""Sphere and SO(3) grids: size, uniformity, spacing."""

import numpy as np

from cryoprism.geometry import (
    direction_to_euler,
    euler_to_matrix,
    grid_spacing_deg,
    so3_grid,
    so3_grid_views,
    so3_grid_views_for,
    sphere_grid,
    uniform_rotations,
    viewing_direction,
)


def test_sphere_grid_uniform():
    n = 2000
    d = sphere_grid(n)
    assert d.shape == (n, 3)
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    # equal-area: the fraction in any z-band equals its area fraction (band width)/2
    for lo, hi in [(-1, -0.5), (-0.2, 0.3), (0.9, 1.0)]:
        frac = np.mean((d[:, 2] >= lo) & (d[:, 2] < hi))
        assert abs(frac - (hi - lo) / 2) < 2.0 / n
    # every point of a fine random probe set has a grid point within ~1.2 × the ideal spacing
    probes = np.random.default_rng(0).standard_normal((5000, 3))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    cov = np.rad2deg(np.arccos(np.clip((probes @ d.T).max(axis=1), -1, 1))).max()
    ideal = np.rad2deg(np.sqrt(4 * np.pi / n))
    assert cov < 1.2 * ideal
    h = sphere_grid(500, hemisphere=True)
    assert np.all(h[:, 2] > 0) and abs(np.mean(h[:, 2] > 0.5) - 0.5) < 0.01


def test_direction_to_euler_roundtrip():
    d = sphere_grid(300)
    rot, tilt = direction_to_euler(d)
    assert np.allclose(viewing_direction(euler_to_matrix(rot, tilt, 0.0)), d, atol=1e-12)


def test_so3_grid_exact_size_and_spacing():
    for n in (1, 7, 500):
        assert so3_grid(n).shape == (n, 3, 3)
    n = 2000
    G = so3_grid(n)
    assert np.allclose(G @ np.swapaxes(G, 1, 2), np.eye(3), atol=1e-12)
    g = grid_spacing_deg(G, n_probe=5000)
    r = grid_spacing_deg(uniform_rotations(n, 1), n_probe=5000)
    # a near-uniform grid: no near-duplicates, and a covering angle clearly below random points'
    assert g["nn_max"] < 1.4 * g["nn_mean"]
    assert g["covering"] < 0.8 * r["covering"]
    # the Haar volume fraction of a ball of radius ρ is (ρ − sin ρ)/π (rotation-angle CDF).
    # packing bound: n disjoint balls of radius nn_min/2 fit in SO(3)
    vol = lambda rho: (rho - np.sin(rho)) / np.pi
    assert n * vol(np.deg2rad(g["nn_min"]) / 2) < 1.0
    # covering bound: n balls of radius `covering` must cover SO(3); a good grid is within 2× of it
    assert n * vol(np.deg2rad(g["covering"])) > 1.0
    c_ideal = 1.0
    while n * vol(np.deg2rad(c_ideal)) < 1.0:
        c_ideal += 0.05
    assert g["covering"] < 2.0 * c_ideal


def test_so3_grid_views_structure():
    nd, npsi = so3_grid_views_for(1000)
    assert abs(nd * npsi - 1000) <= npsi
    R, ang = so3_grid_views(nd, npsi)
    assert R.shape == (nd * npsi, 3, 3)
    assert np.allclose(euler_to_matrix(*ang.T), R)
    # direction-major: the first n_inplane rotations share a viewing direction
    v = viewing_direction(R[:npsi])
    assert np.allclose(v, v[0])
    assert np.allclose(viewing_direction(R[::npsi]), sphere_grid(nd), atol=1e-12)
