"""Two stages of the demo that compare a chain of library calls with its simulated truth.

* :func:`movies_stage` — simulated movies of the demo's specimen through the preprocessing chain
  (:func:`cryoprism.preprocess.chain.run_preprocess`: motion correction → CTF → picking → extraction);
* :func:`refine_stage` — gold-standard refinement (:func:`cryoprism.refine.refine`) of the demo's
  particles from the ab-initio map, poses unknown to it, scored against the simulated poses.

Each writes through the demo stage's :class:`cryoprism.io.job.Job` and returns the stage's figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def drift_error_px(estimated: np.ndarray, true: np.ndarray) -> float:
    """r.m.s. length (px) of ``estimated − true`` over frames (and positions) after removing one common
    offset: a trajectory is only defined up to a constant (both are displacements ``[..., 2]``)."""
    e = np.asarray(estimated, np.float64) - np.asarray(true, np.float64)
    e = e.reshape(-1, 2)
    e = e - e.mean(axis=0)
    return float(np.sqrt((e**2).sum(axis=1).mean()))


def movies_stage(job, volumes, s) -> dict:
    """Simulate ``s.movie_count`` movies of both states and run the preprocessing chain on them.

    Specimen of each movie: a noise-free micrograph of projections of ``volumes`` at known positions
    (:func:`cryoprism.forward.micrographs.simulate_micrographs`, one defocus per micrograph, the
    particles in amorphous ice imaged through the same CTF: ``snr=s.movie_snr``, ``ctf_noise_fraction=1``);
    the movie (:func:`cryoprism.preprocess.movies.simulate_movie`) moves it along a global drift plus a
    smooth local deformation, with radiation damage and Poisson counts. Writes ``movies/`` (the frames,
    ``truth_coordinates.star``), ``preprocess/`` (the chain's outputs: ``micrographs/``,
    ``micrographs_ctf.star``, ``coordinates.star``, ``picks/*.png``, ``particles.star``/``.mrcs``),
    ``drift.csv`` (true and estimated global displacement per frame), ``ctf_fit.png`` (the CTF fit of the
    first micrograph) and returns the errors against the truth.
    """
    from cryoprism.ctf import estimate_ctf
    from cryoprism.forward.micrographs import simulate_micrographs
    from cryoprism.io import read_mrc, read_star
    from cryoprism.io.job import Job
    from cryoprism.preprocess.chain import run_preprocess
    from cryoprism.preprocess.motion import align_movie
    from cryoprism.preprocess.movies import simulate_movie
    from cryoprism.preprocess.pick import match_picks
    from cryoprism.report.ctf_fit import ctf_fit_figure

    px, dose = s.pixel_size_A, s.movie_dose_per_frame_e_A2
    volt, cs, q = 300.0, 2.7, 0.1
    spec = simulate_micrographs(volumes, s.movie_count, s.movie_size, s.movie_particles, px, snr=s.movie_snr,
                                ctf_noise_fraction=1.0, defocus_range_A=(1.0e4, 2.5e4), voltage_kV=volt, cs_mm=cs,
                                amplitude_contrast=q, rng=s.seed, progress=False)
    paths, sims = [], []
    for i in range(s.movie_count):
        sim = simulate_movie(pixel_size_A=px, n_frames=s.movie_frames, dose_per_frame_e_A2=dose,
                             specimen=spec.micrographs[i], defocus_A=None, contrast=s.movie_contrast,
                             drift_px=s.movie_drift_px, local_px=s.movie_local_px, voltage_kV=volt,
                             rng=s.seed + 1 + i)
        paths.append(job.write_mrc(f"movies/movie_{i + 1:03d}.mrcs", sim.frames, px, is_stack=True))
        sims.append(sim)
    truth = spec.coordinates.copy()
    names = {f"micrograph_{i + 1:04d}.mrc": Path(p).stem for i, p in enumerate(paths)}
    truth["rlnMicrographName"] = truth["rlnMicrographName"].map(names)
    job.write_star("movies/truth_coordinates.star", truth)
    pre_job = Job(job.out / "preprocess", "demo.movies.preprocess")
    figs = run_preprocess(paths, pre_job, s.movie_diameter_A, box=s.box, pixel_size_A=px, voltage_kV=volt,
                          cs_mm=cs, amplitude_contrast=q, dose_per_frame_e_A2=dose, progress=False)
    pre_job.record(**{k: v for k, v in figs.items() if not isinstance(v, (list, dict))})
    pre_job.finish()

    # the chain keeps no trajectories: the same alignment (same function, defaults and frames, so the
    # same result) again, for the drift tracks
    rows, drift, full = [], [], []
    for i, (path, sim) in enumerate(zip(paths, sims)):
        mr = align_movie(sim.frames, px, dose_per_frame_e_A2=dose, voltage_kV=volt)
        drift.append(drift_error_px(mr.shifts_px, sim.global_px))
        H, W = sim.shape
        yy, xx = np.mgrid[H // 16:H:H // 8, W // 16:W:W // 8]  # an 8 × 8 grid
        full.append(drift_error_px(mr.displacement(xx, yy), sim.displacement(xx, yy)))
        rows.append(pd.DataFrame({"movie": Path(path).stem, "frame": np.arange(1, sim.frames.shape[0] + 1),
                                  "true_x_px": sim.global_px[:, 0], "true_y_px": sim.global_px[:, 1],
                                  "estimated_x_px": mr.shifts_px[:, 0], "estimated_y_px": mr.shifts_px[:, 1]}))
    job.write_csv("drift.csv", pd.concat(rows, ignore_index=True))

    ctf = read_star(pre_job.out / "micrographs_ctf.star").particles
    true_df = 0.5 * (spec.ctf.defocus_u_A + spec.ctf.defocus_v_A)
    est_df = 0.5 * (ctf["rlnDefocusU"].to_numpy(float) + ctf["rlnDefocusV"].to_numpy(float))
    mic0, _ = read_mrc(ctf["rlnMicrographName"].iloc[0])
    fit, extra = estimate_ctf(mic0, px, volt, cs, q, return_spectrum=True)
    job.save_figure("ctf_fit.png", ctf_fit_figure(fit, extra, px, volt, cs, q,
                                                  title=f"{Path(paths[0]).stem}: true defocus {true_df[0]:.0f} Å"))

    coords = read_star(pre_job.out / "coordinates.star").particles
    radius = 0.25 * s.movie_diameter_A / px
    tp = n_pick = n_true = 0
    for i, path in enumerate(paths):
        name = Path(path).stem
        got = coords[[Path(m).stem == name for m in coords["rlnMicrographName"].astype(str)]]
        want = truth[truth["rlnMicrographName"] == name]
        m = match_picks(got[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float),
                        want[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float), radius)
        tp, n_pick, n_true = tp + m["true_positives"], n_pick + m["n_picked"], n_true + m["n_true"]
    precision, recall = tp / max(n_pick, 1), tp / max(n_true, 1)
    return {"movies": s.movie_count, "movie_shape": [s.movie_frames, s.movie_size, s.movie_size],
            "true_drift_px": [round(float(np.hypot(*sm.global_px[-1])), 2) for sm in sims],
            "drift_error_rms_px": [round(v, 3) for v in drift],
            "displacement_error_rms_px": [round(v, 3) for v in full],
            "defocus_true_A": [round(float(v), 0) for v in true_df],
            "defocus_error_percent": [round(float(100 * (e - t) / t), 2) for e, t in zip(est_df, true_df)],
            "true_particles": int(n_true), "picks": int(n_pick), "pick_precision": round(precision, 3),
            "pick_recall": round(recall, 3),
            "pick_f1": round(2 * precision * recall / max(precision + recall, 1e-12), 3),
            "match_radius_px": radius, "particles_extracted": int(figs.get("particles", 0))}


def pose_errors(true_rotations, rotations, states=None) -> dict:
    """Angular errors (°) of estimated rotations against the truth after the best global rotation and
    hand (a map from an unknown start is in its own frame): median, share within 10°, and the median
    per true state when ``states`` (labels) are given."""
    from cryoprism.abinitio.so3 import best_alignment

    _, err, mirrored = best_alignment(true_rotations, rotations)
    out = {"median_angle_error_deg": float(np.median(err)), "within_10deg": float(np.mean(err < 10)),
           "mirrored": bool(mirrored)}
    if states is not None:
        states = np.asarray(states)
        out["median_angle_error_per_state_deg"] = {int(k): float(np.median(err[states == k]))
                                                   for k in np.unique(states)}
    return out


def refine_stage(job, particles: Path, initial_model: Path, s) -> dict:
    """Refine the particles of ``particles`` from ``initial_model`` (resampled to the particle box by the
    library) with :func:`cryoprism.refine.refine`; the input poses are not used by it and serve only to
    score the result. Writes the ``refine`` command's outputs (of the last round) through ``job``.

    ``s.refine_state``: refine only the particles of that simulated state (``rlnClassNumber``; None: all).
    A consensus refinement of this two-state set does not align the compact closed state to any map but
    a closed one (docs/refine.md, "Small particles and small boxes"); the ab-initio model is of the open
    state, so the demo refines the open particles. ``s.refine_rounds`` refinements in a row, each
    started from the previous one's map (the first from the ab-initio map, low-passed to
    ``s.refine_initial_lowpass_A``; later rounds at ``refine``'s default start): the ab-initio map of 50
    particles agrees with the truth only to ≈ 20 Å, and each round's global search against a better map
    recovers poses that the previous round's local searches could not (docs/guide/demo.md)."""
    from cryoprism.cli.refine_cmds import write_outputs
    from cryoprism.io import read_mrc, read_particles
    from cryoprism.refine import refine

    stack = read_particles(particles)
    if s.refine_state is not None and "rlnClassNumber" in stack.table.columns:
        stack = stack.subset(np.flatnonzero(stack.table["rlnClassNumber"].to_numpy() == s.refine_state))
    vol, vol_px = read_mrc(initial_model)
    kw = {k: v for k, v in (("max_iterations", s.refine_max_iterations), ("grid_size", s.refine_grid))
          if v is not None}
    if "grid_size" in kw:
        kw["regrid_size"] = kw["grid_size"]
    truth = stack.rotations(np.arange(stack.n))
    states = stack.table["rlnClassNumber"].to_numpy() if "rlnClassNumber" in stack.table.columns else None
    rounds = []
    for i in range(max(1, s.refine_rounds)):
        lp = s.refine_initial_lowpass_A if i == 0 else None
        res = refine(stack, vol, vol_px, job=job, progress=False, initial_lowpass_A=lp, **kw)
        err = pose_errors(truth, res.rotations)
        rounds.append({"round": i + 1, "start_resolution_A": res.info.get("start_resolution_A"),
                       "iterations": len(res.iterations), "resolution_A": round(float(res.resolution_A), 3),
                       "resolution_validated": res.info.get("resolution_validated"),
                       "median_angle_error_deg": round(err["median_angle_error_deg"], 2),
                       "within_10deg": round(err["within_10deg"], 4), "cpu_s": res.info.get("cpu_s")})
        job.log.info("refine round %d: median angular error %.1f°, FSC 0.143 %.2f Å", i + 1,
                     err["median_angle_error_deg"], res.resolution_A)
        vol, vol_px = res.volume, res.pixel_size_A
    write_outputs(job, stack, res)
    return {"particles": stack.n, "state": s.refine_state, "rounds": rounds, "iterations": len(res.iterations),
            "resolution_A": res.resolution_A, "resolution_masked_A": res.resolution_masked_A,
            "resolution_validated": res.info.get("resolution_validated"),
            "start_resolution_A": res.info.get("start_resolution_A"),
            "resolution_uncorrected_A": res.info.get("resolution_uncorrected_A"),
            "cpu_s": round(sum(r["cpu_s"] or 0.0 for r in rounds), 2),
            **pose_errors(truth, res.rotations, states)}
