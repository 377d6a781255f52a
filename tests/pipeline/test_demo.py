"""The demo calls the library (never the command-line parser) and writes each stage through a Job."""

import json

import numpy as np
import pytest

from cryoprism.pipeline.demo import DemoSettings, assembly_atoms, run_demo


def test_demo_stages_run_through_the_library(tmp_path, monkeypatch):
    import cryoprism.cli.main as cli

    def no_cli(*a, **k):
        raise AssertionError("the demo must not go through the CLI")

    monkeypatch.setattr(cli, "main", no_cli)
    s = DemoSettings(box=16, pixel_size_A=5.0, n_particles=300, snr=1.0)
    summary = run_demo(tmp_path, s, stages=["maps", "simulate", "reconstruct"])
    assert all(v["ok"] for v in summary["stages"].values()), summary
    for folder in ("maps", "particles", "reconstruct"):
        js = json.loads((tmp_path / folder / "summary.json").read_text())   # Job.finish
        assert js["command"].startswith("demo.")
    fig = summary["stages"]["reconstruct"]["figures"]
    assert (tmp_path / "reconstruct" / "mean_half1.mrc").exists()
    assert fig["resolution_fsc_0.143_A"] < 4 * s.pixel_size_A     # SNR 1, 300 particles: well resolved
    assert (tmp_path / "report" / "index.html").exists()


def test_micrograph_specimen_is_an_asymmetric_assembly_of_the_shipped_models():
    xyz, z = assembly_atoms()
    a, _ = assembly_atoms(assembly_atoms.__defaults__[0][:1])
    assert len(z) == 4 * len(a)
    extent = np.ptp(xyz, axis=0)
    assert np.all(extent > 70) and np.all(extent < 130)          # ≈ 90 Å across: 7–8 px at 12 Å/px
    c = xyz - xyz.mean(0)
    w = np.linalg.eigvalsh(c.T @ c / len(c))
    assert w[0] / w[-1] < 0.95                                    # not a sphere: orientations are defined


def test_movies_stage_scores_the_preprocess_chain_against_the_truth(tmp_path):
    s = DemoSettings(box=16, pixel_size_A=5.0, movie_count=1, movie_size=256, movie_frames=8,
                     movie_particles=20, movie_snr=0.5, movie_diameter_A=60.0)
    summary = run_demo(tmp_path, s, stages=["maps", "movies"])
    st = summary["stages"]["movies"]
    assert st["ok"], st["error"]
    f = st["figures"]
    assert f["displacement_error_rms_px"][0] < 0.5                  # a 10 px drift tracked to sub-pixel
    assert abs(f["defocus_error_percent"][0]) < 5
    assert f["pick_f1"] > 0.7 and f["particles_extracted"] > 0.5 * f["true_particles"]
    pre = tmp_path / "movies" / "preprocess"
    assert (pre / "particles.star").exists() and list((pre / "picks").glob("*.png"))
    html = (tmp_path / "report" / "index.html").read_text()
    assert "drift_tracks.png" in html and "ctf_fit.png" in html and "movie_001.png" in html


def _refine_setup(tmp_path, rounds=2):
    import shutil

    s = DemoSettings(box=16, pixel_size_A=5.0, n_particles=300, snr=1.0, refine_max_iterations=2,
                     refine_grid=300, heterogeneity_nres=8, refine_rounds=rounds)
    run_demo(tmp_path, s, stages=["maps", "simulate"])
    (tmp_path / "abinitio").mkdir()
    shutil.copy(tmp_path / "maps" / "state1_open.mrc", tmp_path / "abinitio" / "initial_model.mrc")
    return s


def test_refine_stage_refines_from_the_initial_model_and_scores_against_the_truth(tmp_path):
    s = _refine_setup(tmp_path)
    summary = run_demo(tmp_path, s, stages=["refine"])
    st = summary["stages"]["refine"]
    assert st["ok"], st["error"]
    f = st["figures"]
    from cryoprism.io import read_particles
    from cryoprism.pipeline.stages import pose_errors

    truth = read_particles(tmp_path / "particles" / "particles.star")
    open_rows = np.flatnonzero(truth.table["rlnClassNumber"].to_numpy() == 1)   # the state refined
    assert f["iterations"] == 2 and f["particles"] == len(open_rows) and f["state"] == 1
    assert set(f["median_angle_error_per_state_deg"]) == {1}
    assert [r["round"] for r in f["rounds"]] == [1, 2]
    assert f["rounds"][0]["start_resolution_A"] == pytest.approx(s.refine_initial_lowpass_A)
    assert isinstance(f["resolution_validated"], bool)
    for name in ("particles.star", "refined.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "iterations.csv"):
        assert (tmp_path / "refine" / name).exists()
    # the reported error is that of the poses written to OUT/refine/particles.star against the simulated
    # truth of the same rows (the metric itself is checked against known rotations in the next test)
    refined = read_particles(tmp_path / "refine" / "particles.star")
    assert refined.n == len(open_rows)
    e = pose_errors(truth.rotations(open_rows), refined.rotations())
    assert f["median_angle_error_deg"] == pytest.approx(e["median_angle_error_deg"], abs=0.05)
    assert f["rounds"][-1]["median_angle_error_deg"] == pytest.approx(e["median_angle_error_deg"], abs=0.05)
    html = (tmp_path / "report" / "index.html").read_text()
    assert "fsc_refine.png" in html and "median angular error" in html and "round 2" in html


def test_pose_errors_remove_the_global_rotation_and_hand():
    from cryoprism.abinitio.so3 import MIRROR
    from cryoprism.geometry import uniform_rotations
    from cryoprism.pipeline.stages import pose_errors

    R = uniform_rotations(200, np.random.default_rng(1))
    G = uniform_rotations(1, np.random.default_rng(2))[0]
    e = pose_errors(R, R @ G.T, np.repeat([1, 2], 100))          # the map rotated by G: no error
    assert e["median_angle_error_deg"] < 1e-3 and not e["mirrored"]
    e = pose_errors(R, MIRROR @ R @ MIRROR @ G.T)                  # mirrored map: no error either
    assert e["median_angle_error_deg"] < 1e-3 and e["mirrored"]


@pytest.mark.slow
def test_refine_then_heterogeneity_on_the_refined_poses(tmp_path):
    s = _refine_setup(tmp_path, rounds=1)
    summary = run_demo(tmp_path, s, stages=["refine", "heterogeneity_refined"])
    assert all(v["ok"] for v in summary["stages"].values()), summary
    h = summary["stages"]["heterogeneity_refined"]["figures"]
    assert 0.5 <= h["accuracy_vs_true_state"] <= 1.0
    assert "refined poses" in (tmp_path / "report" / "index.html").read_text()
