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
