"""End to end: particles → mean, covariance, eigenvolumes, number of states, coordinates, classes,
per-class reconstructions at full resolution, and the output files of ``cryoprism heterogeneity``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from cryoprism.heterogeneity.classify import StateCount, coordinates, count_states, gmm_classes, subspace_em
from cryoprism.heterogeneity.covariance import (
    CovarianceResult,
    SubspaceSystem,
    cached_subspace_statistics,
    covariance_full,
    covariance_lowrank,
    estimate_mean,
)
from cryoprism.heterogeneity.data import HetData, compute_residuals, prepare
from cryoprism.heterogeneity.refine_classes import refine_classes
from cryoprism.heterogeneity.states import choose_by_bic, split_test
from cryoprism.io.particles import ParticleSource


@dataclass
class HeterogeneityResult:
    """Everything the analysis produces (volumes on the ``N_res`` grid unless stated)."""

    data: HetData
    mean: np.ndarray  # (N, N, N)
    covariance: CovarianceResult
    states: StateCount
    coords: np.ndarray  # (n, C−1) or (n, r) when C = 1
    labels: np.ndarray  # (n,) 0..C−1
    class_volumes: list = field(default_factory=list)  # full resolution (L³), one per class
    timings: dict = field(default_factory=dict)
    labels_gmm: np.ndarray | None = None  # Gaussian-mixture labels before the per-particle EM
    n_classes: int | None = None  # classes used (the test's choice, or the number asked for)
    refinement: object | None = None  # refine_classes.ClassRefinement (full-resolution 3-D classes)
    labels_subspace: np.ndarray | None = None  # labels of the covariance-space EM, before refinement
    state_test: object | None = None  # states.StateTest (the calibrated count; None with --classes C)
    continuous: object | None = None  # continuous.ContinuousResult (density, trajectories) when asked

    @property
    def n_states(self) -> int:
        return int(self.n_classes or self.states.n_states)


#: Automatic ``N_res`` (:func:`choose_nres`): images read for the spectral SNR, the smallest and the
#: largest ``N_res`` it may choose (the largest bounds the cost, which grows ~ N_res³ for ``lowrank``:
#: 31 s at 17, 91 s at 32 on the benchmark, docs/heterogeneity.md).
NRES_SAMPLE = 2000
NRES_MIN = 8
NRES_MAX = 32


def choose_nres(source, sample: int = NRES_SAMPLE, max_nres: int = NRES_MAX) -> tuple[int, dict]:
    """``N_res`` from the data: twice the highest frequency shell (pixels of the full box) at which
    the images still carry signal.

    On up to ``sample`` images (evenly spread over the set): the noise power spectrum from the
    background (:func:`cryoprism.image.whiten.noise_power_spectrum`, outside ``0.45 L``), the
    whitened images' spectral SNR per shell (:func:`cryoprism.classify2d.pipeline.whitened_ssnr`) and
    the last shell ``k`` whose 3-shell mean SSNR is ≥ 0.02 (the rule that sets the 2-D FB band limit,
    :func:`~cryoprism.classify2d.pipeline.ssnr_bandlimit`); ``N_res = 2k`` clipped to
    ``[NRES_MIN, min(L, max_nres)]``. Returns ``(N_res, {"ssnr_bandlimit_cpp", "n_res_unclipped"})``.
    """
    from cryoprism.classify2d.pipeline import ssnr_bandlimit, whitened_ssnr
    from cryoprism.image.whiten import noise_power_spectrum

    n, L = int(source.n), int(source.box)
    idx = np.unique(np.linspace(0, n - 1, min(n, int(sample))).astype(np.int64))
    sub = source.subset(idx)
    nps = noise_power_spectrum(sub, 0.45 * L)
    bl = ssnr_bandlimit(whitened_ssnr(sub, nps), L)
    N = int(2 * np.ceil(bl * L))
    return int(np.clip(N, NRES_MIN, min(L, max_nres))), {"ssnr_bandlimit_cpp": bl, "n_res_unclipped": N}


def resolve_nres(L: int, pixel_size_A: float, n_res: int | None, max_res_A: float | None,
                 source=None) -> int:
    """``N_res`` from ``--nres``, from a resolution limit (``N = ceil(2 L a / res)``, ≤ L), or from the
    data when neither is given and ``source`` is (:func:`choose_nres`); else 17."""
    if n_res is not None:
        return int(min(max(n_res, 4), L))
    if max_res_A is not None:
        return int(min(L, max(4, np.ceil(2 * L * pixel_size_A / max_res_A))))
    if source is not None:
        return choose_nres(source)[0]
    return int(min(L, 17))


def analyze(source: ParticleSource, n_res: int, *, method: str = "lowrank", classes: int | str = "auto",
            cg_iterations: int = 10,
            max_states: int = 8, block: int = 8, steps: int = 3, n_boot: int = 20, wiener: bool = True,
            reconstruct: bool = True, refine: bool = True, seed: int = 0, n_workers: int | None = None,
            progress: bool = True, max_full_bytes: float = 2e9,
            oversample: float | None = None, job=None, star=None,
            support_radius: float | None = 1.0, refine_full: bool = True,
            trajectory=None) -> HeterogeneityResult:
    """Run the heterogeneity analysis on the particles of ``source`` (``io.ParticleSource`` with poses).

    ``method``: ``lowrank`` (matrix-free subspace estimator, the default: it runs at any ``N_res`` and
    measured better gaps and accuracy than the dense path wherever both ran) or ``cg`` (the dense estimator
    of Andén, Katsevich & Singer 2015, with the 6-D Toeplitz kernel, ``N_res`` ≤ ~10 within
    ``max_full_bytes``). ``classes``: ``auto`` (the default; ``test`` is the same): the
    split-sample eigenvalue test, the null of each eigenvalue holding the states found before it, then
    the BIC of the state mixture (:mod:`cryoprism.heterogeneity.states`); ``gap`` (the spectral-gap
    rule, with ``n_boot`` bootstrap replicates of its agreement; always computed and reported as
    ``states``) or a number of states.
    ``reconstruct``: per-class volumes at full resolution (CG mean with the class's particles).
    ``oversample``: volume grid / band ratio (default 1.5 for ``lowrank``, 1 for ``cg`` whose memory grows
    as the sixth power of the grid). ``support_radius``: the covariance is estimated inside the ball of this
    radius, a fraction of half the box (1.0: the inscribed ball; None: the whole cube); the particle must
    lie inside it. ``refine_full``: refine the classes by maximum-likelihood 3-D classification at the full
    box (poses fixed, :mod:`cryoprism.heterogeneity.refine_classes`); its class volumes are the outputs.
    With ``classes="auto"`` the refinement then splits each class whose own particles hold a further
    significant eigenvalue (:func:`~cryoprism.heterogeneity.refine_classes.split_classes`).
    ``trajectory`` (:class:`cryoprism.heterogeneity.continuous.ContinuousSettings`): also the density of
    the coordinates and the volumes along the principal directions and a high-density path
    (:mod:`cryoprism.heterogeneity.continuous`; written to OUT/trajectory/).

    ``job`` (:class:`cryoprism.io.job.Job`): keep checkpoints in it (mean normal equations and CG, the
    dense 6-D kernel up to ~1 GB, range-finder blocks, Galerkin statistics, covariance CG state,
    finished class volumes; see :mod:`cryoprism.heterogeneity.covariance`; ``job.resume`` continues
    from them), stamped with a digest of the prepared data and the settings (others are refused,
    ``InputError``), and write the outputs through it (:func:`write_outputs`; ``star``: the input
    STAR file, whose rows and columns classes.star keeps).
    """
    t = {}
    t0 = time.perf_counter()
    c0 = time.process_time()
    if method not in ("cg", "lowrank"):
        raise ValueError(f"method must be cg or lowrank, got {method!r}")
    if oversample is None:
        oversample = 1.5 if method == "lowrank" else 1.0
    d = prepare(source, n_res, oversample=oversample, n_workers=n_workers, progress=progress)
    t["read_s"] = time.perf_counter() - t0
    ck = None
    if job is not None:
        ck = open_checkpoints(job, d, method=method, classes=classes,
                              cg_iterations=cg_iterations, max_states=max_states, block=block, steps=steps,
                              n_boot=n_boot, wiener=wiener, reconstruct=reconstruct, refine=refine, seed=seed,
                              oversample=oversample, support_radius=support_radius)
    t1 = time.perf_counter()
    A = estimate_mean(d, n_workers=n_workers, progress=progress, checkpoints=ck)
    compute_residuals(d, A.mean, n_workers=n_workers, progress=progress)
    t["mean_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    if method == "cg":
        cov = covariance_full(d, maxiter=cg_iterations, max_bytes=max_full_bytes, n_workers=n_workers,
                              progress=progress, checkpoints=ck, support_radius=support_radius)
        m = min(max_states + 4, cov.eigenvolumes.shape[0])
        basis = cov.eigenvolumes[:m]
        G, c = cached_subspace_statistics(d, basis, n_workers, progress, checkpoints=ck,
                                          name="eigen_subspace_statistics")
        system = SubspaceSystem(G, c, d.noise_var)
        Q = np.eye(m)
        lam = cov.eigenvalues
    elif method == "lowrank":
        cov = covariance_lowrank(d, A, block=block, steps=steps, maxiter=cg_iterations, seed=seed,
                                 n_workers=n_workers, progress=progress, checkpoints=ck,
                                 support_radius=support_radius)
        full_sys = cov.info["system"]
        m = min(max_states + 4, cov.eigenvalues.size)
        Q = cov.info["Q"][:, :m]
        system = SubspaceSystem(np.einsum("ai,sab,bj->sij", Q, full_sys.G, Q), full_sys.c @ Q, d.noise_var)
        Q = np.eye(m)
        lam = cov.eigenvalues
    else:
        raise AssertionError(method)
    t["covariance_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    states = count_states(lam, system, max_states=max_states, n_boot=n_boot, maxiter=cg_iterations,
                          seed=seed)
    test = None
    if classes in ("auto", "test", "gap"):  # the split-sample test is reported with either rule
        test = split_test(d, A, max_states=max_states, seed=seed, support_radius=support_radius,
                          n_workers=n_workers, progress=progress)
        choose_by_bic(test, system, Q, lam, d.noise_var, wiener=wiener, seed=seed)
    C = states.n_states if classes == "gap" else test.n_states if classes in ("auto", "test") else int(classes)
    r = max(C - 1, 1)
    alpha = coordinates(system.G, system.c, Q[:, :r], lam[:r], d.noise_var, wiener=wiener)
    labels, _ = gmm_classes(alpha, C, seed)
    labels_gmm = labels
    if C > 1 and refine:
        Qr = Q[:, :r]
        H = np.einsum("ai,sab,bj->sij", Qr, system.G, Qr)
        labels, _, _ = subspace_em(H, system.c @ Qr, d.noise_var, labels, C)
    t["classify_s"] = time.perf_counter() - t1
    res = HeterogeneityResult(d, A.mean, cov, states, alpha, labels, [], t, labels_gmm, C)
    res.state_test = test
    if C > 1 and refine_full:
        t1 = time.perf_counter()
        res.labels_subspace = labels
        res.refinement = refine_classes(source, labels, C, d.info["noise_var_L"], seed=seed,
                                        n_workers=n_workers, progress=progress,
                                        split=classes in ("auto", "test"), max_classes=max_states)
        res.labels = labels = res.refinement.labels
        res.n_classes = C = len(res.refinement.proportions)  # classes split by the refinement
        if res.refinement.box == source.box:
            res.class_volumes = list(res.refinement.volumes)
        t["refine_classes_s"] = time.perf_counter() - t1
    if reconstruct and not res.class_volumes:
        t1 = time.perf_counter()
        res.class_volumes = class_reconstructions(source, labels, C, n_workers=n_workers,
                                                  progress=progress, checkpoints=ck)
        t["reconstruct_s"] = time.perf_counter() - t1
    if trajectory is not None:
        from cryoprism.heterogeneity.continuous import continuous_analysis

        t1 = time.perf_counter()
        res.continuous = continuous_analysis(source, system, Q, lam, d.noise_var, trajectory, mean=A.mean,
                                             eigenvolumes=cov.eigenvolumes, band=d.band_size,
                                             noise_var_L=d.info["noise_var_L"], n_workers=n_workers,
                                             progress=progress)
        t["continuous_s"] = time.perf_counter() - t1
    t["total_s"] = time.perf_counter() - t0
    t["cpu_s"] = time.process_time() - c0
    if job is not None:
        write_outputs(job, res, star=star, pixel_size_A=float(source.pixel_size_A))
    return res


def data_fingerprint(d: HetData) -> dict:
    """Identity of the prepared data: counts, box, N_res, grid, pixel size, noise, digest of
    images/poses/CTF."""
    from cryoprism.io.checkpoint import digest

    return {"n_images": d.n, "box": d.L, "n_res": d.band_size, "grid": d.N, "pixel_size_A": float(d.pixel_size_A),
            "noise_var": float(d.noise_var), "data_digest": digest(d.images, d.rotations, d.origins_px, d.ctf)}


def open_checkpoints(job, d: HetData, **settings):
    """The checkpoints of ``job`` (:class:`cryoprism.io.job.Job`), its fingerprint extended with the
    prepared data (:func:`data_fingerprint`) and ``settings``."""
    job.add_inputs(**data_fingerprint(d), **settings)
    return job.checkpoints


def class_reconstructions(source: ParticleSource, labels: np.ndarray, n_classes: int, *, regularization: float = 1e-3,
                          maxiter: int = 30, n_workers: int | None = None, progress: bool = True,
                          checkpoints=None) -> list:
    """Least-squares volume of each class at the full box (reconstruct module's CG + Toeplitz kernel).

    ``checkpoints``: each finished class volume is kept (``class_NN``, with a digest of its members)."""
    from cryoprism.io.checkpoint import digest
    from cryoprism.reconstruct import accumulate_normal_equations, kernel_from_spatial, solve_mean

    out = []
    for k in range(n_classes):
        idx = np.flatnonzero(labels == k)
        if idx.size == 0:
            out.append(np.zeros((source.box,) * 3, np.float32))
            continue
        name, members = f"class_{k + 1:02d}", digest(idx, regularization, maxiter)
        got = checkpoints.load(name) if checkpoints is not None else None
        if got is not None and got[1].get("members") == members:
            out.append(got[0]["volume"])
            continue
        rhs, K = accumulate_normal_equations(source.subset(idx), None, n_workers=n_workers, progress=progress)
        ker = kernel_from_spatial(K[0])
        lam = regularization * float(np.abs(ker.kernel_hat).max())
        x, _ = solve_mean(ker, rhs[0], lam, 1e-5, maxiter, progress=progress)
        out.append(x.astype(np.float32))
        if checkpoints is not None:
            checkpoints.save(name, {"volume": out[-1]}, members=members)
    return out


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------

def eigenvolumes_full_box(res: HeterogeneityResult, r: int) -> np.ndarray:
    """The leading ``r`` eigenvolumes Fourier-padded from ``N_res`` to the full box (unit norm)."""
    from cryoprism.fourier.resample import downsample, upsample

    U = res.covariance.eigenvolumes[:r]
    L = res.data.L
    out = []
    band = res.data.band_size
    for u in U:
        if band < res.data.N:  # keep the measured band only
            u = downsample(u, band, ndim=3)[0]
        v = u if u.shape[-1] == L else upsample(u, L, ndim=3)[0]
        out.append((v / (np.linalg.norm(v) or 1.0)).astype(np.float32))
    return np.stack(out) if out else np.zeros((0, L, L, L), np.float32)


def write_outputs(job, res: HeterogeneityResult, *, star=None, pixel_size_A: float,
                  n_eigvols: int | None = None) -> dict:
    """Write eigenvalues.csv, coords.csv, classes.star (+ class_NN.star), class_NN.mrc, eigvol_NN.mrc,
    report.png through ``job`` (:class:`cryoprism.io.job.Job`) and record the figures in its summary.
    ``star``: the input StarFile (its rows and columns are kept)."""
    import pandas as pd

    from cryoprism.report.plots import heterogeneity_figure

    files = []
    lam = res.covariance.eigenvalues
    K = min(len(lam), 50)
    gaps = np.full(K, np.nan)
    g = res.states.gaps
    gaps[:min(len(g), K)] = g[:K]
    ev = pd.DataFrame({"index": np.arange(1, K + 1), "eigenvalue": lam[:K], "gap_ratio": gaps})
    job.write_csv("eigenvalues.csv", ev)
    files.append("eigenvalues.csv")
    co = pd.DataFrame(res.coords, columns=[f"alpha_{i + 1}" for i in range(res.coords.shape[1])])
    co.insert(0, "particle", np.arange(len(co)))
    co["class"] = res.labels + 1
    job.write_csv("coords.csv", co)
    files.append("coords.csv")
    if star is not None:
        table = star.particles.copy()
        table["rlnClassNumber"] = res.labels + 1
        s2 = _with_particles(star, table)
        job.write_star("classes.star", s2)
        files.append("classes.star")
        for k in range(res.n_states):
            sub = table[table["rlnClassNumber"] == k + 1].reset_index(drop=True)
            job.write_star(f"class_{k + 1:02d}.star", _with_particles(star, sub))
            files.append(f"class_{k + 1:02d}.star")
    for k, v in enumerate(res.class_volumes):
        job.write_mrc(f"class_{k + 1:02d}.mrc", v, pixel_size_A)
        files.append(f"class_{k + 1:02d}.mrc")
    r = n_eigvols if n_eigvols is not None else max(res.n_states - 1, 1)
    for k, v in enumerate(eigenvolumes_full_box(res, r)):
        job.write_mrc(f"eigvol_{k + 1:02d}.mrc", v, pixel_size_A)
        files.append(f"eigvol_{k + 1:02d}.mrc")
    if res.continuous is not None:
        from cryoprism.heterogeneity.continuous import write_continuous

        files += write_continuous(job, res.continuous, pixel_size_A)
    job.save_figure("report.png", heterogeneity_figure(res), dpi=90)
    files.append("report.png")
    job.record(files=files)
    return {"files": files}


def _with_particles(star, table):
    import copy

    s2 = copy.copy(star)
    s2.particles = table
    return s2
