"""Checkpoint and resume of the least-squares mean (CG): an interrupted run, resumed, equals an
uninterrupted one; checkpoints from other inputs are refused; no partial outputs."""

import numpy as np
import pytest

import cryoprism.reconstruct.mean as mean_mod
from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.errors import InputError
from cryoprism.forward import gaussian_blob_volume, project
from cryoprism.geometry import uniform_rotations
from cryoprism.io import ParticleStack
from cryoprism.io.checkpoint import Checkpoints, load_npz
from cryoprism.reconstruct import CGState, conjugate_gradient, reconstruct_mean
from cryoprism.reconstruct.mean import CGCheckpoint


def _src(imgs, A, org, p, px):
    """The particles as a ParticleSource (origins given in pixels)."""
    return ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=A,
                                     origins_A=None if org is None else np.asarray(org) * px, ctf=p)



@pytest.fixture(scope="module")
def particles():
    rng = np.random.default_rng(5)
    L, n, px = 14, 150, 3.0
    vol = gaussian_blob_volume(L, [(2.0, 1.0, -2.0), (-2.0, 2.0, 1.0)], [1.5, 2.0], [1.0, 0.6])
    A = uniform_rotations(n, rng)
    org = rng.normal(0, 1.0, (n, 2))
    p = CTFParams(rng.uniform(8e3, 2e4, n), rng.uniform(8e3, 2e4, n), rng.uniform(0, 180, n))
    imgs = project(vol, A, org, ctf_2d(L, px, p))
    imgs = (imgs + rng.normal(0, 0.05 * imgs.std(), imgs.shape)).astype(np.float32)
    return imgs, A, org, p, px


class _Interrupt:
    """Wraps ``apply_kernel``: counts calls, raises KeyboardInterrupt on call number ``at`` (a
    deterministic Ctrl-C)."""

    def __init__(self, monkeypatch, at=None):
        self.calls, self.at = 0, at
        real = mean_mod.apply_kernel

        def wrapped(*a, **k):
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
            return real(*a, **k)

        monkeypatch.setattr(mean_mod, "apply_kernel", wrapped)


class _MemoryCheckpoint:
    """A CG checkpoint kept in memory (copies), to test conjugate_gradient's resume on its own."""

    def __init__(self, state=None):
        self.state, self.saved = state, {}

    def __call__(self, st, final=False):
        self.saved[st.iteration] = CGState(st.x.copy(), st.r.copy(), st.p.copy(), st.rz, st.iteration,
                                           list(st.residuals))


@pytest.mark.parametrize("precond", [False, True])
def test_cg_continued_from_any_iteration_equals_uninterrupted(precond):
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    M = (Q * np.linspace(1.0, 4.0, 40)) @ Q.T  # well conditioned: 12 iterations converge
    b = rng.standard_normal(40)
    d = np.diag(M).copy()
    pre = (lambda r: r / d) if precond else None
    ref, info_ref = conjugate_gradient(lambda v: M @ v, b, tol=0.0, maxiter=12, precond=pre)
    ck = _MemoryCheckpoint()
    conjugate_gradient(lambda v: M @ v, b, tol=0.0, maxiter=5, precond=pre, checkpoint=ck)
    assert sorted(ck.saved) == [1, 2, 3, 4, 5]
    x, info = conjugate_gradient(lambda v: M @ v, b, tol=0.0, maxiter=12, precond=pre,
                                 checkpoint=_MemoryCheckpoint(ck.saved[5]))
    assert info.iterations == 12
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(info.residuals, info_ref.residuals, rtol=1e-12)
    # and against the exact solution of the system (independent ground truth of the solve itself)
    assert np.linalg.norm(x - np.linalg.solve(M, b)) < 1e-2 * np.linalg.norm(np.linalg.solve(M, b))


def _job(folder, every_s=None, resume=False):
    from cryoprism.io.job import Job

    return Job(folder, "test", resume=resume, every_s=every_s, log_to_file=False)


