"""CLI of the ab-initio area: ``cryoprism abinitio INPUT.star -o OUT``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, finish


def abinitio_command(
    input_star: Path = typer.Argument(..., help="Particles or class averages: RELION STAR (3.0/3.1/5) "
                                                 "or cryoSPARC .cs with their MRC stacks."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
    method: str = typer.Option("gibbs", "--method",
                               help="gibbs: count model (Algorithm 1; needs non-negative, CTF-corrected "
                                    "images such as class averages). hmc: Gaussian-noise model "
                                    "(Algorithm 2) with the CTF of the STAR file in the model."),
    components: int = typer.Option(1000, "--components", "-K", min=2,
                                   help="Mixture components in the refinement stage."),
    initial_components: int = typer.Option(100, "--initial-components", min=2,
                                           help="Mixture components in the initial stage."),
    restarts: int = typer.Option(4, "--restarts", min=1,
                                 help="Independent initial-stage runs; the one with the highest "
                                      "log-posterior is refined."),
    initial_box: int = typer.Option(32, "--initial-box", min=8,
                                    help="Image box (pixels) of the initial stage (Fourier-cropped)."),
    refine_box: int = typer.Option(64, "--refine-box", min=8, help="Image box (pixels) of the refinement."),
    counts: int = typer.Option(1000, "--counts", min=10, help="Counts per image, initial stage (gibbs)."),
    refine_counts: int = typer.Option(20000, "--refine-counts", min=10,
                                      help="Counts per image, refinement (gibbs)."),
    n_rotations: int = typer.Option(1000, "--rotations", min=10,
                                    help="Uniform rotations N_R of each global rotation step."),
    alternations: int = typer.Option(None, "--alternations", min=1,
                                     help="Mixture/rotation alternations of the initial stage "
                                          "(default 12 for gibbs, 10 for hmc)."),
    sweeps: int = typer.Option(None, "--sweeps", min=2, help="Refinement sweeps, half of them burn-in "
                               "(default 20 for gibbs, 60 for hmc; gibbs: 0 when the images are not "
                               "larger than --initial-box, the mixture fitted to the reconstruction "
                               "being the result)."),
    max_images: int = typer.Option(200, "--max-images", min=1, help="Use at most this many images "
                                                                    "(the first ones)."),
    refine_init: str = typer.Option("reconstruction", "--refine-init",
                                    help="Start of the refinement mixture: reconstruction (fit K components "
                                         "to the map reconstructed from the best restart's rotations) or "
                                         "sample (draw them from the best restart's mixture, the thesis' "
                                         "protocol)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoints in OUT/checkpoints."),
    processes: bool = typer.Option(False, "--processes", help="Run restarts in worker processes (dask)."),
    as_json: bool = JSON_OPTION,
):
    """Ab-initio 3-D model as a Gaussian mixture (Gibbs sampling or HMC), from images with unknown
    orientations.

    Reads INPUT.star (images, pixel size in Å; defocus etc. for --method hmc). Writes to OUT:
    initial_model.mrc (posterior-mean density, the input box and pixel size in Å), mixture.csv
    (x_A, y_A, z_A in Å from the box centre, weight, sigma_A), rotations.star (the input table with
    rlnAngleRot/Tilt/Psi in degrees and rlnOriginXAngst/YAngst in Å), log_posterior.png,
    summary.json, and chain checkpoints in OUT/checkpoints: an interrupted run continues with --resume
    (same images and settings).
    """
    from cryoprism.abinitio import pipeline
    from cryoprism.errors import InputError
    from cryoprism.io.job import Job
    from cryoprism.io.particles import read_particles

    if method not in ("gibbs", "hmc"):
        raise InputError(f"--method {method!r}: expected gibbs or hmc")
    if refine_init not in ("reconstruction", "sample"):
        raise InputError(f"--refine-init {refine_init!r}: expected reconstruction or sample")
    stack = read_particles(input_star)
    n = min(stack.n, max_images)
    if n < 3:
        raise InputError(f"{input_star}: {n} image(s); ab-initio needs at least 3", input_star)
    settings = {"method": method, "components": components, "initial_components": initial_components,
                "restarts": restarts, "initial_box": initial_box, "refine_box": refine_box, "counts": counts,
                "refine_counts": refine_counts, "rotations": n_rotations, "alternations": alternations,
                "sweeps": sweeps, "max_images": max_images, "refine_init": refine_init, "seed": seed}
    with Job(out, "abinitio", settings, resume=resume) as job:
        job.record(images=n, method=method, components=components, restarts=restarts, refine_init=refine_init)
        pipeline.run_abinitio(stack.subset(np.arange(n)), method=method, K_initial=initial_components,
                              K_refine=components, restarts=restarts, initial_box=initial_box,
                              refine_box=refine_box, n_counts_initial=counts, n_counts_refine=refine_counts,
                              n_alternations=alternations, n_rotations=n_rotations, refine_sweeps=sweeps,
                              seed=seed, job=job, processes=processes, refine_init=refine_init)
        finish(job, as_json)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""
    app.command("abinitio")(abinitio_command)
