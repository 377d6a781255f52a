"""Micrograph simulation: separation, true coordinates, CTF applied to the field."""

import numpy as np
import pytest

from cryoprism.forward import gaussian_blob_volume, place_particles, simulate_micrographs
from cryoprism.io import read_mrc, read_star
from cryoprism.io.job import Job


@pytest.mark.parametrize("sep,L", [("well-separated", 16), ("non-overlapping", 16)])
def test_separation_respected(tmp_path, sep, L):
    vol = gaussian_blob_volume(L, [(0.0, 0.0, 0.0)], [2.0])
    r = simulate_micrographs(vol, 2, 256, 30, 2.0, separation=sep, snr=None, ctf=False, rng=0,
                             keep_clean=True, progress=False, job=Job(tmp_path, "test", log_to_file=False))
    d = 2 * L if sep == "well-separated" else L
    for name, g in r.coordinates.groupby("rlnMicrographName"):
        xy = g[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        cheb = np.abs(xy[:, None] - xy[None]).max(-1)
        np.fill_diagonal(cheb, np.inf)
        assert cheb.min() >= d
        assert ((xy >= L // 2) & (xy <= 256 - (L - L // 2))).all()
    # without CTF and noise the field peaks (blob at the centre) sit on the true coordinates
    mic = r.clean[0]
    g0 = r.coordinates[r.coordinates.rlnMicrographName == "micrograph_0001.mrc"]
    for x, y in g0[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy().astype(int):
        win = mic[y - 2:y + 3, x - 2:x + 3]
        assert np.unravel_index(np.argmax(win), win.shape) == (2, 2)
    # files: one MRC per micrograph and a STAR with the same coordinates
    arr, px = read_mrc(tmp_path / "micrograph_0001.mrc")
    np.testing.assert_allclose(arr, r.micrographs[0])
    assert abs(px - 2.0) < 1e-6
    st = read_star(tmp_path / "coordinates.star")
    np.testing.assert_allclose(st.particles["rlnCoordinateX"].to_numpy(float),
                               r.coordinates["rlnCoordinateX"].to_numpy(float))


def test_place_particles_euclidean(rng):
    pts = place_particles(200, 10, 25, 22.0, rng)
    d = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert len(pts) == 25 and d.min() >= 22.0


def test_micrograph_ctf_and_snr():
    L = 16
    vol = gaussian_blob_volume(L, [(0.0, 0.0, 0.0)], [1.5])
    r = simulate_micrographs(vol, 1, 192, 8, 1.5, snr=0.5, rng=2, keep_clean=True, progress=False)
    clean, noisy = r.clean[0].astype(np.float64), r.micrographs[0].astype(np.float64)
    k = (r.coordinates.rlnMicrographName == "micrograph_0001.mrc").sum()
    snr = np.sum(clean**2) / (k * L * L * np.var(noisy - clean))
    assert abs(snr - 0.5) < 0.05
    # CTF: the clean field's spectrum vanishes near a CTF zero ring of this micrograph's defocus
    from cryoprism.ctf.model import ctf_2d

    c = ctf_2d(192, 1.5, r.ctf.take(np.array([0])), dtype=np.float64)[0]
    F = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(clean))))
    small = np.abs(c) < 0.02
    assert F[small].mean() < 0.1 * F[np.abs(c) > 0.5].mean()
