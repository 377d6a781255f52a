"""Fourier inversion, WBP, SIRT and the ParticleStack path against a known volume."""

import numpy as np
import pytest

from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.forward import gaussian_blob_volume, project, simulate_particles
from cryoprism.geometry import uniform_rotations
from cryoprism.io import ParticleStack, read_particles
from cryoprism.reconstruct import reconstruct


def _src(imgs, A, org, p, px):
    """The particles as a ParticleSource (origins given in pixels)."""
    return ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=A,
                                     origins_A=None if org is None else np.asarray(org) * px, ctf=p)



@pytest.fixture(scope="module")
def blob_data():
    rng = np.random.default_rng(5)
    L, n, px = 20, 500, 2.5
    vol = gaussian_blob_volume(L, [(2.0, 1.0, -2.0), (-2.0, -1.0, 2.0)], [2.0, 2.2], [1.0, 0.7])
    A = uniform_rotations(n, rng)
    org = rng.normal(0, 1.0, (n, 2))
    p = CTFParams(rng.uniform(8e3, 2e4, n), rng.uniform(8e3, 2e4, n), rng.uniform(0, 180, n))
    return vol, project(vol, A, org, ctf_2d(L, px, p)), A, org, p, px


@pytest.mark.parametrize("method,min_corr,scale_tol", [("fourier", 0.995, 0.06), ("wbp", 0.97, 0.4),
                                                        ("sirt", 0.999, 0.02), ("cg", 0.99999, 1e-3)])
def test_methods_recover_blob(blob_data, method, min_corr, scale_tol):
    vol, imgs, A, org, p, px = blob_data
    r = reconstruct(_src(imgs, A, org, p, px), method=method, maxiter=60, progress=False)
    corr = np.corrcoef(r.volume.ravel(), vol.ravel())[0, 1]
    scale = np.vdot(r.volume, vol) / np.vdot(vol, vol)
    assert corr > min_corr
    assert abs(scale - 1) < scale_tol


def test_reconstruct_from_star_with_halfmaps(tmp_path):
    L = 24
    vol = gaussian_blob_volume(L, [(3.0, 0.0, -2.0), (-3.0, 2.0, 2.0)], [2.0, 2.5], [1.0, 0.6])
    simulate_particles(vol, 600, 3.0, snr=None, shift_std_A=3.0, rng=11, out_star=tmp_path / "p.star",
                       out_mrcs=tmp_path / "p.mrcs", progress=False, batch_size=200)
    stack = read_particles(tmp_path / "p.star")
    r = reconstruct(stack, halfmaps=True, maxiter=80, tol=1e-6, progress=False)
    assert np.linalg.norm(r.volume - vol) / np.linalg.norm(vol) < 5e-3
    assert r.half_maps is not None and len(r.half_maps) == 2
    curve = np.asarray(r.fsc.curve)
    assert curve[: int(0.8 * len(curve))].min() > 0.99  # noiseless halves agree
