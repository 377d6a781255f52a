"""Two-stage ab-initio protocol (the Gaussian-mixture thesis, §3.4): restarts of a small initial stage ranked
by log-posterior, then a refinement with more components and the posterior-mean map.

Restarts run in parallel through :func:`cryoprism.parallel.map_batches` (threads by default,
``processes=True`` for a local dask cluster, or a scheduler address). With a job
(:class:`cryoprism.io.job.Job`) every chain saves a checkpoint (the job's one format, fingerprinted
with the images and settings) after each alternation / every ``thin`` sweeps, with its
random-generator state, so ``job.resume`` continues a run exactly where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from cryoprism.abinitio import gibbs, hmc
from cryoprism.abinitio.gmm import GaussianMixture, fit_mixture_em, render_volume
from cryoprism.fourier.resample import downsample
from cryoprism.io.particles import ParticleSource, ParticleStack
from cryoprism.parallel.core import map_batches


def fourier_crop(images, L_new: int) -> np.ndarray:
    """Images ``(n, L, L)`` at box ``L_new`` (:func:`cryoprism.fourier.downsample`, mean preserved;
    a copy when ``L_new >= L``), in float64 for the samplers."""
    images = np.asarray(images, dtype=np.float64)
    if L_new >= images.shape[-1]:
        return images.copy()
    return downsample(images, L_new)[0]


# --------------------------------------------------------------------------------------------------
# checkpoints


def _rng_to_str(rng) -> str:
    return json.dumps(rng.bit_generator.state)


def _rng_from_str(s: str):
    st = json.loads(s)
    bg = getattr(np.random, st["bit_generator"])()
    bg.state = st
    return np.random.Generator(bg)


def save_checkpoint(checkpoints, name: str, state, rng, stage: str, samples=None) -> None:
    """Save a chain (Gibbs or HMC) state, its generator and its thinned samples as ``name`` in
    ``checkpoints`` (:class:`cryoprism.io.checkpoint.Checkpoints`)."""
    arrays = {"log_posterior": np.asarray(state.log_posterior, dtype=np.float64), "means_A": state.means_A,
              "rotations": state.rotations, "shifts_A": state.shifts_A}
    meta = {"stage": stage, "rng": _rng_to_str(rng), "iteration": int(state.iteration),
            "precision_invA2": float(state.precision_invA2)}
    if isinstance(state, hmc.HMCState):
        arrays.update(scales=state.scales, eps_rot=np.full(state.rotations.shape[0], 0.01)
                      if state.eps_rot is None else state.eps_rot)
        meta.update(kind="hmc", beta=float(state.beta), eps_means=float(state.eps_means))
    else:
        arrays["weights"] = state.weights
        meta["kind"] = "gibbs"
    if samples:
        arrays["sample_means_A"] = np.stack([s.means_A for s in samples])
        arrays["sample_precision"] = np.array([s.precision_invA2 for s in samples])
        arrays["sample_weights"] = np.stack([s.mixture.weights for s in samples])
    checkpoints.save(name, arrays, **meta)


def load_checkpoint(checkpoints, name: str):
    """``(state, rng, stage, samples)`` saved by :func:`save_checkpoint`, or None (not resuming, or
    no such checkpoint). A checkpoint from other inputs or settings raises ``InputError``."""
    got = checkpoints.load(name) if checkpoints is not None else None
    if got is None:
        return None
    z, meta = got
    common = dict(means_A=z["means_A"], precision_invA2=float(meta["precision_invA2"]),
                  rotations=z["rotations"], shifts_A=z["shifts_A"], iteration=int(meta["iteration"]),
                  log_posterior=list(z["log_posterior"]))
    if meta["kind"] == "hmc":
        st = hmc.HMCState(scales=z["scales"], beta=float(meta["beta"]), eps_means=float(meta["eps_means"]),
                          eps_rot=z["eps_rot"], **common)
    else:
        st = gibbs.ChainState(weights=z["weights"], **common)
    samples = []
    if "sample_means_A" in z:
        for m, s, w in zip(z["sample_means_A"], z["sample_precision"], z["sample_weights"]):
            samples.append(GaussianMixture(m, float(s), w))
    return st, _rng_from_str(str(meta["rng"])), str(meta["stage"]), samples


# --------------------------------------------------------------------------------------------------
# restarts


@dataclass(frozen=True)
class RestartJob:
    """Everything one initial-stage chain needs (picklable for process workers)."""

    method: str
    images: np.ndarray            # (n, L, L) at the initial-stage box
    pixel_size_A: float
    ctf: np.ndarray | None
    K: int
    n_counts: int
    seed: int
    n_alternations: int
    n_rotations: int
    checkpoints: object | None = None   # cryoprism.io.checkpoint.Checkpoints (picklable)
    name: str = "restart"


def run_restart(job: RestartJob):
    """One initial-stage chain; returns ``(state, log_posterior, seconds)``."""
    import time

    t0 = time.perf_counter()
    ck = job.checkpoints
    state, rng = None, np.random.default_rng(job.seed)
    got = load_checkpoint(ck, job.name)
    if got is not None:
        state, rng, _, _ = got
    save = (lambda st: save_checkpoint(ck, job.name, st, rng, "initial")) if ck is not None else None
    if job.method == "gibbs":
        data = gibbs.count_data(gibbs.images_to_counts(job.images, job.n_counts), job.pixel_size_A)
        pri = gibbs.default_priors(data)
        st = gibbs.run_initial_stage(data, job.K, pri, rng,
                                     gibbs.StageSettings(n_alternations=job.n_alternations,
                                                         n_rotations=job.n_rotations),
                                     state=state, checkpoint=save)
        return st, gibbs.log_posterior(st, data, pri), time.perf_counter() - t0
    data = hmc.GaussData(job.images, job.pixel_size_A, job.ctf)
    pri = hmc.default_priors(data)
    st = hmc.run_initial_stage(data, job.K, pri, rng,
                               hmc.HMCSettings(n_alternations=job.n_alternations,
                                               n_rotations=job.n_rotations,
                                               count_init_counts=job.n_counts),
                               state=state, checkpoint=save)
    return st, hmc.log_posterior(st, data, pri), time.perf_counter() - t0


def reconstruction_mixture(source: ParticleSource, K: int, *, n_iter: int = 30, threshold_sd: float = 2.0,
                           rng=None) -> GaussianMixture:
    """A ``K``-component mixture fitted to the reconstruction from the particles of ``source`` with
    their rotations (RELION, volume → particle) and origins (the HMC translations are ``t = −origin``,
    Å): the least-squares map with the Wiener regularisation estimated from the data
    (:func:`cryoprism.reconstruct.reconstruct_mean`, ``regularization="auto"``, CTF included),
    thresholded at the median plus ``threshold_sd`` standard deviations of the voxels outside the
    inscribed sphere (solvent), then fitted by MAP-EM (:func:`gmm.fit_mixture_em`, ``n_iter`` steps).

    Starts the HMC refinement: a mixture sampled from the small initial-stage mixture carries only
    the detail of that stage (K = 100 at a 32² box), while the map from the found rotations holds the
    finer detail of the data at the refinement box; fitting the mixture to it also denoises it."""
    from cryoprism.image.masks import spherical_mask
    from cryoprism.reconstruct.mean import reconstruct_mean

    L, pixel_size_A = source.box, source.pixel_size_A
    vol = np.asarray(reconstruct_mean(source, regularization="auto", mask_radius_px=None,
                                      progress=False).volume, dtype=np.float64)
    bg = vol[spherical_mask(L, L // 2 - 2) == 0]
    thr = float(np.median(bg) + threshold_sd * bg.std())
    return fit_mixture_em(vol, pixel_size_A, K, n_iter=n_iter, threshold=thr, rng=rng)


@dataclass
class AbinitioResult:
    volume: np.ndarray                 # posterior-mean map at the input box and pixel size
    pixel_size_A: float
    mixture: GaussianMixture           # last refinement sample
    rotations: np.ndarray              # (n, 3, 3) RELION matrices
    origins_A: np.ndarray              # (n, 2) [x, y] RELION origins in Å (= −t)
    restart_log_posteriors: list
    best_restart: int
    initial_traces: list
    refinement_trace: list
    timings_s: dict = field(default_factory=dict)
    restart_rotations: list = field(default_factory=list)   # final initial-stage rotations per restart


def _crop_ctf(ctf, L_from, L_to):
    if ctf is None:
        return None
    a = L_from // 2 - L_to // 2
    return np.asarray(ctf, dtype=np.float64)[..., a:a + L_to, a:a + L_to]


def read_cropped(source: ParticleSource, boxes, with_ctf: bool, batch_size: int = 256):
    """Every image of ``source`` Fourier-cropped to each box in ``boxes`` (:func:`fourier_crop`,
    float64) and, with ``with_ctf``, its CTF grid at the source's box cropped to the same frequencies
    (None without); read batch by batch, so the full-size images are never held together.
    Returns ``({box: images}, {box: ctf or None})``."""
    L = source.box
    imgs: dict = {B: [] for B in boxes}
    ctfs: dict = {B: [] for B in boxes}
    for b in source.batches(batch_size):
        x = np.asarray(b.images, dtype=np.float64)
        c = b.ctf_grid(np.float32) if with_ctf else None
        for B in boxes:
            imgs[B].append(fourier_crop(x, B))
            if c is not None:
                ctfs[B].append(_crop_ctf(np.asarray(c, dtype=np.float64).reshape(-1, L, L), L, B))
    return ({B: np.concatenate(v) for B, v in imgs.items()},
            {B: np.concatenate(v) if v else None for B, v in ctfs.items()})


#: Refinement sweeps and thinning per method when not given (benchmarked settings, docs/abinitio.md).
REFINE_DEFAULTS = {"gibbs": (20, 5), "hmc": (60, 10)}


def run_abinitio(source: ParticleSource, *, method: str = "gibbs", K_initial: int = 100,
                 K_refine: int = 1000, restarts: int = 4, initial_box: int = 32,
                 refine_box: int = 64, n_counts_initial: int = 1000, n_counts_refine: int = 20000,
                 n_alternations: int | None = None, n_rotations: int = 1000, refine_sweeps: int | None = None,
                 burn_in: int | None = None, thin: int | None = None, seed: int = 0, job=None,
                 processes: bool = False, scheduler: str | None = None,
                 progress: bool = True, refine_init: str = "reconstruction") -> AbinitioResult:
    """The whole protocol on the particles of ``source`` (``io.ParticleSource``; their poses are not
    used). The images are read once, in batches, and Fourier-cropped to the two stage boxes. HMC uses
    the particles' CTF when they have one; the Gibbs count model needs CTF-corrected non-negative
    images (e.g. class averages) and ignores it.

    ``refine_init``: ``"reconstruction"`` starts the refinement mixture from
    :func:`reconstruction_mixture` (the map from the best restart's rotations at the refinement box,
    fitted with ``K_refine`` components); ``"sample"`` draws the ``K_refine`` means from the best
    restart's mixture (the thesis' protocol).

    ``refine_sweeps`` / ``thin`` default to :data:`REFINE_DEFAULTS` of the method (Gibbs: 20 sweeps,
    thin 5 — the count-model chain broadens its σ with more sweeps, docs/abinitio.md; HMC: 60, 10);
    for Gibbs with ``refine_init="reconstruction"`` and a refinement box not finer than the initial
    one (images of ``initial_box`` pixels or fewer) the default is 0 sweeps: the mixture fitted to
    the reconstruction is the result (docs/defaults.md);
    ``burn_in`` to half the sweeps.

    ``job`` (:class:`cryoprism.io.job.Job`): checkpoint every chain in it (fingerprint: the images, the
    CTF and the settings; ``job.resume`` continues) and write the outputs through it
    (:func:`write_outputs`, with the source's STAR rows and optics for rotations.star)."""
    import time

    L, pixel_size_A = source.box, source.pixel_size_A
    if method not in REFINE_DEFAULTS:
        raise ValueError("method must be 'gibbs' or 'hmc'")
    Li = min(initial_box, L)
    Lr = min(refine_box, L)
    if refine_sweeps is None:
        refine_sweeps = REFINE_DEFAULTS[method][0]
        if method == "gibbs" and refine_init == "reconstruction" and Lr <= Li:
            # no finer data than the initial stage: the count-model chain only drifts away from the
            # mixture fitted to the reconstruction (held-out 50S at 32²: FSC 0.5 27.4 Å without the
            # sweeps, 63.5 Å after 20; docs/defaults.md), so that mixture is the result
            refine_sweeps = 0
    thin = REFINE_DEFAULTS[method][1] if thin is None else thin
    if n_alternations is None:   # the HMC initial stage needs about twice as many alternations
        n_alternations = 12 if method == "gibbs" else 10
    if refine_init not in ("reconstruction", "sample"):
        raise ValueError("refine_init must be 'reconstruction' or 'sample'")
    px_i = pixel_size_A * L / Li
    px_r = pixel_size_A * L / Lr
    use_ctf = method == "hmc" and source.has_ctf
    cropped, ctfs = read_cropped(source, sorted({Li, Lr}), use_ctf)
    small, ctf_i = cropped[Li], ctfs[Li]
    ck = None
    if job is not None:
        from cryoprism.io.checkpoint import digest

        job.add_inputs(images=digest(cropped[Lr]), ctf=digest(ctfs[Lr]), pixel_size_A=float(pixel_size_A),
                       abinitio=dict(method=method, K_initial=K_initial, K_refine=K_refine, restarts=restarts,
                                     initial_box=Li, refine_box=Lr, n_counts_initial=n_counts_initial,
                                     n_counts_refine=n_counts_refine, n_alternations=n_alternations,
                                     n_rotations=n_rotations, refine_sweeps=refine_sweeps, thin=thin,
                                     burn_in=burn_in, seed=seed, refine_init=refine_init))
        ck = job.checkpoints
    jobs = [RestartJob(method, small, px_i, ctf_i, K_initial, n_counts_initial, seed * 1000 + r,
                       n_alternations, n_rotations, ck, f"restart_{r}")
            for r in range(restarts)]
    t0 = time.perf_counter()
    outs = map_batches(run_restart, jobs, processes=processes, scheduler=scheduler,
                       desc="ab-initio restarts", progress=progress)
    t_init = time.perf_counter() - t0
    lps = [float(o[1]) for o in outs]
    best = int(np.argmax(lps))
    init = outs[best][0]
    # refinement
    t0 = time.perf_counter()
    big = cropped[Lr]
    burn_in = refine_sweeps // 2 if burn_in is None else burn_in
    rng = np.random.default_rng(seed * 1000 + 999)
    state, samples = None, []
    got = load_checkpoint(ck, "refine")
    if got is not None:
        state, rng, _, samples = got
    save = (lambda st, smp: save_checkpoint(ck, "refine", st, rng, "refine", smp)) if ck is not None else None
    if method == "gibbs":
        data = gibbs.count_data(gibbs.images_to_counts(big, n_counts_refine), px_r)
        pri = gibbs.default_priors(data)
        if state is None:
            if refine_init == "reconstruction":
                src_r = ParticleStack.from_arrays(big, pixel_size_A=px_r, rotations=init.rotations,
                                                  origins_A=-np.asarray(init.shifts_A))
                mix = reconstruction_mixture(src_r, K_refine, rng=rng)
                # counts sit at pixel centres: the count model's σ² carries px²/12 more per axis
                s0 = 1.0 / (mix.sigma_A ** 2 + px_r ** 2 / 12.0)
                state = gibbs.ChainState(mix.means_A.copy(), s0, mix.weights.copy(),
                                         init.rotations.copy(), init.shifts_A.copy())
            else:
                state = gibbs.refinement_state(init, K_refine, rng)
        state, samples = gibbs.run_refinement(data, state, pri, rng, refine_sweeps, burn_in, thin,
                                              checkpoint=save, samples=samples)
    else:
        data = hmc.GaussData(big, px_r, ctfs[Lr])
        pri = hmc.default_priors(data)
        if state is None:
            K0 = init.means_A.shape[0]
            if refine_init == "reconstruction":
                src_r = ParticleStack.from_arrays(data.images, pixel_size_A=px_r, rotations=init.rotations,
                                                  origins_A=-np.asarray(init.shifts_A),
                                                  ctf=source.ctf_params() if use_ctf else None)
                mix = reconstruction_mixture(src_r, K_refine, rng=rng)
                means, s0 = mix.means_A, mix.precision_invA2
            else:
                means = gibbs.sample_mixture(init.mixture, K_refine, rng)
                s0 = init.precision_invA2 * 4
            state = hmc.HMCState(means, s0, init.scales * K0 / K_refine, init.beta,
                                 init.rotations.copy(), init.shifts_A.copy(), eps_means=init.eps_means,
                                 eps_rot=None if init.eps_rot is None else init.eps_rot.copy())
            hmc.sample_scales(state, data, rng)
            hmc.sample_beta(state, data, pri, rng)
        state, samples = hmc.run_refinement(data, state, pri, rng, refine_sweeps, burn_in, thin,
                                            checkpoint=save, samples=samples)
    mixes = [s.mixture if hasattr(s, "mixture") else s for s in samples] or [state.mixture]
    vol = np.mean([render_volume(m, L, pixel_size_A) for m in mixes], axis=0).astype(np.float32)
    t_ref = time.perf_counter() - t0
    res = AbinitioResult(vol, float(pixel_size_A), state.mixture, state.rotations,
                         -np.asarray(state.shifts_A), lps, best,
                         [list(o[0].log_posterior) for o in outs], list(state.log_posterior),
                         {"initial_stage_s": t_init, "initial_per_restart_s": [float(o[2]) for o in outs],
                          "refinement_s": t_ref},
                         [o[0].rotations for o in outs])
    if job is not None:
        write_outputs(job, res, source.table, source.optics)
    return res


def write_outputs(job, res: AbinitioResult, table=None, optics=None) -> None:
    """Write an ab-initio result through ``job``: initial_model.mrc (posterior mean, input box and
    pixel size), mixture.csv (x_A, y_A, z_A in Å from the box centre, weight, sigma_A), rotations.star
    (``table``'s rows and columns with rlnAngleRot/Tilt/Psi in degrees and rlnOriginX/YAngst in Å;
    skipped without a table) and log_posterior.png; records the figures in the job's summary."""
    from cryoprism.abinitio.gmm import mixture_table
    from cryoprism.geometry.euler import matrix_to_euler
    from cryoprism.report.plots import abinitio_trace_figure

    outputs = [job.write_mrc("initial_model.mrc", res.volume, res.pixel_size_A),
               job.write_csv("mixture.csv", mixture_table(res.mixture))]
    if table is not None:
        table = table.copy()
        rot, tilt, psi = matrix_to_euler(res.rotations)
        table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"] = rot, tilt, psi
        table["rlnOriginXAngst"] = res.origins_A[:, 0]
        table["rlnOriginYAngst"] = res.origins_A[:, 1]
        table = table.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in table.columns])
        outputs.append(job.write_star("rotations.star", table, optics))
    outputs.append(job.save_figure("log_posterior.png", abinitio_trace_figure(
        res.initial_traces, res.refinement_trace, res.best_restart), dpi=100))
    job.record(best_restart=res.best_restart, restart_log_posteriors=res.restart_log_posteriors,
               sigma_A=res.mixture.sigma_A, pixel_size_A=res.pixel_size_A, box=int(res.volume.shape[0]),
               initial_stage_s=res.timings_s["initial_stage_s"], refinement_s=res.timings_s["refinement_s"],
               outputs=outputs)
