"""3-D classification separates two conformations (ADK open / closed) and refines poses per class."""

from importlib.resources import files

import numpy as np
import pytest

from cryoprism.forward import simulate_particles
from cryoprism.forward.volumes import volume_from_pdb
from cryoprism.geometry import angular_distance_deg
from cryoprism.geometry.rotations import rotvec_to_matrix
from cryoprism.heterogeneity.classify import matched_accuracy
from cryoprism.io import ParticleStack, read_particles
from cryoprism.refine.classify import background_noise_variance, classify3d, refine_poses

L, PX = 24, 3.5


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    d = tmp_path_factory.mktemp("classify")
    vols = [volume_from_pdb(files("cryoprism.data") / f"adk_{s}.pdb.gz", L, PX, 8.0) for s in ("open", "closed")]
    sim = simulate_particles(vols, 240, PX, snr=0.5, shift_std_A=PX, rng=5, out_star=d / "p.star",
                             out_mrcs=d / "p.mrcs", progress=False)
    return read_particles(d / "p.star"), sim


def test_two_states_are_separated_at_known_poses(two_states):
    ps, sim = two_states
    res = classify3d(ps, 2, sim.rotations, sim.origins_A, pose_rounds=1, resolution_A=8.0, iterations=6,
                     grid_size=1000, progress=False)
    assert matched_accuracy(sim.states, res.labels) > 0.9
    assert len(res.volumes) == 2 and res.volumes[0].shape == (L, L, L)
    assert np.all((res.probability >= 0.5) & (res.probability <= 1.0))
    assert np.allclose(res.responsibilities.sum(1), 1.0)
    # the per-class local search keeps the true poses within its precision (~3° at SNR 0.5, 24²)
    assert np.median(angular_distance_deg(sim.rotations, res.rotations)) < 4.5
    assert np.median(np.hypot(*((res.origins_A - sim.origins_A) / PX).T)) < 0.5
    assert [h["round"] for h in res.iterations] == [0, 0, 1]


def test_class_maps_from_a_smaller_working_box_are_returned_at_the_full_box(two_states):
    # the class E/M step may work on Fourier-cropped images (its box chosen from the data); the pose
    # search and the returned class maps need the full box
    ps, sim = two_states
    res = classify3d(ps, 2, sim.rotations, sim.origins_A, pose_rounds=1, resolution_A=8.0, iterations=4,
                     box=16, grid_size=500, progress=False)
    assert all(v.shape == (L, L, L) for v in res.volumes)
    assert matched_accuracy(sim.states, res.labels) > 0.9


def test_local_pose_search_against_class_maps_reduces_pose_errors(two_states):
    ps, sim = two_states
    vols = [volume_from_pdb(files("cryoprism.data") / f"adk_{s}.pdb.gz", L, PX, 8.0) for s in ("open", "closed")]
    rng = np.random.default_rng(0)
    axis = rng.normal(size=(ps.n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    wrong = sim.rotations @ rotvec_to_matrix(np.deg2rad(6.0) * axis)  # every pose 6° off
    err0 = np.median(angular_distance_deg(sim.rotations, wrong))
    rot, org, _, _ = refine_poses(ps, vols, np.asarray(sim.states), wrong, sim.origins_A / PX, 8.0)
    err1 = np.median(angular_distance_deg(sim.rotations, rot))
    assert err0 == pytest.approx(6.0, abs=0.01)
    assert err1 < 0.6 * err0  # precision from the true poses: ~2.9°
    assert np.median(np.hypot(*(org - sim.origins_A / PX).T)) < 0.5


def test_background_noise_variance_of_white_noise():
    rng = np.random.default_rng(1)
    ps = ParticleStack.from_arrays(rng.normal(0.0, 2.0, (200, 32, 32)).astype(np.float32) + 5.0, pixel_size_A=1.0)
    # 200 images × ~200 background pixels: relative standard error ≈ sqrt(2 / 40 000) = 0.7 %
    assert background_noise_variance(ps) == pytest.approx(4.0, rel=0.03)
