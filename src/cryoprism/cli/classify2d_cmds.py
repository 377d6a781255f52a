"""CLI of the 2-D analysis area: ``cryoprism classify2d`` and ``cryoprism denoise`` (docs/classify2d.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, finish


def _open(particles: Path, radius_px):
    from cryoprism.errors import InputError
    from cryoprism.io import read_particles

    stack = read_particles(particles)
    if stack.n < 3:
        raise InputError(f"{stack.n} particles: expected at least 3", particles)
    L = stack.box
    R = float(radius_px) if radius_px is not None else 0.4 * L
    if not (0 < R < L / np.sqrt(2) - 1):
        raise InputError(f"--radius {R} px must leave background in a {L}² box", particles)
    return stack, R


def register(app: typer.Typer) -> None:
    """Add ``classify2d`` and ``denoise`` to the cryoprism app."""

    @app.command("classify2d")
    def classify2d(
        particles: Path = typer.Argument(..., exists=True, dir_okay=False,
                                         help="Particle STAR (RELION 3.0/3.1) or cryoSPARC .cs file."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        method: str = typer.Option("mfvdm", "--method", help="rir | vdm | mfvdm."),
        n_neighbors: int = typer.Option(50, "--neighbors", min=1, help="Neighbours per image."),
        k_max: int = typer.Option(10, "--k-max", min=1, help="MFVDM angular frequencies k̃."),
        m: int = typer.Option(50, "--eigs", min=2, help="Eigenvectors per frequency (m)."),
        n_classes: int = typer.Option(100, "--classes", min=1, help="Class averages to write."),
        radius_px: float = typer.Option(None, "--radius", help="Particle radius in pixels (default 0.4·box); "
                                        "the background outside it gives the noise spectrum."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore CTF parameters (no phase flip)."),
        centre: Optional[bool] = typer.Option(None, "--centre/--no-centre", help="Centre the images first "
                                    "(default: automatic — only when a sample of 400 images shows the "
                                    "particles off-centre by more than 2 px rms beyond what the estimator "
                                    "gives on centred data at the same SNR; reported as centring_auto). "
                                    "Centring (particles with random "
                                    "shifts): on their rotationally averaged mean, then 4 rounds against each "
                                    "image's aligned neighbour average and 3 searches over synchronised class "
                                    "averages, then 3 rounds synchronising the shifts over the pair matches "
                                    "that try 12 translations within 1 px, as the final pair search does "
                                    "(helps at moderate SNR; costs ~7 neighbour searches and 3 class "
                                    "searches; see docs/classify2d.md)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoints in OUT/checkpoints "
                                    "(same particles and settings)."),
        as_json: bool = JSON_OPTION,
    ):
        """Rotation-invariant 2-D neighbours (RIR, VDM or MFVDM) and class averages.

        Reads the particle images and CTF (defocus in Å, voltage kV, Cs mm) of PARTICLES. Writes, in OUT:
        neighbors.csv (one row per pair: i, j = 0-based rows of the input table, angle_deg = in-plane
        rotation in degrees, counter-clockwise in the image x–y frame, taking image j (mirrored y → −y
        first when reflected = 1) onto image i, score = similarity, larger is closer), class_averages.mrcs
        (centre image + its aligned neighbours, CTF-corrected, same pixel size), class_centres.csv and
        gallery.png. Finished stages (FB coefficients, initial RID neighbours, VDM/MFVDM neighbours) are
        checkpointed in OUT/checkpoints; after an interrupt the same command with --resume skips them.
        """
        from cryoprism.classify2d.pipeline import classify
        from cryoprism.errors import InputError
        from cryoprism.io.job import Job

        if method not in ("rir", "vdm", "mfvdm"):
            raise InputError(f"--method must be rir, vdm or mfvdm, got {method!r}")
        centre = "auto" if centre is None else centre
        stack, R = _open(particles, radius_px)
        s = min(n_neighbors, stack.n - 1)
        m = min(m, 2 * stack.n - 3)
        settings = {"method": method, "neighbors": s, "k_max": k_max, "eigs": m, "classes": n_classes,
                    "radius_px": R, "ctf": not no_ctf, "centre": centre}
        with Job(out, "classify2d", settings, resume=resume, volatile=("classes",)) as job:
            res = classify(stack, not no_ctf, method=method, n_neighbors=s, k_max=k_max, m=m,
                           mask_radius_px=R, centre=centre, n_classes=n_classes, job=job, progress=True)
            job.record(particles=stack.n, box=stack.box, method=method, out=out,
                       centring_auto=res.prep.extras.get("centring_auto"))
            finish(job, as_json)

    @app.command("denoise")
    def denoise(
        particles: Path = typer.Argument(..., exists=True, dir_okay=False,
                                         help="Particle STAR (RELION 3.0/3.1) or cryoSPARC .cs file."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        method: str = typer.Option("mfvdm", "--method", help="spca | cwf | mfvdm."),
        n_neighbors: int = typer.Option(50, "--neighbors", min=1, help="Graph neighbours (mfvdm)."),
        k_max: int = typer.Option(10, "--k-max", min=1, help="MFVDM angular frequencies for the search."),
        m: int = typer.Option(50, "--eigs", min=2, help="Eigenvectors per frequency for the search."),
        radius_px: float = typer.Option(None, "--radius", help="Particle radius in pixels (default 0.4·box)."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore CTF parameters."),
        as_json: bool = JSON_OPTION,
    ):
        """Denoise particle images: sPCA Wiener filter (spca), covariance Wiener filter (cwf) or MFVDM (mfvdm).

        Reads the images and CTF of PARTICLES; whitens with the background noise spectrum, phase-flips,
        denoises the Fourier–Bessel coefficients, corrects the CTF (Wiener) and recolours. Writes
        OUT/denoised.mrcs (same box and pixel size, input intensity units) and OUT/denoised.star (every
        input column kept, rlnImageName pointing into denoised.mrcs).
        """
        from cryoprism.classify2d.pipeline import denoise as run_denoise
        from cryoprism.errors import InputError
        from cryoprism.io.job import Job

        if method not in ("spca", "cwf", "mfvdm"):
            raise InputError(f"--method must be spca, cwf or mfvdm, got {method!r}")
        stack, R = _open(particles, radius_px)
        with Job(out, "denoise", {"method": method, "neighbors": n_neighbors, "k_max": k_max, "eigs": m,
                                  "radius_px": R, "ctf": not no_ctf}) as job:
            den = run_denoise(stack, not no_ctf, method=method, n_neighbors=n_neighbors, k_max=k_max,
                              m=m, mask_radius_px=R, progress=True)
            job.write_particles("denoised.star", "denoised.mrcs", den, stack.star, pixel_size_A=stack.pixel_size_A)
            job.record(particles=stack.n, box=stack.box, method=method, out=out)
            finish(job, as_json)
