"""Continuous heterogeneity: coordinates of a one-parameter family, the density path, the written series."""

import numpy as np
import pytest

from cryoprism.forward import gaussian_blob_volume
from cryoprism.heterogeneity.continuous import (
    ContinuousResult,
    ContinuousSettings,
    Trajectory,
    deconvolved_coordinates,
    density_modes,
    density_path,
    kernel_density,
    latent_coordinates,
    write_continuous,
)

from .conftest import as_particles, simulate, simulate_star_cli


def moving_blob_family(L: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``m`` volumes: a fixed core and a blob sliding 8 pixels along x as t goes 0 → 1."""
    t = np.linspace(0.0, 1.0, m)
    core = gaussian_blob_volume(L, [(0, 0, 0), (-2, 3, 1)], [2.0, 1.5], dtype=np.float64)
    vols = [core + gaussian_blob_volume(L, [(-4 + 8 * s, -2, 0)], [1.5], dtype=np.float64) for s in t]
    return np.stack(vols), t


def test_coordinates_monotone_in_the_parameter():
    from scipy.stats import spearmanr

    from cryoprism.heterogeneity.pipeline import analyze

    vols, t = moving_blob_family(16, 9)
    imgs, rot, org, p, lab, _, px = simulate(vols, 1000, 0.2, seed=5)
    src = as_particles(imgs, rot, org, p, px)
    s = ContinuousSettings(n_points=4, n_directions=1, reconstruct=False, lowrank=True)
    res = analyze(src, 8, classes=2, reconstruct=False, refine=False, refine_full=False, n_boot=0,
                  progress=False, trajectory=s)
    c = res.continuous
    rho = spearmanr(c.coords[:, 0], t[lab]).statistic
    assert abs(rho) > 0.9, rho
    # the points of the first direction are ordered, and their particles' true parameter follows them
    pc1 = c.trajectories[0]
    means = np.array([t[lab[idx]].mean() for idx in pc1.neighbours])
    assert np.all(np.diff(means) * np.sign(rho) > 0), means
    # the low-rank volumes μ + U a at the first direction's ends resemble the family's matching ends
    first, last = (vols[0], vols[-1]) if rho > 0 else (vols[-1], vols[0])
    cc = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]  # noqa: E731
    assert cc(pc1.lowrank[0], first) > cc(pc1.lowrank[0], last)
    assert cc(pc1.lowrank[-1], last) > cc(pc1.lowrank[-1], first)


def subspace_system(a: np.ndarray, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(H_s, h_s)`` of particles with true coordinates ``a (n, d)``: ``H_s = B_s B_sᵀ`` (a random
    operator, its scale varying across particles as CTF and view do), ``h_s = H_s a_s + σ B_s ε_s``
    (the projected white noise, covariance ``σ² H_s``)."""
    rng = np.random.default_rng(seed)
    n, d = a.shape
    B = rng.normal(size=(n, d, d)) * rng.uniform(0.3, 1.5, (n, 1, 1))
    H = B @ np.transpose(B, (0, 2, 1))
    return H, np.einsum("sij,sj->si", H, a) + sigma * np.einsum("sij,sj->si", B, rng.normal(size=(n, d)))


@pytest.mark.parametrize("seed", [0, 3])
def test_deconvolved_coordinates_follow_a_curve(seed):
    # coordinates on an arc (a motion curved in volume space): the prior deconvolved from the data
    # concentrates on the arc and the posterior means order the particles along it better than Wiener's
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    theta = rng.uniform(0.0, np.pi, 2000)
    a = np.stack([np.cos(theta), np.sin(theta) - 2 / np.pi], -1)  # centred, as the coordinates are
    lam, s2 = a.var(0), 0.3 ** 2
    H, h = subspace_system(a, 0.3, seed + 10)
    alpha, post, (grid, prior) = deconvolved_coordinates(H, h, np.eye(2), lam, s2, grid=32, iterations=60)
    wiener, _ = latent_coordinates(H, h, np.eye(2), lam, s2)
    radius = np.hypot(grid[:, 0], grid[:, 1] + 2 / np.pi)
    assert prior[np.abs(radius - 1.0) < 0.25].sum() > 0.9  # the Gaussian start holds about half
    rho = -spearmanr(alpha[:, 0], theta).statistic
    rho_wiener = -spearmanr(wiener[:, 0], theta).statistic
    assert rho > rho_wiener + 0.01, (rho, rho_wiener)
    rmse = lambda x: np.sqrt(np.mean((x - a) ** 2))  # noqa: E731
    assert rmse(alpha) < 0.95 * rmse(wiener), (rmse(alpha), rmse(wiener))
    # the posterior covariances are those of a distribution: symmetric, positive
    np.testing.assert_allclose(post, np.transpose(post, (0, 2, 1)), atol=1e-12)
    assert np.all(np.linalg.eigvalsh(post) > -1e-12)


def test_deconvolved_coordinates_of_gaussian_ones_are_wiener():
    # Gaussian coordinates: the deconvolved prior stays near Gaussian, the posterior means near Wiener's
    # (up to the sampling error of a prior fitted to 2 000 particles)
    lam, s2 = np.array([1.0, 0.3]), 0.8 ** 2
    a = np.random.default_rng(1).normal(size=(2000, 2)) * np.sqrt(lam)
    H, h = subspace_system(a, 0.8, 2)
    alpha, post, _ = deconvolved_coordinates(H, h, np.eye(2), lam, s2, grid=32, iterations=60)
    wiener, post_w = latent_coordinates(H, h, np.eye(2), lam, s2)
    for k in range(2):
        assert np.corrcoef(alpha[:, k], wiener[:, k])[0, 1] > 0.97
    assert np.all(np.sqrt(np.mean((alpha - wiener) ** 2, 0)) < 0.15 * np.sqrt(lam))
    np.testing.assert_allclose(post.mean(0), post_w.mean(0), rtol=0.1, atol=0.02)


def arc_points(n: int, seed: int = 0) -> np.ndarray:
    """Points on the upper unit half-circle, denser at its two ends (two modes), radial noise 0.05."""
    rng = np.random.default_rng(seed)
    theta = np.concatenate([rng.normal(0.25, 0.15, n // 3), rng.normal(np.pi - 0.25, 0.15, n // 3),
                            rng.uniform(0, np.pi, n - 2 * (n // 3))])
    r = 1.0 + rng.normal(0, 0.05, n)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], -1)


def test_path_between_modes_follows_the_ridge():
    x = arc_points(3000)
    dens = kernel_density(x)
    modes = density_modes(dens)
    # the two modes are the arc's dense ends
    np.testing.assert_allclose(np.abs(modes[:, 0]), np.cos(0.25), atol=0.2)
    path = density_path(x, dens, modes[0], modes[1], n_points=15)
    radius = np.linalg.norm(path, axis=1)
    assert np.all(np.abs(radius - 1.0) < 0.2), radius  # on the ridge, not across the empty centre
    assert path[:, 1].max() > 0.85  # over the top of the arc (the straight line stays at y ≈ 0.25)
    # all of it lies where the density is high: above a third of the density at the arc's middle
    ridge = dens(np.array([[0.0, 1.0]]))[0]
    assert np.all(dens(path) > ridge / 3)


def test_path_on_a_plateau_spans_it():
    # a uniform segment (a continuous motion): no valley, the ends are those of the dense region
    rng = np.random.default_rng(1)
    x = np.stack([rng.uniform(-1, 1, 3000), rng.normal(0, 0.1, 3000)], -1)
    dens = kernel_density(x)
    modes = density_modes(dens)
    assert modes[0, 0] < -0.7 and modes[1, 0] > 0.7, modes
    path = density_path(x, dens, modes[0], modes[1], n_points=5)
    np.testing.assert_allclose(np.diff(path[:, 0]), np.diff(path[:, 0]).mean(), atol=0.1)
    assert np.all(np.abs(path[:, 1]) < 0.1)


def test_series_and_gif_written(tmp_path):
    from PIL import Image

    from cryoprism.io import read_mrc
    from cryoprism.io.job import Job

    rng = np.random.default_rng(0)
    x = arc_points(600)
    dens = kernel_density(x)
    vols = [rng.standard_normal((8, 8, 8)).astype(np.float32) for _ in range(3)]
    pts = x[:3]
    nb = [np.arange(5)] * 3
    trajs = [Trajectory("pc1", pts, nb, dens(pts), vols), Trajectory("path", pts, nb, dens(pts), vols, vols)]
    res = ContinuousResult(x, np.zeros((600, 2, 2)), dens, x[:2], trajs, ContinuousSettings(n_points=3))
    with Job(tmp_path / "out", "test") as job:
        files = write_continuous(job, res, 2.0)
    out = tmp_path / "out" / "trajectory"
    for name in ["pc1_000.mrc", "pc1_002.mrc", "path_001.mrc", "path_lowrank_002.mrc", "points.csv",
                 "density.png", "path.gif"]:
        assert (out / name).exists(), name
        assert f"trajectory/{name}" in files
    v, px = read_mrc(out / "path_002.mrc")
    np.testing.assert_allclose(v, vols[2])
    assert px == pytest.approx(2.0)
    gif = Image.open(out / "path.gif")
    assert gif.n_frames == 4  # forth and back: 0 1 2 1


def test_cli_trajectory(tmp_path):
    import json

    from cryoprism.cli.main import main

    vols, _ = moving_blob_family(16, 3)
    star = simulate_star_cli(tmp_path, vols, 300)
    out = tmp_path / "het"
    assert main(["heterogeneity", str(star), "-o", str(out), "--nres", "8", "--classes", "2", "--no-reconstruct",
                 "--trajectory", "--trajectory-points", "3", "--json"]) == 0
    for name in ["pc1_000.mrc", "pc2_002.mrc", "path_002.mrc", "points.csv", "path_position.csv", "density.png",
                 "path.gif"]:
        assert (out / "trajectory" / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trajectory"]["series"] == ["pc1", "pc2", "path"]
