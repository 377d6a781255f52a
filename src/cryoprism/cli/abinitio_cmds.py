"""CLI of the ab-initio area: ``cryoprism abinitio INPUT.star -o OUT``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, emit


def _trace_png(path: Path, initial_traces, refinement_trace, best: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoprism.io.atomic import atomic_path

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for r, tr in enumerate(initial_traces):
        ax[0].plot(np.arange(1, len(tr) + 1), tr, marker="o", lw=2 if r == best else 1,
                   label=f"restart {r}" + (" (best)" if r == best else ""))
    ax[0].set_xlabel("alternation")
    ax[0].set_ylabel("log-posterior")
    ax[0].set_title("initial stage")
    ax[0].legend(fontsize=7)
    ax[1].plot(refinement_trace, marker=".")
    ax[1].set_xlabel("recorded sweep")
    ax[1].set_title("refinement")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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
    rlnAngleRot/Tilt/Psi in degrees and rlnOriginXAngst/YAngst in Å), log_posterior.png, and resumable
    chain checkpoints in OUT/checkpoints/*.npz.
    """
    from cryoprism.abinitio.gmm import write_mixture_csv
    from cryoprism.abinitio.pipeline import run_abinitio
    from cryoprism.errors import InputError
    from cryoprism.geometry.euler import matrix_to_euler
    from cryoprism.io.mrc import write_mrc
    from cryoprism.io.particles import read_particles
    from cryoprism.io.star import write_star

    if method not in ("gibbs", "hmc"):
        raise InputError(f"--method {method!r}: expected gibbs or hmc")
    if refine_init not in ("reconstruction", "sample"):
        raise InputError(f"--refine-init {refine_init!r}: expected reconstruction or sample")
    stack = read_particles(input_star)
    n = min(stack.n, max_images)
    idx = np.arange(n)
    images, ctf = [], []
    for b in stack.batches(256, indices=idx):
        images.append(np.asarray(b.images, dtype=np.float64))
        if method == "hmc" and b.ctf is not None:
            from cryoprism.ctf.model import ctf_2d

            ctf.append(np.asarray(ctf_2d(stack.box, stack.pixel_size_A, b.ctf), dtype=np.float64)
                       .reshape(-1, stack.box, stack.box))
    images = np.concatenate(images)
    ctf = np.concatenate(ctf) if ctf else None
    if n < 3:
        raise InputError(f"{input_star}: {n} image(s); ab-initio needs at least 3", input_star)
    out.mkdir(parents=True, exist_ok=True)
    res = run_abinitio(images, stack.pixel_size_A, ctf=ctf, method=method, K_initial=initial_components,
                       K_refine=components, restarts=restarts, initial_box=initial_box,
                       refine_box=refine_box, n_counts_initial=counts, n_counts_refine=refine_counts,
                       n_alternations=alternations, n_rotations=n_rotations, refine_sweeps=sweeps,
                       seed=seed, workdir=out / "checkpoints", resume=resume, processes=processes,
                       refine_init=refine_init)
    write_mrc(out / "initial_model.mrc", res.volume, res.pixel_size_A)
    write_mixture_csv(out / "mixture.csv", res.mixture)
    table = stack.table.iloc[:n].copy()
    rot, tilt, psi = matrix_to_euler(res.rotations)
    table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"] = rot, tilt, psi
    table["rlnOriginXAngst"] = res.origins_A[:, 0]
    table["rlnOriginYAngst"] = res.origins_A[:, 1]
    for col in ("rlnOriginX", "rlnOriginY"):
        if col in table.columns:
            table = table.drop(columns=col)
    write_star(out / "rotations.star", table, stack.optics)
    _trace_png(out / "log_posterior.png", res.initial_traces, res.refinement_trace, res.best_restart)
    figures = {
        "images": n, "method": method, "components": components, "restarts": restarts, "refine_init": refine_init,
        "best_restart": res.best_restart, "restart_log_posteriors": res.restart_log_posteriors,
        "sigma_A": res.mixture.sigma_A, "pixel_size_A": res.pixel_size_A, "box": int(res.volume.shape[0]),
        "initial_stage_s": res.timings_s["initial_stage_s"], "refinement_s": res.timings_s["refinement_s"],
        "outputs": [str(out / f) for f in ("initial_model.mrc", "mixture.csv", "rotations.star",
                                           "log_posterior.png")],
    }
    emit(figures, as_json)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""
    app.command("abinitio")(abinitio_command)
