"""Point groups, symmetrisation and the refinement's masks."""

import numpy as np
import pytest

from cryoprism.forward.volumes import gaussian_blob_volume
from cryoprism.refine import symmetrize, symmetry_group
from cryoprism.refine.masks import auto_solvent_mask
from cryoprism.refine.pipeline import match_reference


@pytest.mark.parametrize("name,order", [("C1", 1), ("C4", 4), ("D2", 4), ("d3", 6)])
def test_groups_are_closed(name, order):
    G = symmetry_group(name)
    assert len(G) == order
    prod = (G[:, None] @ G[None]).reshape(-1, 9)
    flat = G.reshape(-1, 9)
    d = np.abs(prod[:, None] - flat[None]).max(-1)
    assert np.all(d.min(1) < 1e-9)


def test_bad_symmetry_name():
    with pytest.raises(ValueError):
        symmetry_group("I3")


def test_symmetrize_makes_a_c4_map_invariant():
    L = 24
    v = gaussian_blob_volume(L, [(5, 0, 2), (0, 3, -3)], [2.0, 2.0])
    s = symmetrize(v, symmetry_group("C4"))
    r = np.roll(np.rot90(s, 1, axes=(1, 2)), 1, axis=1)  # 90° about the voxel L//2 on the [z, y, x] grid
    assert np.abs(r - s).max() < 0.02 * s.max()
    assert np.abs(s - v).max() > 0.2 * v.max()  # the input was not symmetric


def test_solvent_mask_covers_the_density_and_not_the_box():
    L = 32
    v = gaussian_blob_volume(L, [(0, 0, 0), (6, 0, 0)], [2.5, 2.5])
    m = auto_solvent_mask(v, 4.0)
    assert m is not None and m.shape == v.shape
    assert m[L // 2, L // 2, L // 2] == 1.0 and m[L // 2, L // 2, L // 2 + 6] == 1.0
    assert m[0, 0, 0] == 0.0 and 0.01 < m.mean() < 0.5
    assert auto_solvent_mask(np.zeros((L,) * 3), 4.0) is None


def test_match_reference_resamples_or_refuses():
    from cryoprism.errors import InputError

    v = gaussian_blob_volume(32, [(0, 0, 0)], [3.0]).astype(np.float32)
    same = match_reference(v, 2.0, 32, 2.0)
    np.testing.assert_array_equal(same, v)
    half = match_reference(v, 2.0, 32, 4.0)  # coarser particles: 16 voxels of 4 Å, padded to 32
    assert half.shape == (32, 32, 32)
    assert np.sum(half) == pytest.approx(np.sum(v) / 8, rel=0.02)  # same density integral per Å³
    with pytest.raises(InputError):
        match_reference(v[:10, :10, :10], 2.0, 32, 2.0)


def test_match_reference_warns_at_every_change_and_resamples_to_the_analytic_map():
    v = gaussian_blob_volume(32, [(0, 0, 0)], [3.0]).astype(np.float32)  # σ = 6 Å at 2 Å/px
    said = []
    half = match_reference(v, 2.0, 32, 4.0, warn=said.append)
    truth = gaussian_blob_volume(32, [(0, 0, 0)], [1.5])  # the same map sampled at 4 Å/px
    assert np.abs(half - truth).max() < 0.05 * truth.max()
    assert len(said) == 2 and "resampled" in said[0] and "padded" in said[1]
    said.clear()
    big = match_reference(gaussian_blob_volume(40, [(0, 0, 0)], [3.0]), 2.0, 32, 2.0, warn=said.append)
    np.testing.assert_allclose(big, v, atol=1e-6)  # centre-cropped: the centre voxel stays at L//2
    assert len(said) == 1 and "cropped" in said[0]
    said.clear()
    np.testing.assert_array_equal(match_reference(v, None, 32, 2.0, warn=said.append), v)
    assert len(said) == 1 and "unknown" in said[0]
    said.clear()
    match_reference(v, 2.0, 32, 2.0, warn=said.append)
    assert said == []  # nothing to say when nothing changes
