"""``cryoprism demo``: the whole library on data shipped inside the package, ending in an HTML report.

The specimen is adenylate kinase in its open and closed conformations (PDB 4AKE / 1AKE, CC0; see
``cryoprism/data/README.md``). The demo calls the library functions directly (no command-line
parsing); each stage writes through its own :class:`cryoprism.io.job.Job` in a folder of ``OUT``:

1. ``maps/``          — density maps of both states from the atomic models (molmap-style),
2. ``movies/``        — a few simulated movies (both states at known positions, CTF, ice, drift,
   local deformation, dose, Poisson counts) through the preprocessing chain (motion correction →
   CTF → picking → extraction, ``movies/preprocess/``), scored against the truth: drift error, defocus
   error, picking precision/recall, particles extracted. The chain yields about a hundred particles;
   the stages below need thousands with known states and poses to score themselves, so they run on
   the simulated particle set of stage 3, not on these,
3. ``particles/``     — a heterogeneous particle set (both states, CTF, noise) as RELION 3.1 STAR + MRCS,
4. ``reconstruct/``   — the mean volume by least squares (CG) with half-maps and gold-standard FSC,
   at the library's defaults (Wiener regularisation and the particle's ball chosen from the data),
5. ``heterogeneity/`` — covariance eigenvolumes, the number of states, classes and class volumes, on
   the true poses,
6. ``classify2d/``    — MFVDM neighbours, class averages and denoised images,
7. ``abinitio/``      — a Gaussian-mixture initial model from a subset of particles (HMC with CTF),
8. ``refine/``        — gold-standard refinement from the ab-initio map (poses unknown to it) of the
   particles of the open state, the ab-initio model's (a consensus refinement of both states does not
   align the compact closed one to any map but a closed one: docs/refine.md "Small particles and small
   boxes"), in ``refine_rounds`` rounds, each started from the previous round's map (the first from the
   ab-initio map low-passed to ``refine_initial_lowpass_A``, the reach of a 50-particle ab-initio
   model); angular errors against the simulated poses, and whether the gold-standard resolution is
   validated beyond the start the half-maps shared,
9. ``heterogeneity_refined/`` — the heterogeneity analysis again, on the refined poses of that one
   state (one state expected); stage 5 on the true poses of both states is the demo's heterogeneity
   result,
10. ``micrograph/``   — reconstruction straight from simulated micrographs (approximate EM) of a
   larger specimen, a four-copy assembly of the two adenylate-kinase models (4 × 214 residues,
   ≈ 94 kDa, ≈ 90 Å across), where the method works; the 21 kDa monomer at this scale is where it stops working
   (docs/micrograph_em.md §11), which the report states,
11. ``report/``       — ``index.html`` with drift tracks, CTF fit, picks, FSC curves, spectra, class
   histograms, galleries, slices, refinement iterations, timings.

Every stage's figures are also in its ``summary.json`` (``Job.finish``) and in ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np


@dataclass
class DemoSettings:
    """Sizes chosen so the whole demo runs in about three minutes on 2 cores."""

    box: int = 32
    pixel_size_A: float = 2.5
    model_resolution_A: float = 10.0
    n_particles: int = 4000
    snr: float = 0.1
    seed: int = 0
    heterogeneity_nres: int | None = None   # None: chosen from the data by the library
    classify_n: int = 2000
    classify_neighbors: int = 10
    abinitio_n: int = 50
    abinitio_components: int = 60
    abinitio_initial_components: int = 20
    abinitio_restarts: int = 1
    abinitio_initial_box: int = 16
    abinitio_refine_box: int = 24
    abinitio_rotations: int = 200
    abinitio_alternations: int = 6
    abinitio_sweeps: int = 16
    mic_box: int = 11
    mic_pixel_size_A: float = 12.0
    mic_size: int = 384
    mic_count: int = 2
    mic_snr: float = 1.0
    mic_particles: int = 200
    mic_rotations: int = 200
    mic_iterations: tuple = (2, 2, 3)
    mic_start_blur_px: float = 1.5
    movie_count: int = 2
    movie_size: int = 512
    movie_frames: int = 20
    movie_particles: int = 60           # asked per movie; as many as fit well separated
    movie_snr: float = 0.1              # particles against the ice (as the particle set's snr)
    movie_contrast: float = 0.1         # std of the expected counts over their mean
    movie_dose_per_frame_e_A2: float = 1.0
    movie_drift_px: float = 10.0
    movie_local_px: float = 1.5
    movie_diameter_A: float = 60.0
    refine_max_iterations: int | None = None   # None: refine's defaults (reduced only by the tests)
    refine_grid: int | None = None
    refine_state: int | None = 1        # refine the particles of this simulated state (None: all)
    refine_rounds: int = 3              # refinements in a row, each from the previous map
    refine_initial_lowpass_A: float | None = 20.0   # start of the first round (the ab-initio map's reach)


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the process (all threads): independent of other load
    ok: bool = False
    figures: dict = field(default_factory=dict)
    error: str | None = None


def data_file(name: str) -> Path:
    """Path of a file shipped in ``cryoprism/data``."""
    return Path(str(resources.files("cryoprism") / "data" / name))


def _say(msg: str):
    import sys

    print(f"[demo] {msg}", file=sys.stderr, flush=True)


#: Output folder of each stage (default: the stage's name).
FOLDERS = {"simulate": "particles"}

#: The micrograph specimen: copies of the shipped models (model, Euler angles xyz in degrees, shift Å).
ASSEMBLY = (("adk_open.pdb.gz", (0, 0, 0), (0, 0, 0)), ("adk_closed.pdb.gz", (90, 0, 0), (38, 0, 0)),
            ("adk_open.pdb.gz", (0, 90, 0), (0, 38, 0)), ("adk_closed.pdb.gz", (0, 0, 90), (0, 0, 38)))


def assembly_atoms(spec=ASSEMBLY) -> tuple[np.ndarray, np.ndarray]:
    """Atoms (x, y, z in Å; atomic numbers) of an asymmetric assembly of the shipped models: each copy
    centred on its own Z-weighted centroid, rotated, then shifted."""
    from scipy.spatial.transform import Rotation

    from cryoprism.forward import read_atoms

    xyz, z = [], []
    for name, euler_deg, shift_A in spec:
        a, w = read_atoms(data_file(name))
        a = a - (a * w[:, None]).sum(0) / w.sum()
        xyz.append(Rotation.from_euler("xyz", euler_deg, degrees=True).apply(a) + np.asarray(shift_A, float))
        z.append(w)
    return np.concatenate(xyz), np.concatenate(z)


def _ctf_grids(stack, idx) -> np.ndarray:
    from cryoprism.ctf.model import ctf_2d

    return np.asarray(ctf_2d(stack.box, stack.pixel_size_A, stack.ctf_params(idx)), np.float64).reshape(
        -1, stack.box, stack.box)


def run_demo(out_dir, settings: DemoSettings | None = None, stages: list[str] | None = None) -> dict:
    """Run the demo into ``out_dir``; returns a summary dict (also written as ``summary.json``)."""
    from cryoprism.io import read_mrc, read_particles
    from cryoprism.io.job import Job

    s = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, Stage] = {}
    t_start, c_start = time.perf_counter(), time.process_time()

    def run(name, fn):
        if stages is not None and name not in stages:
            return None
        st = Stage(name)
        _say(f"{name} …")
        t, c = time.perf_counter(), time.process_time()
        job = Job(out / FOLDERS.get(name, name), f"demo.{name}", settings=asdict(s))
        try:
            st.figures = fn(job) or {}
            job.record(**st.figures)
            job.finish()
            st.ok = True
        except Exception as e:  # a failed stage is reported, the others still run
            st.error = f"{type(e).__name__}: {e}"
            (out / f"{name}_error.txt").write_text(traceback.format_exc())
            _say(f"{name} FAILED: {st.error}")
            job.finish()
        st.seconds = time.perf_counter() - t
        st.cpu_seconds = time.process_time() - c
        _say(f"{name} done in {st.seconds:.1f} s ({st.cpu_seconds:.1f} CPU-s)")
        done[name] = st
        return st

    truth = [out / "maps" / "state1_open.mrc", out / "maps" / "state2_closed.mrc"]
    parts = out / "particles" / "particles.star"

    def make_maps(job):
        from cryoprism.forward import read_atoms, volume_from_pdb

        xyz, z = read_atoms(data_file("adk_open.pdb.gz"))
        centre = (xyz * z[:, None]).sum(0) / z.sum()  # one frame for both states
        vols = []
        for p, model in zip(truth, ["adk_open.pdb.gz", "adk_closed.pdb.gz"]):
            v = volume_from_pdb(data_file(model), s.box, s.pixel_size_A, s.model_resolution_A, center_A=centre)
            job.write_mrc(p.name, v, s.pixel_size_A)
            vols.append(v)
        cc = float(np.corrcoef(vols[0].ravel(), vols[1].ravel())[0, 1])
        return {"box": s.box, "pixel_size_A": s.pixel_size_A, "state_correlation": cc}

    def simulate(job):
        from cryoprism.forward import simulate_particles

        vols = [read_mrc(p)[0] for p in truth]
        sim = simulate_particles(vols, s.n_particles, s.pixel_size_A, snr=s.snr, defocus_range_A=(1.0e4, 2.5e4),
                                 n_defocus_groups=7, rng=s.seed, out_star=job.path(parts.name),
                                 out_mrcs=job.path("particles.mrcs"), progress=False)
        return {"particles": s.n_particles, "snr_realised": sim.snr_realised, "noise_sigma": sim.noise_sigma,
                "states": np.bincount(sim.states).tolist()}

    def reconstruct(job):
        from cryoprism.metrics.fsc import resolution_at
        from cryoprism.reconstruct import reconstruct_mean

        stack = read_particles(parts)
        r = reconstruct_mean(stack, regularization="auto", halfmaps=True, progress=False)
        px = stack.pixel_size_A
        job.write_mrc("mean.mrc", r.volume, px)
        job.write_mrc("mean_half1.mrc", r.half_maps[0], px)
        job.write_mrc("mean_half2.mrc", r.half_maps[1], px)
        return {"iterations": r.iterations, "mask_radius_px": r.info.get("mask_radius_px"),
                "resolution_fsc_0.143_A": resolution_at(r.fsc, 0.143), "seconds": r.seconds}

    def movies(job):
        from cryoprism.pipeline.stages import movies_stage

        return movies_stage(job, [read_mrc(p)[0] for p in truth], s)

    def heterogeneity(job, star_path=parts):
        from cryoprism.heterogeneity.pipeline import analyze, resolve_nres

        stack = read_particles(star_path)
        N = resolve_nres(stack.box, stack.pixel_size_A, s.heterogeneity_nres, None, source=stack)
        star = _star_for(stack.star, star_path, job.out)
        res = analyze(stack, N, classes="auto", seed=s.seed, progress=False, job=job, star=star)
        fig = {"n_res": N, "states": res.n_states, "class_sizes": [int((res.labels == k).sum())
                                                                   for k in range(res.n_states)],
               "eigenvalues": [float(x) for x in res.covariance.eigenvalues[:6]]}
        if "rlnClassNumber" in stack.table.columns:  # the simulated state (kept by refine's STAR)
            from cryoprism.heterogeneity.classify import matched_accuracy

            fig["accuracy_vs_true_state"] = float(matched_accuracy(stack.table["rlnClassNumber"].to_numpy(),
                                                                   np.asarray(res.labels)))
        return fig

    def classify2d(job):
        from cryoprism.classify2d.pipeline import classify, mfvdm_denoise

        sub = _subset_star(parts, job.path("subset.star"), s.classify_n)
        stack = read_particles(sub)
        res = classify(stack, True, method="mfvdm", n_neighbors=s.classify_neighbors,
                       mask_radius_px=0.4 * stack.box, n_classes=100, job=job, progress=False)
        den = mfvdm_denoise(res.prep, res.nb, progress=False)
        job.write_mrc("denoised/denoised.mrcs", np.asarray(den, np.float32)[:64], stack.pixel_size_A,
                      is_stack=True)
        return {"particles": stack.n, "neighbors": s.classify_neighbors, "classes": len(res.centres)}

    def abinitio(job):
        from cryoprism.abinitio.gmm import write_mixture_csv
        from cryoprism.abinitio.pipeline import run_abinitio

        sub = _subset_star(parts, job.path("input.star"), s.abinitio_n, state=1)
        stack = read_particles(sub)
        res = run_abinitio(stack, method="hmc", K_initial=s.abinitio_initial_components,
                           K_refine=s.abinitio_components, restarts=s.abinitio_restarts,
                           initial_box=s.abinitio_initial_box, refine_box=s.abinitio_refine_box,
                           n_rotations=s.abinitio_rotations, n_alternations=s.abinitio_alternations,
                           refine_sweeps=s.abinitio_sweeps, seed=s.seed, progress=False)
        job.write_mrc("initial_model.mrc", res.volume, res.pixel_size_A)
        write_mixture_csv(job.path("mixture.csv"), res.mixture)
        from cryoprism.report import trace_figure

        job.save_figure("trace.png", trace_figure({"refinement": np.asarray(res.refinement_trace)},
                                                  ylabel="log-posterior", title="Ab-initio refinement"))
        return {"images": stack.n, "best_restart": res.best_restart,
                "restart_log_posteriors": res.restart_log_posteriors, **res.timings_s}

    def refine(job):
        from cryoprism.pipeline.stages import refine_stage

        return refine_stage(job, parts, out / "abinitio" / "initial_model.mrc", s)

    def heterogeneity_refined(job):
        return heterogeneity(job, out / "refine" / "particles.star")

    def micrograph(job):
        from scipy.ndimage import gaussian_filter

        from cryoprism.forward import volume_from_atoms
        from cryoprism.forward.micrographs import simulate_micrographs
        from cryoprism.micrograph.pipeline import RunConfig, run_pipeline

        xyz, z = assembly_atoms()
        # a map at twice the pixel size (the finest detail the micrographs' sampling can carry)
        v = volume_from_atoms(xyz, z, s.mic_box, s.mic_pixel_size_A, 2 * s.mic_pixel_size_A)
        tpath = job.write_mrc("truth_small.mrc", v, s.mic_pixel_size_A)
        # the start: a low-resolution map of the same specimen (as a user starts from a blurred model)
        ipath = job.write_mrc("init_blurred.mrc", gaussian_filter(v, s.mic_start_blur_px).astype(np.float32),
                              s.mic_pixel_size_A)
        sim = simulate_micrographs(v, s.mic_count, s.mic_size, s.mic_particles, s.mic_pixel_size_A,
                                   snr=s.mic_snr, ctf=False, rng=s.seed,
                                   job=Job(job.out / "data", "demo.micrograph.simulate", log_to_file=False),
                                   progress=False)
        mics = sorted(job.path("data").glob("micrograph_*.mrc"))
        cfg = RunConfig(L=s.mic_box, ell_max=5, n_rotations=s.mic_rotations, iterations=tuple(s.mic_iterations),
                        seed=s.seed)
        em = run_pipeline(mics, cfg, job=Job(job.out / "em", "demo.micrograph-em"), init_path=ipath,
                          truth_path=tpath)
        return {"particles": int(len(sim.coordinates)), "atoms": int(len(z)), "copies": len(ASSEMBLY),
                "extent_A": [round(float(e), 1) for e in np.ptp(xyz, axis=0)],
                "em": {k: v for k, v in em.items() if not isinstance(v, (list, dict))}}

    run("maps", make_maps)
    run("movies", movies)
    run("simulate", simulate)
    run("reconstruct", reconstruct)
    run("heterogeneity", heterogeneity)
    run("classify2d", classify2d)
    run("abinitio", abinitio)
    run("refine", refine)
    run("heterogeneity_refined", heterogeneity_refined)
    run("micrograph", micrograph)
    total = time.perf_counter() - t_start
    total_cpu = time.process_time() - c_start

    from cryoprism.pipeline.report import build_report

    _say("report …")
    page = build_report(out, s, done, truth, total)
    summary = {
        "out": str(out), "report": str(page), "total_seconds": total, "total_cpu_seconds": total_cpu,
        "stages": {k: {"ok": v.ok, "seconds": v.seconds, "cpu_seconds": v.cpu_seconds, "error": v.error,
                       "figures": v.figures}
                   for k, v in done.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _star_for(star, star_path: Path, out_dir: Path):
    """A copy of ``star`` whose image names resolve from ``out_dir``."""
    import copy

    s2 = copy.copy(star)
    p = s2.particles.copy()
    names = p["rlnImageName"].astype(str)
    p["rlnImageName"] = [f"{a}@{os.path.relpath(Path(star_path).parent / b, out_dir)}"
                         for a, b in (x.split("@", 1) for x in names)]
    s2.particles = p
    return s2


def _subset_star(star_path: Path, out_path: Path, n: int, state: int | None = None) -> Path:
    """Write a STAR with the first ``n`` particles (optionally of one ``rlnClassNumber``)."""
    from cryoprism.io import read_star, write_star

    st = read_star(star_path)
    p = st.particles
    idx = np.arange(len(p))
    if state is not None and "rlnClassNumber" in p.columns:
        idx = idx[p["rlnClassNumber"].to_numpy() == state]
    idx = idx[:n]
    sub = _star_for(st.subset(idx), star_path, out_path.parent)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_star(out_path, sub)
    return out_path
