"""CLI of the reconstruction area: ``cryoprism reconstruct`` (docs/reconstruct.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoprism.cli.common import JSON_OPTION, finish, split_output


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""

    @app.command("reconstruct")
    def reconstruct_cmd(
        particles: Path = typer.Argument(..., help="Particles with poses: RELION STAR or cryoSPARC .cs."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (volume.mrc, volume_half1/2.mrc, "
                                 "summary.json, checkpoints/), or a file name NAME.mrc: the volume, "
                                 "NAME_half1/2.mrc and the job files go to its folder. Voxel size = "
                                 "pixel size (Å)."),
        method: str = typer.Option("cg", "--method", help="cg (least squares, default), fourier (direct "
                                   "Fourier inversion), wbp (weighted back-projection), sirt."),
        halfmaps: bool = typer.Option(False, "--halfmaps", help="Also write the half-maps and report "
                                      "the gold-standard FSC (rlnRandomSubset or a random split)."),
        regularization: str = typer.Option("auto", "--regularization", help="cg: 'auto' (Wiener prior "
                                           "estimated from half-sets, default) or a Tikhonov λ ≥ 0; "
                                           "fourier/sirt: λ (auto means 0)."),
        mask_radius: str = typer.Option("auto", "--mask-radius", help="cg: restrict the map to a sphere of "
                                        "this radius (pixels) around the box centre. auto (default): the "
                                        "outermost shell where the signal power of the two half-set maps "
                                        "exceeds their noise power (chosen from the data, reported as "
                                        "mask_radius_px); none: the "
                                        "whole box."),
        maxiter: int = typer.Option(100, "--maxiter", help="CG/SIRT iterations at most."),
        tol: float = typer.Option(1e-5, "--tol", help="CG relative residual to stop at."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore the CTF."),
        batch_size: int = typer.Option(0, "--batch-size", help="Particles per batch (0: automatic)."),
        resume: bool = typer.Option(False, "--resume", help="cg: continue from the checkpoints in "
                                    "OUT/checkpoints (normal equations after the pass over the particles, "
                                    "CG states while solving; same particles and settings, --maxiter may "
                                    "grow)."),
        as_json: bool = JSON_OPTION,
    ):
        """Reconstruct a volume from particles with known poses.

        Reads PARTICLES (STAR/.cs + stacks); writes the volume (MRC) and with --halfmaps two half-maps;
        prints time, iterations and the FSC resolution (Å). With --method cg the run keeps checkpoints
        in OUT/checkpoints: an interrupted run continues with --resume. Outputs are written only at
        the end, atomically.
        """
        from cryoprism.errors import InputError
        from cryoprism.io import read_particles
        from cryoprism.io.job import Job
        from cryoprism.reconstruct import METHODS, reconstruct
        from cryoprism.reconstruct.outputs import write_outputs

        if method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        if resume and method != "cg":
            raise InputError(f"--resume is for --method cg, not {method}")
        if regularization == "auto":
            reg = "auto" if method == "cg" else 0.0
        else:
            try:
                reg = float(regularization)
            except ValueError:
                raise InputError(f"--regularization must be 'auto' or a number, got {regularization!r}")
        if mask_radius in ("auto", "none"):
            mask = None if mask_radius == "none" else "auto"
        else:
            try:
                mask = float(mask_radius)
            except ValueError:
                raise InputError(f"--mask-radius must be auto, none or a number, got {mask_radius!r}")
        folder, name = split_output(out, "volume.mrc")
        stack = read_particles(particles)
        settings = {"method": method, "halfmaps": halfmaps, "regularization": reg, "mask_radius_px": mask,
                    "maxiter": maxiter, "tol": tol, "ctf": not no_ctf, "batch_size": batch_size}
        with Job(folder, "reconstruct", settings, resume=resume, volatile=("maxiter", "batch_size")) as job:
            r = reconstruct(stack, use_ctf=not no_ctf, method=method, regularization=reg,
                            maxiter=maxiter, tol=tol, halfmaps=halfmaps, batch_size=batch_size or None,
                            mask_radius_px=mask, job=job if method == "cg" else None)
            job.record(method=method, particles=stack.n, box=stack.box, pixel_size_A=stack.pixel_size_A)
            if "mask_radius_px" in r.info:
                job.record(mask_radius_px=r.info["mask_radius_px"])
            write_outputs(job, r, stack.pixel_size_A, name)
            finish(job, as_json)