def test_resume_to_6_equals_uninterrupted_6(particles, tmp_path, monkeypatch):
    imgs, A, org, p, px = particles
    kw = dict(regularization=0.0, tol=0.0, mask_radius_px=None, progress=False)  # CG mechanics: no pilots
    ref = reconstruct_mean(_src(imgs, A, org, p, px), maxiter=6, **kw)
    assert ref.iterations == 6
    ck = tmp_path / "ck"
    r3 = reconstruct_mean(_src(imgs, A, org, p, px), maxiter=3, job=_job(ck, every_s=0), **kw)
    assert r3.iterations == 3
    a, meta = load_npz(ck / "checkpoints" / "full.ckpt.npz")
    assert meta["iteration"] == 3 and set(a) == {"x", "r", "p"}
    assert (ck / "checkpoints" / "normal_equations.ckpt.npz").exists()
    count = _Interrupt(monkeypatch)
    r6 = reconstruct_mean(_src(imgs, A, org, p, px), maxiter=6, job=_job(ck, resume=True), **kw)
    assert r6.iterations == 6 and count.calls == 3  # only iterations 4..6 were run
    np.testing.assert_allclose(r6.volume, ref.volume, rtol=0, atol=1e-10 * np.abs(ref.volume).max())
    assert abs(r6.residual - ref.residual) <= 1e-10 * ref.residual


def test_keyboard_interrupt_leaves_last_complete_checkpoint(particles, tmp_path, monkeypatch):
    imgs, A, org, p, px = particles
    kw = dict(regularization=0.0, tol=0.0, maxiter=6, mask_radius_px=None, progress=False)
    ref = reconstruct_mean(_src(imgs, A, org, p, px), **kw)
    ck = tmp_path / "ck"
    # from x0 = 0 the k-th kernel application is CG iteration k: interrupt inside iteration 4
    _Interrupt(monkeypatch, at=4)
    with pytest.raises(KeyboardInterrupt):
        reconstruct_mean(_src(imgs, A, org, p, px), job=_job(ck, every_s=0), **kw)
    monkeypatch.undo()
    _, meta = load_npz(ck / "checkpoints" / "full.ckpt.npz")
    assert meta["iteration"] == 3
    assert not [f for f in (ck / "checkpoints").iterdir() if ".part" in f.name]  # no half-written checkpoint left
    count = _Interrupt(monkeypatch)
    res = reconstruct_mean(_src(imgs, A, org, p, px), job=_job(ck, resume=True), **kw)
    assert count.calls == 3
    np.testing.assert_allclose(res.volume, ref.volume, rtol=0, atol=1e-10 * np.abs(ref.volume).max())


def test_auto_with_halfmaps_resumes_exactly(particles, tmp_path, monkeypatch):
    imgs, A, org, p, px = particles
    kw = dict(regularization="auto", halfmaps=True, tol=0.0, maxiter=5, auto_iterations=4, progress=False)
    ref = reconstruct_mean(_src(imgs, A, org, p, px), **kw)
    ck = tmp_path / "ck"
    # pilots: 2 × (4 iterations + 1 residual), half 1: 1 + 5; half 2: 1 + 1 done, stop in its 2nd
    _Interrupt(monkeypatch, at=19)
    with pytest.raises(KeyboardInterrupt):
        reconstruct_mean(_src(imgs, A, org, p, px), job=_job(ck, every_s=0), **kw)
    monkeypatch.undo()
    assert (ck / "checkpoints" / "half2.ckpt.npz").exists()
    assert not (ck / "checkpoints" / "full.ckpt.npz").exists()
    count = _Interrupt(monkeypatch)
    res = reconstruct_mean(_src(imgs, A, org, p, px), job=_job(ck, resume=True), **kw)
    assert count.calls == 12  # pilot residuals 2, half 2: iterations 2..5, full: 1 + 5
    for got, want in [(res.volume, ref.volume), *zip(res.half_maps, ref.half_maps)]:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())
    assert res.info["noise_var_per_pixel"] == pytest.approx(ref.info["noise_var_per_pixel"], rel=1e-12)


