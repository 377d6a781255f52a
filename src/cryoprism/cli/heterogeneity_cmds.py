"""CLI of the heterogeneity area: ``cryoprism heterogeneity``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from cryoprism.cli.common import JSON_OPTION, emit


def _relocate_image_names(table, star_path, out_dir: Path):
    """Rewrite ``rlnImageName`` paths so they resolve from ``out_dir`` (where the new STARs live)."""
    if "rlnImageName" not in table.columns:
        return table
    base = Path(star_path).parent if star_path else Path.cwd()

    def fix(name: str) -> str:
        if "@" not in str(name):
            return name
        idx, path = str(name).split("@", 1)
        p = Path(path)
        if not p.is_absolute():
            p = (base / p) if (base / p).exists() else (Path.cwd() / p)
        return f"{idx}@{os.path.relpath(p.resolve(), out_dir.resolve())}"

    table = table.copy()
    table["rlnImageName"] = [fix(v) for v in table["rlnImageName"]]
    return table


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
                                    help="Number of states C, or 'auto' (from the eigenvalue gap)."),
        method: str = typer.Option("lowrank", "--method",
                                   help="lowrank: matrix-free subspace estimator (any N_res; the "
                                        "default); cg: the seed's dense covariance by CG with the 6-D "
                                        "Toeplitz kernel (N_res ≤ ~10)."),
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
        seed: int = typer.Option(0, "--seed", help="Random seed (range finder, bootstrap, mixture)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoints in "
                                    "OUT/checkpoints (same particles and settings)."),
        as_json: bool = JSON_OPTION,
    ):
        """Find how many conformational states a particle set holds and which particle is which.

        Reads PARTICLES (poses and CTF known). Estimates the noise variance (background pixels), the
        mean volume, the 3-D covariance at N_res (Andén, Katsevich & Singer 2015) and its eigenvolumes,
        the number of states C from the spectral gap (with a bootstrap confidence), per-particle
        coordinates and classes (Gaussian mixture, then per-particle EM), and class volumes at full
        resolution. Writes into OUT: eigenvalues.csv (eigenvalue, gap ratio λ_k/λ_{k+1}), coords.csv
        (α per particle, class), classes.star (the input rows and columns with rlnClassNumber set),
        class_NN.star (each class, ready for refinement), class_NN.mrc (class volumes, Å/px of the
        input), eigvol_NN.mrc (unit-norm eigenvolumes on the full box), report.png. Checkpoints
        (mean, covariance kernel and CG state, range finder, class volumes) go to OUT/checkpoints;
        after an interrupt, the same command with --resume continues. Outputs are written only at
        the end, each atomically.
        """
        from cryoprism.errors import InputError
        from cryoprism.heterogeneity.pipeline import analyze, resolve_nres, write_outputs
        from cryoprism.io import read_particles
        from cryoprism.reconstruct import as_source

        if not particles.exists():
            raise InputError("file not found", particles)
        if method not in ("cg", "lowrank"):
            raise InputError(f"--method must be cg or lowrank, got {method!r}", particles)
        if classes != "auto":
            try:
                C = int(classes)
            except ValueError:
                raise InputError(f"--classes must be 'auto' or an integer, got {classes!r}", particles)
            if C < 1:
                raise InputError("--classes must be at least 1", particles)
        else:
            C = "auto"
        stack = read_particles(particles, pixel_size_A=pixel_size_A)
        if stack.n < 10:
            raise InputError(f"{stack.n} particles: too few for a covariance estimate", particles)
        px = float(stack.pixel_size_A)
        src = as_source(stack)
        N = resolve_nres(stack.box, px, nres, max_res_A, source=src)
        out.mkdir(parents=True, exist_ok=True)
        res = analyze(src, N, method=method, classes=C, cg_iterations=iterations, max_states=max_states,
                      reconstruct=not no_reconstruct, seed=seed, checkpoint_dir=out / "checkpoints",
                      resume=resume, support_radius=support or None)
        star = stack.star
        star_out = _relocated(star, out)
        files = write_outputs(res, out, star=star_out, pixel_size_A=px)
        figures = {
            "particles": stack.n, "box": stack.box, "pixel_size_A": px, "n_res": N,
            "method": res.covariance.method, "cg_iterations": res.covariance.iterations,
            "states": res.n_states, "states_from_gap": res.states.n_states,
            "state_confidence": res.states.confidence,
            "gap_ratios": [float(g) for g in res.states.gaps[:5]],
            "eigenvalues": [float(x) for x in res.covariance.eigenvalues[:8]],
            "class_sizes": [int((res.labels == k).sum()) for k in range(res.n_states)],
            "noise_variance": res.data.info.get("noise_var_L"),
            "seconds": round(res.timings.get("total_s", 0.0), 2),
            "out": str(out), **files,
        }
        human = (f"{stack.n} particles, N_res {N} ({res.covariance.method}): {res.n_states} class(es); "
                 f"{res.states.n_states} state(s) from the gap (λ_k/λ_k+1 = "
                 f"{max(figures['gap_ratios'] or [0]):.2f}, bootstrap agreement "
                 f"{figures['state_confidence']:.2f}); class sizes {figures['class_sizes']}; "
                 f"outputs in {out}")
        emit(figures, as_json, human)

    def _relocated(star, out: Path):
        import copy

        s2 = copy.copy(star)
        s2.particles = _relocate_image_names(star.particles, star.path, out)
        return s2
