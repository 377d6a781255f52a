"""Checkpoint and resume of the covariance estimators and of ``cryoprism heterogeneity``: an
interrupted run, resumed, equals an uninterrupted one; no partial outputs; other inputs refused."""

import numpy as np
import pandas as pd
import pytest

import cryoprism.heterogeneity.covariance as cov_mod
from cryoprism.errors import InputError
from cryoprism.heterogeneity.covariance import (
    CovarianceKernel6,
    SubspaceSystem,
    covariance_full,
    covariance_lowrank,
    estimate_mean,
)
from cryoprism.heterogeneity.data import compute_residuals, prepare
from cryoprism.heterogeneity.pipeline import open_checkpoints
from cryoprism.io.checkpoint import load_npz

from .conftest import as_particles, blob_states, simulate, simulate_star_cli


@pytest.fixture(scope="module")
def small():
    vols = blob_states(12)
    imgs, rot, org, p, lab, sigma2, px = simulate(vols, 300, 0.5, seed=4)
    return as_particles(imgs, rot, org, p, px)


def _ck(tmp_path, resume, d, every_s=None, **settings):
    """The checkpoints of a job in tmp_path/job, stamped with the prepared data ``d``."""
    from cryoprism.io.job import Job

    job = Job(tmp_path / "job", "test", resume=resume, every_s=every_s, log_to_file=False)
    return open_checkpoints(job, d, **settings)


def _prepared(src, N, oversample=1.0):
    d = prepare(src, N, oversample=oversample, progress=False)
    A = estimate_mean(d, progress=False)
    compute_residuals(d, A.mean, progress=False)
    return d, A


def _interrupt(monkeypatch, obj, attr, at=None, method_factory=False):
    """Wrap ``obj.attr``: count calls and raise KeyboardInterrupt on call ``at`` (deterministic Ctrl-C).
    ``method_factory``: ``attr`` returns a function (``SubspaceSystem.operator``); wrap that one."""
    real = getattr(obj, attr)
    box = {"calls": 0}

    def counted(f):
        def g(*a, **k):
            box["calls"] += 1
            if box["calls"] == at:
                raise KeyboardInterrupt
            return f(*a, **k)
        return g

    if method_factory:
        monkeypatch.setattr(obj, attr, lambda *a, **k: counted(real(*a, **k)))
    else:
        monkeypatch.setattr(obj, attr, counted(real))
    return box


def test_dense_cg_interrupted_and_resumed_equals_uninterrupted(small, tmp_path, monkeypatch):
    d, _ = _prepared(small, 6)
    ref = covariance_full(d, maxiter=6, tol=0.0, progress=False)
    ck_dir = tmp_path / "job" / "checkpoints"
    box = _interrupt(monkeypatch, CovarianceKernel6, "apply", at=4)  # inside CG iteration 4
    with pytest.raises(KeyboardInterrupt):
        covariance_full(d, maxiter=6, tol=0.0, progress=False,
                        checkpoints=_ck(tmp_path, False, d, every_s=0))
    monkeypatch.undo()
    assert load_npz(ck_dir / "covariance_cg.ckpt.npz")[1]["iteration"] == 3
    assert (ck_dir / "kernel6.ckpt.npz").exists()
    # resuming neither rebuilds the 6-D kernel nor repeats iterations 1-3
    monkeypatch.setattr(cov_mod, "build_kernel6", lambda *a, **k: pytest.fail("kernel rebuilt"))
    box = _interrupt(monkeypatch, CovarianceKernel6, "apply")
    res = covariance_full(d, maxiter=6, tol=0.0, progress=False,
                          checkpoints=_ck(tmp_path, True, d, every_s=0))
    assert box["calls"] == 3 and res.iterations == 6
    S, S0 = res.info["sigma"], ref.info["sigma"]
    np.testing.assert_allclose(S, S0, rtol=0, atol=1e-10 * np.abs(S0).max())
    np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues, rtol=0, atol=1e-10 * ref.eigenvalues.max())


