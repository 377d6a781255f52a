"""align_volumes recovers a known rotation, shift and hand of a real 50S map."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from cryoprism.fourier import downsample
from cryoprism.geometry import angular_distance_deg, axis_angle_to_matrix
from cryoprism.metrics import align_volumes, transform_volume

MAP = Path(__file__).parents[1] / "data" / "maps" / "50S_states" / "vol_018.mrc"


@pytest.fixture(scope="module")
def vol32():
    with mrcfile.open(MAP, permissive=True) as m:
        v = m.data.astype(np.float64)
    return downsample(v, 32, ndim=3)[0]


def _transform(vol, Q, t_xyz, flip):
    """out(p) = vol(H Qᵀ (p − t)) with scipy's affine_transform (independent of the code under test)."""
    L = vol.shape[0]
    c = np.full(3, L // 2, dtype=float)
    H = np.diag([1.0, 1.0, -1.0]) if flip else np.eye(3)
    P = np.eye(3)[::-1]  # (x, y, z) ↔ array order (z, y, x)
    mat = P @ (H @ Q.T) @ P
    off = c - mat @ (c + np.asarray(t_xyz)[::-1])
    return ndimage.affine_transform(vol, mat, offset=off, order=3, mode="constant")


def test_transform_volume_matches_scipy(vol32):
    Q = axis_angle_to_matrix([1.0, 2.0, -0.5], 40.0)
    t = np.array([1.0, -2.0, 0.5])
    for flip in (False, True):
        ours = transform_volume(vol32, Q, t, flip, order=3)
        ref = _transform(vol32, Q, t, flip)
        inner = (slice(4, -4),) * 3
        assert np.allclose(ours[inner], ref[inner], atol=1e-6 * np.abs(vol32).max())


@pytest.mark.parametrize("flip", [False, True])
def test_align_recovers_rotation_shift_and_hand(vol32, flip):
    Q = axis_angle_to_matrix([0.3, -0.5, 0.8], 73.0 if not flip else 131.0)
    t = np.array([2.5, -1.5, 1.0])
    target = _transform(vol32, Q, t, flip)
    r = align_volumes(target, vol32, n_coarse=1500)
    assert r.flipped == flip
    assert angular_distance_deg(r.rotation, Q) < 1.0
    assert np.allclose(r.shift_px, t, atol=0.2)
    assert r.correlation > 0.98
    # the aligned volume is the target
    assert np.corrcoef(r.aligned.ravel(), target.ravel())[0, 1] > 0.98


@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_align_noisy_and_different_state_full_size(flip):
    """Full 64³: a rotated, shifted, noised copy of vol_018 is brought back to within 1°; the same
    transform of a different conformational state (vol_287, pre-aligned to vol_018 in the data set)
    within 5° (a rigid fit of another conformation need not be exactly the identity: measured 3.0–3.3°)."""
    with mrcfile.open(MAP, permissive=True) as m:
        ref = m.data.astype(np.float64)
    with mrcfile.open(MAP.parent / "vol_287.mrc", permissive=True) as m:
        other = m.data.astype(np.float64)
    rng = np.random.default_rng(11 + flip)
    Q = axis_angle_to_matrix(rng.standard_normal(3), rng.uniform(20, 180))
    t = rng.uniform(-4, 4, 3)
    H = np.diag([1.0, 1.0, -1.0]) if flip else np.eye(3)
    # moved(p) = src(H Qᵀ (p − t)); moved(H Rᵀ (p − s)) = src(p) for all p needs
    # H Qᵀ H Rᵀ = I and s = −H Qᵀ t, i.e. R = H Qᵀ H
    R_expect, s_expect = H @ Q.T @ H, -H @ Q.T @ t
    for src, tol_deg, tol_px in ((ref, 1.0, 0.3), (other, 5.0, 0.6)):
        moved = _transform(src, Q, t, flip) + 0.5 * ref.std() * rng.standard_normal(ref.shape)
        r = align_volumes(ref, moved)
        assert r.flipped == flip
        assert angular_distance_deg(r.rotation, R_expect) < tol_deg
        assert np.allclose(r.shift_px, s_expect, atol=tol_px)
