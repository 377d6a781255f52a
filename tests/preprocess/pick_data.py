"""Small simulated micrographs with known particle centres, shared by the picking/extraction tests
(fixtures imported by the test modules; not a conftest, so that the folder stays shared)."""

from functools import lru_cache

import numpy as np

PX = 2.0  # Å/px
DIAMETER_A = 100.0


def blob_volume(L: int = 64, seed: int = 0) -> np.ndarray:
    """A 64³ cluster of Gaussians, ≈100 Å across at 2 Å/px."""
    from cryoprism.forward.volumes import gaussian_blob_volume

    rng = np.random.default_rng(seed)
    c = rng.normal(size=(14, 3))
    c = c / np.linalg.norm(c, axis=1, keepdims=True) * rng.uniform(4, 17, (14, 1))
    return gaussian_blob_volume(L, c, 4.0)


@lru_cache(maxsize=None)
def volume() -> np.ndarray:
    return blob_volume()


@lru_cache(maxsize=None)
def simulated():
    """Two 768² micrographs at 2 Å/px, 20 particles requested each, SNR 0.05, defocus 1–3 µm."""
    from cryoprism.forward.micrographs import simulate_micrographs

    return simulate_micrographs(volume(), 2, 768, 20, PX, snr=0.05, rng=3, progress=False, n_workers=1)


def truth_xy(res, i: int) -> np.ndarray:
    t = res.coordinates[res.coordinates.rlnMicrographName == f"micrograph_{i + 1:04d}.mrc"]
    return t[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)


def aggregate(res, i: int, centre_xy, radius_px: float, n: int, seed: int = 4) -> np.ndarray:
    """A dense clump of ``n`` particles of :func:`volume` (random views, centres uniform in a disk of
    ``radius_px`` around ``centre_xy``) in micrograph ``i`` of ``res``: the projections summed, then that
    micrograph's CTF — the image to add to it (same scale as its particles)."""
    from cryoprism.ctf.model import ctf_2d
    from cryoprism.forward.projection import project
    from cryoprism.fourier.core import fft2c, ifft2c
    from cryoprism.geometry import uniform_rotations

    rng = np.random.default_rng(seed)
    M = res.micrographs.shape[-1]
    vol = volume()
    L = vol.shape[-1]
    field = np.zeros((M, M))
    r = radius_px * np.sqrt(rng.uniform(0, 1, n))
    a = rng.uniform(0, 2 * np.pi, n)
    xs = np.rint(centre_xy[0] + r * np.cos(a)).astype(int) - L // 2
    ys = np.rint(centre_xy[1] + r * np.sin(a)).astype(int) - L // 2
    for x, y, im in zip(xs, ys, project(vol, uniform_rotations(n, rng))):
        field[y:y + L, x:x + L] += im
    return ifft2c(fft2c(field) * ctf_2d(M, PX, res.ctf.take(i), np.float64)).real
