"""Particle simulation: files, labels, SNR, noise colour, reproducibility."""

import numpy as np

from cryoprism.ctf.model import ctf_2d
from cryoprism.forward import gaussian_blob_volume, make_noise, noise_psd_grid, project, simulate_particles
from cryoprism.io import read_particles


def _two_states(L=24):
    return [gaussian_blob_volume(L, [(4.0, 0.0, 0.0)], [2.5]),
            gaussian_blob_volume(L, [(-3.0, 3.0, 1.0)], [2.0], [2.0])]


def test_simulate_writes_star_mrcs_with_labels(tmp_path):
    vols = _two_states()
    r = simulate_particles(vols, 300, 2.5, snr=None, shift_std_A=4.0, state_weights=[0.3, 0.7], rng=7,
                           out_star=tmp_path / "p.star", out_mrcs=tmp_path / "p.mrcs", batch_size=64,
                           progress=False)
    s = read_particles(tmp_path / "p.star")
    assert s.n == 300 and s.box == 24 and abs(s.pixel_size_A - 2.5) < 1e-9
    np.testing.assert_array_equal(s.class_numbers(), r.states + 1)
    assert set(np.unique(s.class_numbers())) == {1, 2}
    # each image is the projection of the state its label names (independent re-projection)
    imgs = s.images(np.arange(20))
    rot, org, ctf = s.rotations()[:20], s.origins_A()[:20] / 2.5, s.ctf_params().take(np.arange(20))
    cgrid = ctf_2d(24, 2.5, ctf)
    for j in range(20):
        k = s.class_numbers()[j] - 1
        ref = project(vols[k].astype(np.float64), rot[j:j + 1], org[j:j + 1], cgrid[j:j + 1])[0]
        other = project(vols[1 - k].astype(np.float64), rot[j:j + 1], org[j:j + 1], cgrid[j:j + 1])[0]
        assert np.abs(imgs[j] - ref).max() < 1e-4 * np.abs(ref).max()
        assert np.abs(imgs[j] - other).max() > 1e-2 * np.abs(ref).max()


def test_snr_definition_and_reproducibility():
    vols = _two_states()
    kw = dict(snr=0.2, rng=3, batch_size=50, progress=False, shift_std_A=2.0)
    noisy = simulate_particles(vols, 400, 2.0, **kw)
    clean = simulate_particles(vols, 400, 2.0, **{**kw, "snr": None})
    noise = noisy.images.astype(np.float64) - clean.images
    snr = np.mean(np.sum(clean.images.astype(np.float64) ** 2, axis=(1, 2))) / (24 * 24 * noise.var())
    assert abs(snr - 0.2) < 0.02
    again = simulate_particles(vols, 400, 2.0, n_workers=1, **kw)
    np.testing.assert_array_equal(again.images, noisy.images)


def test_coloured_noise_has_requested_psd(rng):
    L = 32
    psd = noise_psd_grid(L, 1.0, "pink")
    e = make_noise((400, L, L), 2.0, psd, rng, np.float64)
    assert abs(e.var() - 4.0) < 0.1
    F = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(e, axes=(1, 2))), axes=(1, 2))
    emp = np.mean(np.abs(F) ** 2, axis=0) / (L * L) / 4.0
    r = np.hypot(*np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij"))
    for k in (1, 4, 12):
        ring = (r >= k - 0.5) & (r < k + 0.5)
        assert abs(emp[ring].mean() / psd[ring].mean() - 1) < 0.1