def test_lowrank_interrupted_twice_and_resumed_equals_uninterrupted(small, tmp_path, monkeypatch):
    d, A = _prepared(small, 6, oversample=1.5)
    kw = dict(block=3, steps=3, maxiter=6, seed=1, progress=False)
    ref = covariance_lowrank(d, A, **kw)
    ck_dir = tmp_path / "job" / "checkpoints"
    # 1. Ctrl-C in the second range-finder step (each step applies the data term once)
    _interrupt(monkeypatch, cov_mod, "apply_data_term", at=2)
    with pytest.raises(KeyboardInterrupt):
        covariance_lowrank(d, A, checkpoints=_ck(tmp_path, False, d, every_s=0), **kw)
    monkeypatch.undo()
    assert load_npz(ck_dir / "range_basis.ckpt.npz")[1]["steps_done"] == 1
    # 2. resume; Ctrl-C in PCG iteration 4
    box = _interrupt(monkeypatch, cov_mod, "apply_data_term")
    _interrupt(monkeypatch, SubspaceSystem, "operator", at=4, method_factory=True)
    with pytest.raises(KeyboardInterrupt):
        covariance_lowrank(d, A, checkpoints=_ck(tmp_path, True, d, every_s=0), **kw)
    monkeypatch.undo()
    assert box["calls"] == 2  # steps 2 and 3 only
    assert load_npz(ck_dir / "covariance_pcg.ckpt.npz")[1]["iteration"] == 3
    # 3. resume to the end: no pass over the particles left (statistics cached), 3 PCG iterations
    monkeypatch.setattr(cov_mod, "apply_data_term", lambda *a, **k: pytest.fail("range finder rerun"))
    monkeypatch.setattr("cryoprism.heterogeneity.data.subspace_statistics",
                        lambda *a, **k: pytest.fail("statistics recomputed"))
    box = _interrupt(monkeypatch, SubspaceSystem, "operator", method_factory=True)
    res = covariance_lowrank(d, A, checkpoints=_ck(tmp_path, True, d, every_s=0), **kw)
    assert box["calls"] == 3
    np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues, rtol=0,
                               atol=1e-10 * np.abs(ref.eigenvalues).max())
    np.testing.assert_allclose(res.eigenvolumes[:3], ref.eigenvolumes[:3], rtol=0, atol=1e-8)


def test_checkpoint_of_other_data_is_refused(small, tmp_path):
    d, _ = _prepared(small, 6)
    covariance_full(d, maxiter=2, progress=False, checkpoints=_ck(tmp_path, False, d))
    d2, _ = _prepared(small, 6)
    d2.images = d2.images.copy()
    d2.images[5] *= 1.01
    with pytest.raises(InputError, match="data_digest"):
        _ck(tmp_path, True, d2)
    with pytest.raises(InputError, match=r"cg_iterations \(checkpoint <absent>, now 4\)"):
        _ck(tmp_path, True, d, cg_iterations=4)


def _simulate_star(tmp_path, n=200):
    return simulate_star_cli(tmp_path, blob_states(12), n)


@pytest.mark.parametrize("method", ["cg", "lowrank"])
def test_cli_interrupt_leaves_no_outputs_and_resume_matches(tmp_path, monkeypatch, method):
    from cryoprism.cli.main import main
    from cryoprism.io import read_mrc

    star = _simulate_star(tmp_path)
    args = ["heterogeneity", str(star), "--nres", "6", "--method", method, "--classes", "2", "--iterations", "6"]
    ref = tmp_path / "ref"
    assert main(args + ["-o", str(ref)]) == 0
    out = tmp_path / "out"
    if method == "cg":
        _interrupt(monkeypatch, CovarianceKernel6, "apply", at=3)
    else:
        _interrupt(monkeypatch, SubspaceSystem, "operator", at=3, method_factory=True)
    assert main(args + ["-o", str(out)]) == 130
    monkeypatch.undo()
    outputs = sorted(f.name for f in out.iterdir())
    assert outputs == ["checkpoints", "job.log"], outputs  # no eigenvalues.csv, class maps or partial files
    cks = sorted(f.name for f in (out / "checkpoints").iterdir())
    assert "mean_cg.ckpt.npz" in cks and not [f for f in cks if ".part" in f]
    # a different setting is refused, naming it; then the same command with --resume finishes
    assert main(args[:-1] + ["7", "-o", str(out), "--resume"]) == 2
    assert main(args + ["-o", str(out), "--resume"]) == 0
    for f in ["eigenvalues.csv", "coords.csv"]:
        a, b = pd.read_csv(out / f), pd.read_csv(ref / f)
        pd.testing.assert_frame_equal(a, b, rtol=1e-8)
    for f in ["class_01.mrc", "class_02.mrc", "eigvol_01.mrc"]:
        np.testing.assert_allclose(read_mrc(out / f)[0], read_mrc(ref / f)[0], rtol=0, atol=1e-5)
