"""simulate_particles returns its particles as the one particle source, in memory or as written."""

import numpy as np

from cryoprism.forward import gaussian_blob_volume, simulate_particles


def test_simulation_particles_match_the_result_in_memory_and_on_disk(tmp_path):
    vol = gaussian_blob_volume(16, [(2.0, 0.0, -1.0)], [2.0], [1.0])
    mem = simulate_particles(vol, 12, 2.0, snr=1.0, shift_std_A=2.0, rng=3, progress=False)
    p = mem.particles
    assert (p.n, p.box, p.pixel_size_A) == (12, 16, 2.0)
    np.testing.assert_array_equal(p.images(), mem.images)
    np.testing.assert_array_equal(p.rotations(), mem.rotations)
    np.testing.assert_array_equal(p.origins_A(), mem.origins_A)
    np.testing.assert_array_equal(p.ctf_params().defocus_u_A, mem.ctf.defocus_u_A)
    np.testing.assert_array_equal(p.class_numbers(), mem.states + 1)
    disk = simulate_particles(vol, 12, 2.0, snr=1.0, shift_std_A=2.0, rng=3, progress=False,
                              out_star=tmp_path / "p.star", out_mrcs=tmp_path / "p.mrcs")
    d = disk.particles
    np.testing.assert_array_equal(d.images(), mem.images)          # same stream, same seed
    np.testing.assert_allclose(d.rotations(), mem.rotations, atol=1e-9)
    assert list(d.table["rlnRandomSubset"]) == list(p.table["rlnRandomSubset"])
    assert simulate_particles(vol, 3, 2.0, snr=None, ctf=False, rng=1, progress=False).particles.has_ctf is False