def test_checkpoint_from_other_inputs_is_refused(particles, tmp_path):
    imgs, A, org, p, px = particles
    kw = dict(regularization=0.0, tol=0.0, maxiter=2, mask_radius_px=None, progress=False)
    ck = tmp_path / "ck"
    reconstruct_mean(_src(imgs, A, org, p, px), job=_job(ck), **kw)
    A2 = A.copy()
    A2[7] = A2[7] @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    with pytest.raises(InputError, match="poses_ctf_digest"):
        reconstruct_mean(_src(imgs, A2, org, p, px), job=_job(ck, resume=True), **kw)
    with pytest.raises(InputError, match=r"n_images \(checkpoint 150, now 149\)"):
        reconstruct_mean(_src(imgs[:-1], A[:-1], org[:-1], p.take(np.arange(149)), px),
                         job=_job(ck, resume=True), **kw)
    with pytest.raises(InputError, match="regularization"):
        reconstruct_mean(_src(imgs, A, org, p, px), job=_job(ck, resume=True), **{**kw, "regularization": 1.0})
    with pytest.raises(InputError, match="no checkpoint"):
        reconstruct_mean(_src(imgs, A, org, p, px), job=_job(tmp_path / "empty", resume=True), **kw)


def test_checkpoints_throttle_and_fresh_start(tmp_path):
    ck = Checkpoints(tmp_path, {"a": 1}, every_s=3600)
    assert ck.due("x") is False  # the first call starts the clock
    assert Checkpoints(tmp_path, {"a": 1}, every_s=0).due("x") is True
    cg = CGCheckpoint(ck, "x")
    rng = np.random.default_rng(1)
    st = CGState(rng.random(4), rng.random(4), rng.random(4), 0.25, 3, [1.0, 0.5, 0.25, 0.125])
    cg(st, False)  # throttled: not written
    assert not ck.path("x").exists()
    cg(st, True)  # the end of a solve is always written
    back = CGCheckpoint(Checkpoints(tmp_path, {"a": 1}, resume=True), "x").state
    assert back.iteration == 3 and back.rz == 0.25 and back.residuals == st.residuals
    np.testing.assert_array_equal(back.p, st.p)
    (tmp_path / ".x.ckpt.npz.k3j2.part.npz").write_bytes(b"half")  # left by a killed writer
    (tmp_path / "notes.txt").write_text("kept")
    Checkpoints(tmp_path, {"a": 2})  # a fresh (non-resume) run clears old checkpoints
    assert [f.name for f in tmp_path.iterdir()] == ["notes.txt"]


def test_cli_interrupt_then_resume(particles, tmp_path, monkeypatch):
    from cryoprism.cli.main import main
    from cryoprism.io import read_mrc, write_mrc

    L = 14
    vol = gaussian_blob_volume(L, [(2.0, 1.0, -2.0), (-2.0, 2.0, 1.0)], [1.5, 2.0], [1.0, 0.6])
    write_mrc(tmp_path / "v.mrc", vol.astype(np.float32), 3.0)
    star = tmp_path / "sim" / "particles.star"
    assert main(["simulate", str(tmp_path / "v.mrc"), "-o", str(star), "-n", "120", "--snr", "2",
                 "--seed", "1"]) == 0
    args = ["reconstruct", str(star), "--regularization", "0", "--maxiter", "6", "--tol", "0",
            "--mask-radius", "none"]
    assert main(args + ["-o", str(tmp_path / "ref.mrc")]) == 0
    job = tmp_path / "job"
    out, ck = job / "volume.mrc", job / "checkpoints"
    _Interrupt(monkeypatch, at=4)
    assert main(args + ["-o", str(job)]) == 130
    monkeypatch.undo()
    assert not out.exists() and not [f for f in job.iterdir() if ".part" in f.name]
    assert (ck / "full.ckpt.npz").exists()
    assert main(args + ["-o", str(job), "--resume"]) == 0
    got, want = read_mrc(out)[0], read_mrc(tmp_path / "ref.mrc")[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    # --resume with other settings, or where no run left checkpoints: one-line error, exit 2
    assert main(args[:-2] + ["--tol", "1e-3", "-o", str(job), "--resume"]) == 2
    assert main(args + ["-o", str(tmp_path / "elsewhere"), "--resume"]) == 2
