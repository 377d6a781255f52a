"""The demo calls the library (never the command-line parser) and writes each stage through a Job."""

import json

import numpy as np

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
