"""CLI of the refinement area: ``cryoprism refine particles.star --ref initial.mrc -o OUT``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, emit


def refine_figure(result):
    """FSC of the half-maps and the resolution per iteration (one matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    f = result.fsc
    ax[0].plot(f.freq_invA, f.curve, label="half-maps")
    if result.fsc_masked is not None:
        ax[0].plot(result.fsc_masked.freq_invA, result.fsc_masked.curve, label="half-maps, masked")
    ax[0].axhline(0.143, color="grey", lw=0.8, ls="--")
    ax[0].set_xlabel("spatial frequency (1/Å)")
    ax[0].set_ylabel("FSC")
    ax[0].set_title(f"gold-standard FSC: {result.resolution_A:.2f} Å at 0.143")
    ax[0].legend(fontsize=8)
    its = [h["iteration"] for h in result.iterations]
    ax[1].plot(its, [h["resolution_A"] for h in result.iterations], marker="o")
    ax[1].set_xlabel("iteration")
    ax[1].set_ylabel("resolution (Å, FSC 0.143)")
    ax[1].invert_yaxis()
    fig.tight_layout()
    return fig


def write_outputs(job, stack, result) -> None:
    """OUT/particles.star, refined.mrc, half1.mrc, half2.mrc, fsc.csv, iterations.csv, refine.png."""
    import pandas as pd

    from cryoprism.io.particles import relocate_image_names

    px = result.pixel_size_A
    table = relocate_image_names(result.table, getattr(stack, "path", None), job.out)
    job.write_star("particles.star", table, getattr(stack, "optics", None))
    job.write_mrc("refined.mrc", result.volume, px)
    job.write_mrc("half1.mrc", result.half_maps[0], px)
    job.write_mrc("half2.mrc", result.half_maps[1], px)
    if result.mask is not None:
        job.write_mrc("mask.mrc", result.mask, px)
    f = result.fsc
    cols = {"shell": np.arange(len(f.curve)), "freq_invA": f.freq_invA, "resolution_A": f.resolution_A,
            "fsc": f.curve}
    if "fsc_uncorrected" in result.info:  # before removing what the halves' shared start explains
        cols["fsc_uncorrected"] = result.info["fsc_uncorrected"]
    if result.fsc_masked is not None:
        cols["fsc_masked"] = result.fsc_masked.curve
    job.write_csv("fsc.csv", pd.DataFrame(cols))
    job.write_csv("iterations.csv", pd.DataFrame(result.iterations))
    job.save_figure("refine.png", refine_figure(result))


def refine_command(
    input_star: Path = typer.Argument(..., help="Particles: RELION STAR (3.0/3.1/5) or cryoSPARC .cs with "
                                                 "their MRC stacks; CTF from the table (none: no CTF, with "
                                                 "a warning). Input poses are not used."),
    ref: Path = typer.Option(..., "--ref", help="Starting map (MRC). Another pixel size (Å, from the header) "
                                                 "is Fourier-resampled, another box centre-cropped/padded, "
                                                 "each with a warning; a map covering less than half the "
                                                 "particle box is refused (exit 2)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
    mask: Path = typer.Option(None, "--mask", help="Soft mask (MRC, same box and pixel size as the "
                                                   "particles) for the references; default: a sphere plus "
                                                   "an automatic solvent mask."),
    sym: str = typer.Option("C1", "--sym", help="Point-group symmetry: C1, Cn or Dn."),
    initial_lowpass: float | None = typer.Option(None, "--initial-lowpass", min=1.0,
                                          help="Low-pass of the starting map (Å); the first comparisons "
                                               "stop there. Default: 40 Å, or box·pixel/6 when finer "
                                               "(at least 6 shells in small boxes)."),
    max_iterations: int = typer.Option(14, "--iter", min=1, help="At most this many iterations "
                                                                 "(auto-refine stops earlier on convergence)."),
    grid: int = typer.Option(4608, "--grid", min=100, help="Rotations of the global search grid."),
    noise: str = typer.Option("shell", "--noise", help="Noise model: shell (per-shell spectrum from the "
                                                       "residuals) or white."),
    classes: int = typer.Option(1, "--classes", min=1,
                                help="K > 1: after the consensus refinement, 3-D classification into K maps "
                                     "(started from the covariance route's classes, poses searched globally, then "
                                     "locally, per class; OUT/class001.mrc …, rlnClassNumber 1…K, "
                                     "rlnMaxValueProbDistribution and the per-class poses in "
                                     "OUT/particles.star; docs/refine.md)."),
    class_resolution: float = typer.Option(None, "--class-resolution", min=1.0,
                                           help="The per-class pose searches compare up to this resolution "
                                                "(Å); default: the consensus refinement's FSC 0.143 "
                                                "resolution."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the half-set split (when the table has no "
                                               "rlnRandomSubset)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints (one per iteration)."),
    as_json: bool = JSON_OPTION,
):
    """Gold-standard 3-D refinement: poses (rotations and shifts) and map from particles and a starting map.

    Writes OUT/particles.star (the input rows and columns in order, with rlnAngleRot/Tilt/Psi in degrees,
    rlnOriginXAngst/YAngst in Å and rlnRandomSubset 1/2 set or appended; optics table kept),
    OUT/refined.mrc (all particles), OUT/half1.mrc and OUT/half2.mrc (the independent half-maps),
    OUT/mask.mrc, OUT/fsc.csv (half-map FSC per shell, 1/Å and Å: fsc with what the halves' shared
    start explains removed, fsc_uncorrected before; the summary's resolution_validated is false when the
    halves agree no further than the start's low-pass, start_resolution_A), OUT/iterations.csv (box, compared and
    FSC 0.143 resolution in Å, angular step and median change in degrees, time in s per iteration),
    OUT/refine.png, OUT/summary.json and OUT/checkpoints/. With --classes K also OUT/class001.mrc … (one map
    per class, full box, input pixel size), the rlnClassNumber (1…K) and rlnMaxValueProbDistribution
    (posterior of that class) columns, and the poses refined against each particle's class map.
    """
    from cryoprism.errors import InputError
    from cryoprism.io import read_particles
    from cryoprism.io.checkpoint import digest
    from cryoprism.io.job import Job
    from cryoprism.io.mrc import read_mrc
    from cryoprism.refine import RefineSettings, match_reference, refine
    from cryoprism.refine.symmetry import symmetry_group

    if noise not in ("shell", "white"):
        raise InputError(f"--noise must be shell or white, got {noise!r}")
    try:
        symmetry_group(sym)
    except ValueError as e:
        raise InputError(f"--sym: {e}") from None
    stack = read_particles(input_star)
    if stack.n < 4:
        raise InputError(f"refinement needs at least 4 particles, got {stack.n}", input_star)
    vol, ref_px = read_mrc(ref, ndim=3, finite=True)

    def warn(msg):
        typer.echo(f"cryoprism: warning: {msg}", err=True)

    # resampled (with a warning) or refused before anything is written
    vol = match_reference(vol, ref_px, stack.box, stack.pixel_size_A, path=ref, warn=warn)
    m = None
    if mask is not None:
        m, _ = read_mrc(mask, ndim=3, finite=True)
        if m.shape != (stack.box,) * 3:
            raise InputError(f"mask box {m.shape} differs from the particle box {stack.box}", mask)
    settings = RefineSettings(initial_lowpass_A=initial_lowpass, max_iterations=max_iterations, grid_size=grid,
                              noise=noise, symmetry=sym.upper(), seed=seed)
    job = Job(out, "refine", {k: v for k, v in vars(settings).items() if k != "max_iterations"},
              {"particles": digest(stack.table.to_numpy(dtype=str)), "reference": digest(vol),
               "mask": digest(m)}, resume=resume)
    if not stack.has_ctf:
        warn("no CTF columns (rlnDefocusU): refining without CTF")
    result = refine(stack, vol, stack.pixel_size_A, job=job, mask=m, settings=settings)
    figures = {}
    if classes > 1:
        from cryoprism.refine.classify import classify3d
        from cryoprism.refine.pipeline import _output_table

        res_A = float(result.resolution_A) if np.isfinite(result.resolution_A) else 20.0
        res_A = class_resolution or max(res_A, 2.5 * result.pixel_size_A)
        cl = classify3d(stack, classes, result.rotations, result.origins_A, resolution_A=res_A,
                        symmetry=settings.symmetry, seed=seed, log=job.log)
        result.table = _output_table(stack, cl.rotations, cl.origins_A, result.subsets - 1)
        result.table["rlnClassNumber"] = cl.labels + 1
        result.table["rlnMaxValueProbDistribution"] = cl.probability
        for c, v in enumerate(cl.volumes):
            job.write_mrc(f"class{c + 1:03d}.mrc", v, result.pixel_size_A)
        figures = {"classes": classes, "class_fractions": np.bincount(cl.labels, minlength=classes) / stack.n,
                   "class_resolution_A": res_A, "class_cpu_s": cl.info["cpu_s"]}
    write_outputs(job, stack, result)
    job.record(n_particles=stack.n, box=stack.box, pixel_size_A=result.pixel_size_A,
               resolution_A=result.resolution_A, resolution_masked_A=result.resolution_masked_A,
               resolution_validated=result.info.get("resolution_validated"),
               start_resolution_A=result.info.get("start_resolution_A"),
               iterations=len(result.iterations), cpu_s=result.info["cpu_s"], out=out, **figures)
    emit(job.finish(), as_json)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""
    app.command("refine")(refine_command)
