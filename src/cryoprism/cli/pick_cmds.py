"""CLI of picking and extraction: ``pick``, ``extract`` and the chain ``preprocess``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cryoprism.cli.common import JSON_OPTION, emit

_POLARITY = {"auto": None, "bright": 1, "dark": -1}


def _exist(paths):
    from cryoprism.errors import InputError

    for p in paths:
        if p is not None and not Path(p).exists():
            raise InputError("file not found", p)


def _check_micrographs(paths) -> None:
    """Each input is one 2-D section (a micrograph, not a movie or a map), from its header."""
    from cryoprism.errors import InputError
    from cryoprism.io import read_mrc_header

    for p in paths:
        h = read_mrc_header(p)
        if h["nz"] != 1:
            raise InputError(f"expected a micrograph (one 2-D section), found {h['nz']} sections "
                             f"(a movie? motion-correct it first: cryoprism motioncorr)", p)


def _check_chain_inputs(inputs, pixel_size, gain) -> None:
    """What the chain can check before OUT exists: movies' frame sizes (every TIFF page), EER, a gain
    reference of the movies' frame size and a pixel size for every input."""
    from cryoprism.cli.preprocess_cmds import _header_pixel_size, _movie_shape
    from cryoprism.errors import InputError
    from cryoprism.preprocess.chain import is_movie

    movie_shapes = set()
    for p in map(Path, inputs):
        if is_movie(p):
            n, h, w = _movie_shape(p)
            if n < 2:
                raise InputError(f"a movie needs at least 2 frames, found {n}", p)
            movie_shapes.add((h, w))
        if pixel_size is None and _header_pixel_size(p) is None:
            raise InputError("pixel size unknown (MRC header says 0, or TIFF): give --pixel-size", p)
    if gain is not None and movie_shapes:
        from cryoprism.preprocess.movies import read_gain

        for shape in sorted(movie_shapes):
            read_gain(gain, shape)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""

    @app.command("pick")
    def pick_cmd(
        micrographs: List[Path] = typer.Argument(..., help="Micrographs (2-D MRC)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        diameter: float = typer.Option(..., "--diameter", min=1.0, help="Particle diameter in Å."),
        template: Optional[Path] = typer.Option(None, "--template", help="Template picker: a map (3-D MRC; "
                                                "projected over 16 directions × 8 in-plane angles) or "
                                                "2-D class averages (MRC stack .mrcs; 8 in-plane angles)."
                                                " Default: the reference-free blob picker."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Figure-of-merit threshold "
                                                  "(a z-score); default: chosen from the data."),
        polarity: str = typer.Option("auto", "--polarity", help="Particle contrast: auto (from the data), "
                                     "dark (raw micrographs) or bright."),
        ctf_star: Optional[Path] = typer.Option(None, "--ctf", help="micrographs_ctf.star (RELION columns) "
                                                "with the CTF of each micrograph; default: estimated."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore the CTF (no estimate)."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="Micrograph pixel size in Å "
                                                   "(default: the CTF STAR, else the MRC header)."),
        voltage: float = typer.Option(300.0, "--voltage", help="kV (when the CTF is estimated)."),
        cs: float = typer.Option(2.7, "--cs", help="Spherical aberration in mm (idem)."),
        amp: float = typer.Option(0.1, "--amp", help="Amplitude contrast (idem)."),
        variance_z: float = typer.Option(5.0, "--variance-z", help="Reject picks in outlier regions: where "
                                         "the local mean's change across one diameter (carbon/ice edges, "
                                         "aggregates) or the variance in a window three diameters wide "
                                         "is a robust outlier beyond this z-score; 'inf' keeps all."),
        as_json: bool = JSON_OPTION,
    ):
        """Pick particles. Writes OUT/coordinates.star (rlnMicrographName, rlnCoordinateX/Y in pixels of
        the micrograph, rlnAutopickFigureOfMerit) and OUT/picks/NAME.png (the picks drawn on each
        micrograph), OUT/summary.json."""
        from cryoprism.errors import InputError
        from cryoprism.io.job import Job
        from cryoprism.preprocess.extract import ctf_lookup
        from cryoprism.preprocess.pick import pick_files

        _exist(list(micrographs) + [template, ctf_star])
        _check_micrographs(micrographs)  # before OUT is created
        if polarity not in _POLARITY:
            raise InputError(f"--polarity: expected auto, dark or bright, got {polarity!r}")
        table = ctf_lookup(ctf_star)[0] if ctf_star is not None and not no_ctf else None
        job = Job(out, "pick", {"diameter_A": diameter, "template": str(template), "threshold": threshold,
                                "polarity": polarity, "variance_z": variance_z})
        _, figs = pick_files(micrographs, diameter, job, ctf_table=table, estimate=not no_ctf,
                             templates_path=template, threshold=threshold, polarity=_POLARITY[polarity],
                             pixel_size_A=pixel_size, voltage_kV=voltage, cs_mm=cs, amplitude_contrast=amp,
                             variance_z=variance_z)
        job.record(**figs)
        emit(job.finish(), as_json)

    @app.command("extract")
    def extract_cmd(
        micrographs: List[Path] = typer.Argument(..., help="Micrographs (2-D MRC)."),
        coords: Path = typer.Option(..., "--coords", help="Coordinates STAR (rlnMicrographName, "
                                    "rlnCoordinateX/Y in micrograph pixels), e.g. pick's coordinates.star."),
        box: int = typer.Option(..., "--box", min=4, help="Box size in micrograph pixels."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        ctf_star: Optional[Path] = typer.Option(None, "--ctf", help="micrographs_ctf.star: CTF columns added "
                                                "to each particle, optics from its optics table."),
        bin_box: Optional[int] = typer.Option(None, "--bin-box", min=4, help="Fourier-crop each box to this "
                                              "size (pixel size × box/bin-box)."),
        invert: bool = typer.Option(True, "--invert/--no-invert", help="Invert the contrast (RELION's "
                                    "default: raw micrographs have dark particles)."),
        norm: bool = typer.Option(True, "--norm/--no-norm", help="Normalise: background outside a "
                                  "circle of 0.75 × box/2 to mean 0, standard deviation 1."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="Micrograph pixel size in Å "
                                                   "(default: the CTF STAR, else the MRC header)."),
        voltage: float = typer.Option(300.0, "--voltage", help="kV (optics, without --ctf)."),
        cs: float = typer.Option(2.7, "--cs", help="Spherical aberration in mm (idem)."),
        amp: float = typer.Option(0.1, "--amp", help="Amplitude contrast (idem)."),
        as_json: bool = JSON_OPTION,
    ):
        """Extract particle boxes. Writes OUT/particles.star (RELION 3.1: optics table, coordinates,
        rlnMicrographName, CTF of the micrograph, origins in Å of the sub-pixel rounding) and
        OUT/particles.mrcs. Boxes that do not fit in the micrograph are skipped with a warning; a
        coordinate outside its micrograph is an error (exit 2, OUT not created)."""
        from cryoprism.io.job import Job
        from cryoprism.io.star import read_star
        from cryoprism.preprocess.extract import ctf_lookup, extract_particles, group_coordinates

        _exist(list(micrographs) + [coords, ctf_star])
        table = read_star(coords).particles
        ctf_table = ctf_lookup(ctf_star)[0] if ctf_star is not None else None
        _check_micrographs(micrographs)
        group_coordinates(micrographs, table)  # every coordinate checked before OUT is created
        job = Job(out, "extract", {"box": box, "bin_box": bin_box, "invert": invert, "norm": norm})
        figs = extract_particles(micrographs, table, box, job, ctf_table=ctf_table, pixel_size_A=pixel_size,
                                 bin_box=bin_box, invert=invert, normalize_images=norm, voltage_kV=voltage,
                                 cs_mm=cs, amplitude_contrast=amp)
        job.record(**figs)
        emit(job.finish(), as_json)

    @app.command("preprocess")
    def preprocess_cmd(
        inputs: List[Path] = typer.Argument(..., help="Movies (MRC stacks, TIFF) or micrographs (2-D MRC)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        diameter: float = typer.Option(..., "--diameter", min=1.0, help="Particle diameter in Å."),
        box: Optional[int] = typer.Option(None, "--box", min=4, help="Extraction box in micrograph pixels "
                                          "(default: 1.5 × the diameter)."),
        bin_box: Optional[int] = typer.Option(None, "--bin-box", min=4, help="Fourier-crop boxes to this size."),
        template: Optional[Path] = typer.Option(None, "--template", help="Map or 2-D averages for the "
                                                "template picker (default: reference-free)."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Pick threshold (default: "
                                                  "from the data)."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="Pixel size in Å of the "
                                                   "inputs (default: the MRC header)."),
        gain: Optional[Path] = typer.Option(None, "--gain", help="Gain reference (movies)."),
        dose: float = typer.Option(1.0, "--dose-per-frame", help="Dose per frame in e⁻/Å² (movies)."),
        voltage: float = typer.Option(300.0, "--voltage", help="Accelerating voltage in kV."),
        cs: float = typer.Option(2.7, "--cs", help="Spherical aberration in mm."),
        amp: float = typer.Option(0.1, "--amp", help="Amplitude contrast (fraction)."),
        resume: bool = typer.Option(False, "--resume", help="Skip the micrographs finished in OUT/checkpoints."),
        as_json: bool = JSON_OPTION,
    ):
        """Movies or micrographs → motion correction (movies) → CTF estimation → picking → extraction.

        Writes OUT/micrographs/NAME.mrc (dose-weighted sums of movies), OUT/micrographs_ctf.star,
        OUT/picks/NAME.png, OUT/coordinates.star, OUT/particles.star + particles.mrcs (contrast
        inverted when the particles are dark), a checkpoint per micrograph in OUT/checkpoints."""
        from cryoprism.io.checkpoint import digest
        from cryoprism.io.job import Job
        from cryoprism.preprocess.chain import run_preprocess

        _exist(list(inputs) + [template, gain])
        _check_chain_inputs(inputs, pixel_size, gain)  # bad input fails before OUT is created
        job = Job(out, "preprocess", {"diameter_A": diameter, "box": box, "bin_box": bin_box,
                                      "template": str(template), "threshold": threshold,
                                      "pixel_size_A": pixel_size, "dose": dose, "voltage_kV": voltage,
                                      "cs_mm": cs, "amp": amp},
                  {"inputs": digest([str(p) for p in inputs])}, resume=resume)
        figs = run_preprocess(inputs, job, diameter, box, pixel_size_A=pixel_size, voltage_kV=voltage,
                              cs_mm=cs, amplitude_contrast=amp, gain=gain, dose_per_frame_e_A2=dose,
                              templates_path=template, threshold=threshold, bin_box=bin_box)
        job.record(**figs)
        emit(job.finish(), as_json)
