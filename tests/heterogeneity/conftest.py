"""Synthetic two-state particles from Gaussian-blob volumes (labels known to the tests)."""

import numpy as np
import pytest

from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.forward import gaussian_blob_volume, project
from cryoprism.geometry import uniform_rotations
from cryoprism.io import ParticleStack


def as_particles(imgs, rot, org, p, px):
    """Simulated arrays (origins in pixels) as a ParticleSource."""
    return ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot,
                                     origins_A=None if org is None else np.asarray(org) * px, ctf=p)


def blob_states(L: int) -> np.ndarray:
    base = gaussian_blob_volume(L, [(0, 0, 0), (3, 1, -2), (-3, -2, 1)], [2.0, 1.5, 1.5], dtype=np.float64)
    extra = gaussian_blob_volume(L, [(2, -3, 2)], [1.5], dtype=np.float64)
    return np.stack([base, base + extra])


def simulate(vols, n, snr_het, seed=0, px=4.0, origins_std_px=0.0):
    """Images, rotations, origins (px), CTFParams, labels, noise variance; SNR_het as in the seed."""
    rng = np.random.default_rng(seed)
    C, L = vols.shape[0], vols.shape[-1]
    lab = rng.integers(0, C, n)
    rot = uniform_rotations(n, rng)
    dfs = np.linspace(1.5e4, 2.5e4, 7)[rng.integers(0, 7, n)]
    p = CTFParams(dfs, dfs, 0.0, 300.0, 2.7, 0.1)
    c = ctf_2d(L, px, p)
    org = rng.normal(0, origins_std_px, (n, 2)) if origins_std_px else None
    clean = np.empty((n, L, L))
    for k in range(C):
        idx = np.flatnonzero(lab == k)
        clean[idx] = project(vols[k], rot[idx], None if org is None else org[idx], c[idx])
    mu = project(vols.mean(0), rot, org, c)
    sigma2 = np.mean(np.sum((clean - mu) ** 2, axis=(1, 2))) / (snr_het * L * L)
    imgs = clean + rng.standard_normal(clean.shape) * np.sqrt(sigma2)
    return imgs.astype(np.float32), rot, org, p, lab, sigma2, px


@pytest.fixture(scope="session")
def two_state_16():
    vols = blob_states(16)
    return (vols,) + simulate(vols, 2000, 0.05, seed=3)


def simulate_star_cli(tmp_path, vols, n: int):
    """Write ``vols`` as MRC maps (4 Å/px) and simulate ``n`` particles from them with ``cryoprism
    simulate`` (SNR 0.5, defocus 1.5–2.5 µm, seed 2); returns the STAR path."""
    from cryoprism.cli.main import main
    from cryoprism.io import write_mrc

    paths = []
    for k, v in enumerate(vols):
        paths.append(tmp_path / f"state{k}.mrc")
        write_mrc(paths[-1], np.asarray(v, np.float32), 4.0)
    star = tmp_path / "sim" / "particles.star"
    assert main(["simulate", *map(str, paths), "-o", str(star), "-n", str(n), "--snr", "0.5",
                 "--defocus-min", "15000", "--defocus-max", "25000", "--seed", "2"]) == 0
    return star
