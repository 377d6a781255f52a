"""Volumes from atomic models (molmap-style) and Gaussian blobs."""

import numpy as np

from cryoprism.forward import gaussian_blob_volume, read_atoms, volume_from_atoms, volume_from_pdb


def test_single_atom_gaussian_width_and_mass():
    L, px, res = 32, 1.0, 4.0
    v = volume_from_atoms([[10.0, -3.0, 7.0]], [6.0], L, px, res, center_A=(10.0, -3.0, 7.0),
                          dtype=np.float64)
    sigma = res / (np.pi * np.sqrt(2))
    assert abs(v.sum() - 6.0) < 1e-3  # integrates to Z
    # peak at the box centre, profile along x matches the normalised Gaussian
    assert np.unravel_index(np.argmax(v), v.shape) == (L // 2, L // 2, L // 2)
    x = np.arange(L) - L // 2
    ref = 6.0 / ((2 * np.pi) ** 1.5 * sigma**3) * np.exp(-(x**2) / (2 * sigma**2))
    np.testing.assert_allclose(v[L // 2, L // 2, :], ref, atol=1e-6)


def test_pdb_file_map(tmp_path, data_dir):
    pdb = tmp_path / "two.pdb"
    pdb.write_text(
        "ATOM      1  C   ALA A   1       0.000   0.000   0.000  1.00  0.00           C\n"
        "ATOM      2  O   ALA A   1       6.000   0.000   0.000  1.00  0.00           O\n"
        "END\n")
    xyz, z = read_atoms(pdb)
    assert z.tolist() == [6.0, 8.0]
    v = volume_from_pdb(pdb, 32, 1.0, 3.0, dtype=np.float64)
    assert abs(v.sum() - 14.0) < 1e-2
    # the Z-weighted centroid (x = 48/14 Å) is at the box centre: the O peak is nearer the centre
    prof = v[16, 16, :]
    assert np.argmax(prof) == 16 + round(6.0 - 48 / 14)
    # a real model: voxel sum equals the total atomic number of the atoms inside the box
    xyz, z = read_atoms(data_dir / "models" / "1aki_lysozyme.cif")
    vm = volume_from_pdb(data_dir / "models" / "1aki_lysozyme.cif", 64, 1.5, 4.0)
    assert abs(vm.sum() / z.sum() - 1) < 1e-3


def test_blob_volume_peak_and_amplitude():
    v = gaussian_blob_volume(20, [(2.0, -3.0, 1.0)], [1.5], [2.0], dtype=np.float64)
    assert np.unravel_index(np.argmax(v), v.shape) == (10 + 1, 10 - 3, 10 + 2)
    assert abs(v.max() - 2.0) < 1e-12
