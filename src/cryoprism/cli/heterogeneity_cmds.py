"""CLI of the heterogeneity area: ``cryoprism heterogeneity``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, finish


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""

    @app.command("heterogeneity")
    def heterogeneity(
        particles: Path = typer.Argument(..., help="Particle STAR (RELION 3.0/3.1/5) or cryoSPARC .cs file "
                                                   "with poses (rlnAngleRot/Tilt/Psi, degrees), origins "
                                                   "(Å) and CTF; images in MRC stacks."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        nres: Optional[int] = typer.Option(None, "--nres", min=4,
                                           help="Effective resolution N_res: images are Fourier-cropped "
                                                "to N_res × N_res pixels. Default: chosen from the "
                                                "data, twice the last frequency shell whose spectral "
                                                "SNR (background noise spectrum, 2000 images) is ≥ 0.02, "
                                                "between 8 and min(box, 32); reported as n_res."),
        max_res_A: Optional[float] = typer.Option(None, "--max-res",
                                                  help="Resolution limit in Å instead of --nres: "
                                                       "N_res = ceil(2 · box · pixel size / limit)."),
        classes: str = typer.Option("auto", "--classes",
                                    help="Number of states C; 'auto' (or 'test'): the eigenvalues significant "
                                         "(p < 0.001) in a split-sample test, each against the null of "
                                         "the states found before it, bound the count and the BIC of "
                                         "the state mixture picks it; 'gap': the spectral-gap rule "
                                         "(always reported as states_from_gap)."),
        method: str = typer.Option("lowrank", "--method",
                                   help="lowrank: matrix-free subspace estimator (any N_res; the "
                                        "default); cg: the dense covariance of Andén, Katsevich & Singer "
                                        "(2015) by CG with the 6-D Toeplitz kernel (N_res ≤ ~10)."),
        iterations: int = typer.Option(10, "--iterations", min=1,
                                       help="CG iterations of the covariance normal equations "
                                            "(early stopping regularises)."),
        max_states: int = typer.Option(8, "--max-states", min=2, help="Largest C considered by 'auto'."),
        no_reconstruct: bool = typer.Option(False, "--no-reconstruct",
                                            help="Skip the per-class volumes at full resolution."),
        pixel_size_A: Optional[float] = typer.Option(None, "--pixel-size",
                                                     help="Pixel size (Å) if neither the STAR file nor "
                                                          "the MRC header gives one."),
        support: float = typer.Option(1.0, "--support", min=0.0, max=1.0,
                                      help="Radius of the particle's support as a fraction of half the "
                                           "box (1: the inscribed ball; 0: the whole cube). The "
                                           "covariance is estimated inside it."),
        trajectory: bool = typer.Option(False, "--trajectory",
                                        help="Continuous heterogeneity: the density of the particles' "
                                             "coordinates and full-box volumes along the principal "
                                             "directions and a high-density path, each from the "
                                             "particles nearest its point (OUT/trajectory/)."),
        trajectory_points: int = typer.Option(10, "--trajectory-points", min=2,
                                              help="Volumes per direction and along the path."),
        trajectory_dims: int = typer.Option(2, "--trajectory-dims", min=1, max=3,
                                            help="Coordinates used for the density and the path."),
        trajectory_lowrank: bool = typer.Option(False, "--trajectory-lowrank",
                                                help="Also the low-rank volumes mean + U a(t) at each "
                                                     "point (pcK_lowrank_NNN.mrc, path_lowrank_NNN.mrc)."),
        seed: int = typer.Option(0, "--seed", help="Random seed (range finder, bootstrap, mixture)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoints in "
                                    "OUT/checkpoints (same particles and settings)."),
        as_json: bool = JSON_OPTION,
    ):
        """Find how many conformational states a particle set holds and which particle is which.

        Reads PARTICLES (poses and CTF known). Estimates the noise variance (background pixels), the
        mean volume, the 3-D covariance at N_res (Andén, Katsevich & Singer 2015) and its eigenvolumes,
        the number of states C (a p-value per eigenvalue from a split-sample test whose null holds the
        states found before it, then the BIC of the state mixture; the spectral-gap count is reported
        beside it), per-particle coordinates and classes (Gaussian mixture,
        per-particle EM), then classes refined by maximum-likelihood 3-D classification at the full
        box with the poses fixed, whose class volumes are written. Writes into OUT: eigenvalues.csv
        (eigenvalue, gap ratio λ_k/λ_{k+1}), coords.csv (α per particle, class), classes.star (the
        input rows and columns with rlnClassNumber set),
        class_NN.star (each class, ready for refinement), class_NN.mrc (class volumes, Å/px of the
        input), eigvol_NN.mrc (unit-norm eigenvolumes on the full box), report.png. Checkpoints
        (mean, covariance kernel and CG state, range finder, class volumes) go to OUT/checkpoints;
        after an interrupt, the same command with --resume continues. Outputs are written only at
        the end, each atomically. With --trajectory also OUT/trajectory/: pcK_NNN.mrc (volumes at the
        5th…95th percentiles of coordinate K, as cryoSPARC 3DVA), path_NNN.mrc (volumes along the
        highest-density path between two modes of the coordinates' density, rebuilt once the particles
        are placed along the path by their full-box likelihood), points.csv (the points' coordinates,
        density, particle counts), path_position.csv (each particle's position along the path, 0–1),
        density.png and path.gif (projections along the path).
        """
        from cryoprism.errors import InputError
        from cryoprism.heterogeneity.pipeline import analyze, resolve_nres
        from cryoprism.io import read_particles
        from cryoprism.io.job import Job

        if not particles.exists():
            raise InputError("file not found", particles)
        if method not in ("cg", "lowrank"):
            raise InputError(f"--method must be cg or lowrank, got {method!r}", particles)
        if classes not in ("auto", "test", "gap"):
            try:
                C = int(classes)
            except ValueError:
                raise InputError(f"--classes must be 'auto', 'test', 'gap' or an integer, got {classes!r}", particles)
            if C < 1:
                raise InputError("--classes must be at least 1", particles)
        else:
            C = classes
        stack = read_particles(particles, pixel_size_A=pixel_size_A)
        if stack.n < 10:
            raise InputError(f"{stack.n} particles: too few for a covariance estimate", particles)
        px = float(stack.pixel_size_A)
        N = resolve_nres(stack.box, px, nres, max_res_A, source=stack)
        settings = {"n_res": N, "method": method, "classes": C, "iterations": iterations,
                    "max_states": max_states, "reconstruct": not no_reconstruct, "support": support, "seed": seed}
        traj = None
        if trajectory:
            from cryoprism.heterogeneity.continuous import ContinuousSettings

            traj = ContinuousSettings(n_dims=trajectory_dims, n_points=trajectory_points,
                                      lowrank=trajectory_lowrank, seed=seed)
            settings["trajectory"] = dataclasses.asdict(traj)
        with Job(out, "heterogeneity", settings, resume=resume) as job:
            res = analyze(stack, N, method=method, classes=C, cg_iterations=iterations, max_states=max_states,
                          reconstruct=not no_reconstruct, seed=seed, job=job, star=_relocated(stack.star, out),
                          support_radius=support or None, trajectory=traj)
            figures = _figures(res, stack, N, px, out)
            job.record(**figures)
            finish(job, as_json, _human(res, stack, N, out, figures))

    def _figures(res, stack, N, px, out):
        return {
            "particles": stack.n, "box": stack.box, "pixel_size_A": px, "n_res": N,
            "method": res.covariance.method, "cg_iterations": res.covariance.iterations,
            "states": res.n_states, "states_from_gap": res.states.n_states,
            "state_confidence": None if np.isnan(res.states.confidence) else res.states.confidence,
            **state_figures(res),
            "gap_ratios": [float(g) for g in res.states.gaps[:5]],
            "eigenvalues": [float(x) for x in res.covariance.eigenvalues[:8]],
            "class_sizes": [int((res.labels == k).sum()) for k in range(res.n_states)],
            "noise_variance": res.data.info.get("noise_var_L"),
            "seconds": round(res.timings.get("total_s", 0.0), 2),
            "out": str(out),
        }

    def _human(res, stack, N, out, figures):
        test = ("split-sample test: " + res.state_test.summary() if res.state_test is not None
                else "number of states given")
        return (f"{stack.n} particles, N_res {N} ({res.covariance.method}): {res.n_states} class(es); "
                f"{test}; class sizes {figures['class_sizes']}; outputs in {out}")

    def state_figures(res) -> dict:
        t, r = res.state_test, res.refinement
        out = {}
        if t is not None:
            out.update({"state_test": t.summary(), "p_values": [float(x) for x in t.p_values],
                        "states_from_eigenvalues": t.n_states_eig, "states_from_bic": t.n_states_bic})
        if r is not None:
            out.update({"refine_iterations": r.iterations, "refine_box": r.box,
                        "class_splits": r.info.get("splits", [])})
        return out

    def _relocated(star, out: Path):
        import copy

        from cryoprism.io.particles import relocate_image_names

        s2 = copy.copy(star)
        s2.particles = relocate_image_names(star.particles, star.path, out)
        return s2
