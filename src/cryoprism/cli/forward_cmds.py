"""CLI of the forward area: ``simulate``, ``simulate-micrographs``, ``project`` (docs/forward.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, finish

_MODEL_SUFFIXES = {".pdb", ".cif", ".ent", ".mmcif", ".gz"}


def _load_volumes(paths: list[Path], pixel_size_A: float | None, box: int | None,
                  resolution_A: float) -> tuple[list[np.ndarray], float]:
    """MRC maps (pixel size from the header unless given) or atomic models (need box, pixel size)."""
    from cryoprism.errors import InputError
    from cryoprism.forward import volume_from_pdb
    from cryoprism.io import read_mrc

    vols, px = [], pixel_size_A
    for p in paths:
        if not Path(p).exists():
            raise InputError("file not found", p)
        if Path(p).suffix.lower() in _MODEL_SUFFIXES:
            if box is None or pixel_size_A is None:
                raise InputError("an atomic model needs --box (pixels) and --pixel-size (Å)", p)
            vols.append(volume_from_pdb(p, box, pixel_size_A, resolution_A))
            continue
        v, vs = read_mrc(p)
        if v.ndim != 3 or len(set(v.shape)) != 1:
            raise InputError(f"expected a cubic volume, got shape {v.shape}", p)
        if px is None:
            px = vs
        if px is None or px <= 0:
            raise InputError("voxel size unknown (0 in the header): pass --pixel-size", p)
        vols.append(np.asarray(v, np.float32))
    L = {v.shape[0] for v in vols}
    if len(L) != 1:
        raise InputError(f"volumes have different box sizes {sorted(L)}; expected one", paths[0])
    return vols, float(px)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""

    @app.command("simulate")
    def simulate(
        volumes: List[Path] = typer.Argument(..., help="One volume per state: MRC maps, or PDB/mmCIF "
                                                       "models (then --box and --pixel-size are needed)."),
        out_star: Path = typer.Option(..., "-o", "--out", help="Output RELION 3.1 STAR file."),
        out_stack: Optional[Path] = typer.Option(None, "--stack", help="Output MRCS stack "
                                                 "(default: next to the STAR, same name .mrcs)."),
        n: int = typer.Option(1000, "-n", help="Number of particles."),
        pixel_size_A: Optional[float] = typer.Option(None, "--pixel-size", help="Pixel size in Å "
                                                     "(default: the MRC header)."),
        box: Optional[int] = typer.Option(None, "--box", help="Box size in pixels for atomic models."),
        resolution_A: float = typer.Option(4.0, "--model-resolution", help="Resolution in Å of maps "
                                           "made from atomic models (Gaussian σ = res/(π√2))."),
        snr: float = typer.Option(0.1, "--snr", help="Signal-to-noise ratio: mean ‖CTF-affected clean "
                                  "image‖² / (L² σ²). 0 or below: noiseless."),
        shift_std_A: float = typer.Option(0.0, "--shift-std", help="Std of the origins (Å) per axis."),
        weights: Optional[str] = typer.Option(None, "--weights", help="State probabilities, comma "
                                              "separated (default equal)."),
        defocus_min_A: float = typer.Option(10000.0, "--defocus-min", help="Smallest defocus (Å)."),
        defocus_max_A: float = typer.Option(30000.0, "--defocus-max", help="Largest defocus (Å)."),
        groups: int = typer.Option(10, "--defocus-groups", help="Number of defocus groups."),
        astig_A: float = typer.Option(500.0, "--astigmatism", help="Max defocus U − V (Å)."),
        voltage_kV: float = typer.Option(300.0, "--voltage", help="Voltage (kV)."),
        cs_mm: float = typer.Option(2.7, "--cs", help="Spherical aberration (mm)."),
        amp: float = typer.Option(0.1, "--amp", "--amp-contrast", help="Amplitude contrast (fraction)."),
        bfactor: float = typer.Option(0.0, "--bfactor", help="CTF B-factor (Å²)."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Do not apply the CTF."),
        noise: str = typer.Option("white", "--noise", help="Noise colour: white, pink or brown."),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        batch_size: int = typer.Option(256, "--batch-size", help="Particles per batch."),
        as_json: bool = JSON_OPTION,
    ):
        """Simulate particles: reads VOLUMES, writes a RELION 3.1 STAR (poses, origins in Å, CTF,
        true state in rlnClassNumber) and an MRCS stack, streamed in batches."""
        from cryoprism.forward import simulate_particles
        from cryoprism.io.job import Job

        vols, px = _load_volumes(volumes, pixel_size_A, box, resolution_A)
        stack = out_stack or out_star.with_suffix(".mrcs")
        w = None if weights is None else [float(v) for v in weights.split(",")]
        job = Job.for_file(out_star, "simulate")
        t0 = time.perf_counter()
        r = simulate_particles(vols, n, px, snr=snr if snr > 0 else None, shift_std_A=shift_std_A,
                               state_weights=w, defocus_range_A=(defocus_min_A, defocus_max_A),
                               n_defocus_groups=groups, astigmatism_A=astig_A, voltage_kV=voltage_kV,
                               cs_mm=cs_mm, amplitude_contrast=amp, bfactor_A2=bfactor, ctf=not no_ctf,
                               noise_color=noise, rng=seed, out_star=out_star.name, out_mrcs=stack.resolve(),
                               batch_size=batch_size, job=job)
        dt = time.perf_counter() - t0
        job.record(star=r.star_path, stack=r.stack_path, particles=n, box=int(vols[0].shape[0]), pixel_size_A=px,
                   states=len(vols), snr_target=r.snr_target, snr_realised=r.snr_realised,
                   noise_sigma=r.noise_sigma, seconds=dt, images_per_s=n / dt if dt > 0 else None)
        finish(job, as_json)

    @app.command("simulate-micrographs")
    def simulate_micrographs_cmd(
        volumes: List[Path] = typer.Argument(..., help="One volume per state (MRC) or atomic models."),
        out_dir: Path = typer.Option(..., "-o", "--out", help="Output folder: micrograph_XXXX.mrc and "
                                     "coordinates.star (true centres in pixels, state, angles)."),
        m: int = typer.Option(4, "-m", "--micrographs", help="Number of micrographs."),
        size: int = typer.Option(1024, "--size", help="Micrograph side in pixels."),
        particles: int = typer.Option(50, "--particles", help="Particles per micrograph (at most)."),
        separation: str = typer.Option("well-separated", "--separation", help="well-separated (centres "
                                       "≥ 2L apart), non-overlapping (≥ L), or a distance in pixels."),
        pixel_size_A: Optional[float] = typer.Option(None, "--pixel-size", help="Pixel size (Å)."),
        box: Optional[int] = typer.Option(None, "--box", help="Box size (pixels) for atomic models."),
        resolution_A: float = typer.Option(4.0, "--model-resolution", help="Model map resolution (Å)."),
        snr: float = typer.Option(0.1, "--snr", help="Per-particle SNR (see docs/forward.md); ≤0 noiseless."),
        defocus_min_A: float = typer.Option(10000.0, "--defocus-min", help="Smallest defocus (Å)."),
        defocus_max_A: float = typer.Option(30000.0, "--defocus-max", help="Largest defocus (Å)."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Do not apply the CTF."),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        as_json: bool = JSON_OPTION,
    ):
        """Simulate micrographs: reads VOLUMES, writes MRC micrographs and the true coordinates STAR."""
        from cryoprism.forward import simulate_micrographs
        from cryoprism.io.job import Job

        vols, px = _load_volumes(volumes, pixel_size_A, box, resolution_A)
        sep = separation if separation in ("well-separated", "non-overlapping") else float(separation)
        t0 = time.perf_counter()
        with Job(out_dir, "simulate-micrographs", {"micrographs": m, "size_px": size, "particles": particles,
                                                   "separation": separation, "snr": snr, "seed": seed}) as job:
            r = simulate_micrographs(vols, m, size, particles, px, separation=sep,
                                     snr=snr if snr > 0 else None, defocus_range_A=(defocus_min_A, defocus_max_A),
                                     ctf=not no_ctf, rng=seed, job=job)
            job.record(folder=out_dir, micrographs=m, size_px=size, pixel_size_A=px,
                       particles=int(len(r.coordinates)), coordinates=r.star_path,
                       seconds=time.perf_counter() - t0)
            finish(job, as_json)

    @app.command("project")
    def project_cmd(
        volume: Path = typer.Argument(..., help="Volume (MRC) to project."),
        out_stack: Path = typer.Option(..., "-o", "--out", help="Output MRCS stack."),
        star: Optional[Path] = typer.Option(None, "--star", help="Take poses, origins (Å) and CTF from "
                                            "this STAR; writes OUT with a .star next to it."),
        n: int = typer.Option(100, "-n", help="Without --star: number of uniformly random poses."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore the CTF of --star."),
        seed: int = typer.Option(0, "--seed", help="Random seed (random poses)."),
        batch_size: int = typer.Option(1000, "--batch-size", help="Particles per batch."),
        as_json: bool = JSON_OPTION,
    ):
        """Noiseless projections of VOLUME: reads VOLUME (and --star), writes OUT (MRCS) and a
        RELION 3.1 STAR with the poses used (OUT with suffix .star)."""
        from cryoprism.forward import simulate_particles
        from cryoprism.io import read_mrc, read_particles
        from cryoprism.io.job import Job

        vol, px = read_mrc(volume)
        t0 = time.perf_counter()
        out_star = out_stack.with_suffix(".star")
        job = Job.for_file(out_stack, "project")
        if star is None:
            if not px:
                from cryoprism.errors import InputError
                raise InputError("voxel size unknown (0 in the header)", volume)
            simulate_particles(vol, n, px, snr=None, ctf=False, rng=seed, out_star=out_star.name,
                               out_mrcs=out_stack.name, batch_size=batch_size, job=job)
            count = n
        else:
            from cryoprism.ctf.model import ctf_2d
            from cryoprism.forward import project
            from cryoprism.parallel.core import batch_ranges

            stack = read_particles(star)
            psz = stack.pixel_size_A
            rot, org = stack.rotations(), stack.origins_A() / psz
            cp = None if no_ctf else stack.ctf_params()
            if vol.shape[0] != stack.box:
                from cryoprism.errors import InputError
                raise InputError(f"volume box {vol.shape[0]} differs from particle box {stack.box}", volume)

            def batches():
                for a, b in batch_ranges(stack.n, batch_size):
                    c = None if cp is None else ctf_2d(stack.box, psz, cp.take(np.arange(a, b)))
                    yield project(vol, rot[a:b], org[a:b], c)

            job.write_particles(out_star.name, out_stack.name, batches(), stack.star, pixel_size_A=psz)
            count = stack.n
        job.record(stack=out_stack, star=out_star, images=count, seconds=time.perf_counter() - t0)
        finish(job, as_json)
