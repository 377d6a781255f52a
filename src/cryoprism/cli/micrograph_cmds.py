"""CLI of the micrograph area: ``micrograph-em`` (reconstruction straight from micrographs)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer

from cryoprism.cli.common import JSON_OPTION, finish


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""

    @app.command("micrograph-em")
    def micrograph_em(
        micrographs: List[Path] = typer.Argument(..., help="Micrographs (2-D MRC). Pixel size: --pixel-size, "
                                                 "else the CTF STAR's optics, else the MRC header."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        particle_box: int = typer.Option(..., "--particle-box", min=5,
                                         help="Particle box L in pixels of the (binned) micrograph; "
                                              "the micrograph is cut into L×L patches. L≈11–15 is "
                                              "practical."),
        init: Optional[Path] = typer.Option(None, "--init", help="Initial map (MRC); resampled to the "
                                            "micrograph pixel size and box L, low-passed by the first "
                                            "stage. Default: random."),
        ctf_star: Optional[Path] = typer.Option(None, "--ctf-star", help="RELION micrographs_ctf.star "
                                                "(rlnMicrographName, rlnDefocusU/V Å, rlnDefocusAngle °, "
                                                "voltage kV, Cs mm): a CTF per micrograph in the "
                                                "likelihood."),
        truth: Optional[Path] = typer.Option(None, "--truth", help="Ground-truth map (MRC): FSC with its "
                                             "band-limited expansion after every iteration, "
                                             "OUT/fsc_per_iteration.{csv,png}."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in OUT/checkpoints "
                                    "(same micrographs and settings)."),
        ell_max: int = typer.Option(5, "--ell-max", min=1, help="Final spherical-harmonic degree ℓ_max."),
        rotations: int = typer.Option(600, "--rotations", min=1, help="Discrete rotations (SO(3) grid)."),
        iterations: str = typer.Option("4,4,6", "--iterations", help="Iterations of each frequency-"
                                       "marching stage (comma-separated; stages march ℓ_max and the "
                                       "band limit from ≈½ to the final values)."),
        batch_fraction: float = typer.Option(0.5, "--batch-fraction", min=0.01, max=1.0,
                                             help="Fraction of the patches in each incremental-EM "
                                                  "minibatch."),
        bin_factor: int = typer.Option(1, "--bin", min=1, help="Fourier-crop the micrographs by this "
                                       "factor first (the output pixel size is the binned one)."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="Micrograph pixel size in Å "
                                                   "before binning (overrides the header)."),
        whiten: bool = typer.Option(True, "--whiten/--no-whiten", help="Whiten each micrograph by its "
                                    "radial power spectrum (and put the same filter in the model)."),
        noise_var: Optional[float] = typer.Option(None, "--noise-var", help="Noise variance per pixel "
                                                  "after whitening (default: estimated from the "
                                                  "quietest patches)."),
        seed: int = typer.Option(0, "--seed", help="Random seed (minibatches, random start)."),
        as_json: bool = JSON_OPTION,
    ):
        """Reconstruct a volume directly from micrographs by approximate, incremental EM over
        patches (no particle picking).

        Writes OUT/volume.mrc (box L, voxel size = binned micrograph pixel size in Å), OUT/iterations.csv
        (log-likelihood per patch, band limit in cycles/pixel and Å, seconds per iteration),
        with --truth OUT/fsc_per_iteration.{csv,png}, and summary.json; the EM state is checkpointed in
        OUT/checkpoints after every iteration (continue an interrupted run with --resume). Progress
        messages: cryoprism -v micrograph-em …, and OUT/job.log.
        """
        from cryoprism.errors import InputError
        from cryoprism.io.job import Job
        from cryoprism.micrograph.pipeline import RunConfig, run_pipeline

        try:
            its = tuple(int(x) for x in iterations.split(",") if x.strip())
        except ValueError:
            raise InputError(f"--iterations: expected comma-separated integers, got {iterations!r}")
        if not its or min(its) < 0:
            raise InputError(f"--iterations: expected non-negative integers, got {iterations!r}")
        for p in list(micrographs) + [q for q in (init, ctf_star, truth) if q is not None]:
            if not Path(p).exists():
                raise InputError("file not found", p)
        cfg = RunConfig(L=particle_box, ell_max=ell_max, n_rotations=rotations, iterations=its,
                        batch_fraction=batch_fraction, bin_factor=bin_factor, whiten=whiten, seed=seed)
        px = pixel_size * bin_factor if pixel_size else None
        settings = {**asdict(cfg), "pixel_size_A": pixel_size, "noise_var": noise_var}
        with Job(out, "micrograph-em", settings, resume=resume) as job:
            run_pipeline(micrographs, cfg, job=job, init_path=init, ctf_star=ctf_star, truth_path=truth,
                         pixel_size_A=px, noise_var=noise_var)
            finish(job, as_json)
