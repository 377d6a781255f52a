"""CLI of the pre-processing area (movies → micrographs): ``motioncorr`` and ``ctf-estimate``.

Each command is parse → read → algorithm → :class:`cryoprism.io.job.Job`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, emit

MOVIE_SUFFIXES = {".mrc", ".mrcs", ".tif", ".tiff", ".eer"}


def _movie_paths(inputs) -> list[Path]:
    from cryoprism.errors import InputError

    out = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in MOVIE_SUFFIXES)
            if not found:
                raise InputError("no movies (.mrc, .mrcs, .tif, .tiff) in this folder", p)
            out += found
        elif not p.exists():
            raise InputError("no such file", p)
        else:
            out.append(p)
    stems = [p.stem for p in out]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise InputError(f"two movies share the name {dup!r}; their outputs would collide")
    return out


def _movie_shape(path: Path) -> tuple[int, int, int]:
    """``(n_frames, H, W)`` from the header (TIFF: every page checked), without reading the frames."""
    from cryoprism.errors import InputError
    from cryoprism.io.mrc import read_mrc_header

    suf = path.suffix.lower()
    if suf == ".eer":
        raise InputError("EER movies are not read here; convert them to TIFF first (relion_convert_to_tiff)",
                         path)
    if suf in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shapes = [tuple(sr.shape) for sr in tif.series]
        except (tifffile.TiffFileError, ValueError, OSError) as e:
            raise InputError(f"not a readable TIFF file ({e})", path) from e
        hw = sorted({s[-2:] for s in shapes})
        if len(hw) != 1:
            raise InputError(f"TIFF frames disagree in size: {', '.join('x'.join(map(str, s)) for s in hw)}", path)
        return (int(sum(np.prod(s[:-2], dtype=int) for s in shapes)), *hw[0])
    h = read_mrc_header(path)
    return h["nz"], h["ny"], h["nx"]


def _header_pixel_size(path: Path) -> float | None:
    from cryoprism.io.mrc import read_mrc_header

    if path.suffix.lower() in (".tif", ".tiff"):
        return None
    return read_mrc_header(path)["voxel_size_A"] or None


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""

    @app.command("motioncorr")
    def motioncorr_cmd(
        movies: List[Path] = typer.Argument(..., help="Movies: MRC stacks (.mrc/.mrcs) or TIFF (.tif/.tiff), "
                                            "or folders of them. All must have frames of one size."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        gain: Optional[Path] = typer.Option(None, "--gain", help="Gain reference (MRC or TIFF, one image of "
                                            "the frame size), multiplied into every frame."),
        defects: Optional[Path] = typer.Option(None, "--defects", help="Defect list: text file of 'x y w h' "
                                               "rectangles (pixels) or a defect map (MRC/TIFF, 1 = bad)."),
        dose: float = typer.Option(1.0, "--dose-per-frame", min=0.0, help="Exposure per frame in e⁻/Å² "
                                   "(dose weighting)."),
        pre_exposure: float = typer.Option(0.0, "--pre-exposure", min=0.0, help="Exposure before the first "
                                           "frame, e⁻/Å²."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="Movie pixel size in Å (default: "
                                                   "the MRC header; TIFF needs it)."),
        voltage: float = typer.Option(300.0, "--voltage", help="Accelerating voltage in kV (dose weighting: "
                                      "critical exposure × 0.8 at 200 kV)."),
        cs: float = typer.Option(2.7, "--cs", help="Spherical aberration in mm (written to the optics table)."),
        amp: float = typer.Option(0.1, "--amp", help="Amplitude contrast (written to the optics table)."),
        patches: str = typer.Option("5x5", "--patches", help="Patches NXxNY for the local model; 0 = global "
                                    "alignment only."),
        bfactor_global: float = typer.Option(500.0, "--bfactor-global", help="B-factor of the global alignment, "
                                             "pixel²."),
        bfactor_local: float = typer.Option(150.0, "--bfactor-local", help="B-factor of the patch alignment, "
                                            "pixel²."),
        resume: bool = typer.Option(False, "--resume", help="Skip movies finished by an earlier run into OUT "
                                    "(checkpoints in OUT/checkpoints)."),
        as_json: bool = JSON_OPTION,
    ):
        """Motion-correct movies: global alignment, a smooth local deformation model over patches, dose
        weighting (Grant & Grigorieff 2015).

        Writes, per movie NAME: OUT/NAME.mrc (aligned, dose-weighted sum), OUT/NAME_noDW.mrc (aligned plain
        sum), OUT/NAME.star (RELION-style trajectory: rlnMicrographFrameNumber, rlnMicrographShiftX/Y in
        pixels, global and per patch), OUT/NAME_shifts.png; and OUT/corrected_micrographs.star
        (rlnMicrographName, rlnMicrographMetadata, accumulated motion in Å, optics table), OUT/summary.json.
        """
        from tqdm.auto import tqdm

        from cryoprism.errors import InputError
        from cryoprism.io.job import Job
        from cryoprism.preprocess.motion import _parse_patches

        paths = _movie_paths(movies)
        try:
            npx, npy = _parse_patches(patches)
        except ValueError:
            raise InputError(f"--patches: expected NXxNY (e.g. 5x5) or 0, got {patches!r}") from None
        shapes = [_movie_shape(p) for p in paths]
        for p, s in zip(paths, shapes):
            if s[0] < 2:
                raise InputError(f"a movie needs at least 2 frames, found {s[0]}", p)
            if pixel_size is None and _header_pixel_size(p) is None:
                raise InputError("unknown pixel size (MRC header says 0, or TIFF): give --pixel-size", p)
        if gain is not None:
            from cryoprism.preprocess.movies import read_gain

            g = read_gain(gain, shapes[0][1:])
            for p, s in zip(paths, shapes):
                if s[1:] != g.shape:
                    raise InputError(f"frames are {s[2]}x{s[1]} but the gain reference is {g.shape[1]}x{g.shape[0]}",
                                     p)
        else:
            g = None
        dmask = None
        if defects is not None:
            from cryoprism.preprocess.movies import read_defects

            dmask = read_defects(defects, shapes[0][1:])
        if not 0 <= amp < 1:
            raise InputError(f"--amp must be in [0, 1), got {amp}")
        settings = {"gain": str(gain) if gain else None, "defects": str(defects) if defects else None,
                    "dose_per_frame_e_A2": dose, "pre_exposure_e_A2": pre_exposure, "pixel_size_A": pixel_size,
                    "voltage_kV": voltage, "patches": [npx, npy], "bfactor_global_px2": bfactor_global,
                    "bfactor_local_px2": bfactor_local}
        job = Job(out, "motioncorr", settings, resume=resume)
        summary = motioncorr_movies(job, paths, g, dmask, settings, cs, amp,
                                    progress=lambda it: tqdm(it, desc="movies", leave=False, disable=len(paths) < 2))
        emit(summary, as_json)

    @app.command("ctf-estimate")
    def ctf_estimate_cmd(
        inputs: List[Path] = typer.Argument(..., help="Micrographs (2-D MRC), folders of them, or one STAR "
                                            "file of micrographs (rlnMicrographName, optics table)."),
        out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder: micrographs_ctf.star and "
                                           "ctf_plots/NAME_ctf.png. Needed for more than one micrograph; "
                                           "without it one micrograph's fit is printed."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="Pixel size in Å (default: the "
                                                   "STAR optics, else the MRC header)."),
        voltage: Optional[float] = typer.Option(None, "--voltage", help="Accelerating voltage in kV (default: "
                                                "the STAR optics, else 300)."),
        cs: Optional[float] = typer.Option(None, "--cs", help="Spherical aberration in mm (default: STAR optics, "
                                           "else 2.7)."),
        amp: Optional[float] = typer.Option(None, "--amp", "--amp-contrast", help="Amplitude contrast (fraction; "
                                            "default: STAR optics, else 0.1)."),
        tile: int = typer.Option(512, "--tile", help="Periodogram tile size in pixels (50 % overlap)."),
        res_low: float = typer.Option(30.0, "--res-low", help="Low-resolution limit of the fit in Å."),
        res_high: float = typer.Option(5.0, "--res-high", help="High-resolution limit of the fit in Å."),
        defocus_min: float = typer.Option(2000.0, "--defocus-min", help="Smallest defocus searched, Å."),
        defocus_max: float = typer.Option(60000.0, "--defocus-max", help="Largest defocus searched, Å."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="One micrograph without -o: write its "
                                            "diagnostic PNG here."),
        as_json: bool = JSON_OPTION,
    ):
        """Estimate defocus U, V (Å, positive underfocus) and astigmatism angle (degrees) from the Thon
        rings of micrographs, in parallel over micrographs.

        With -o OUT: writes OUT/micrographs_ctf.star (input rows and columns kept, plus rlnDefocusU/V,
        rlnDefocusAngle, rlnCtfAstigmatism, rlnCtfMaxResolution in Å, rlnCtfFigureOfMerit = correlation of
        the fit, rlnCtfImage; optics table), one diagnostic PNG per micrograph in OUT/ctf_plots/ and
        OUT/summary.json. Without -o (one micrograph): prints the fit; --plot writes its PNG.
        """
        from cryoprism.errors import InputError
        from cryoprism.preprocess.ctf_batch import collect_micrographs, estimate_ctf_many

        kw = dict(tile_px=tile, resolution_range_A=(res_low, res_high), defocus_range_A=(defocus_min, defocus_max))
        if out is None:
            ml = collect_micrographs(inputs)
            if len(ml.paths) != 1:
                raise InputError(f"{len(ml.paths)} micrographs: give an output folder with -o")
            _ctf_one(ml.paths[0], pixel_size, voltage, cs, amp, plot, as_json, kw)
            return
        from cryoprism.io.job import Job

        settings = {"pixel_size_A": pixel_size, "voltage_kV": voltage, "cs_mm": cs, "amplitude_contrast": amp,
                    "tile_px": tile, "res_low_A": res_low, "res_high_A": res_high,
                    "defocus_range_A": [defocus_min, defocus_max]}
        collect_micrographs(inputs)  # bad input fails before OUT is created
        job = Job(out, "ctf-estimate", settings)
        res = estimate_ctf_many(inputs, job=job, pixel_size_A=pixel_size, voltage_kV=voltage, cs_mm=cs,
                                amplitude_contrast=amp, **kw)
        t = res["table"]
        job.record(micrographs=len(t), star=res["star"],
                   defocus_mean_A=float((0.5 * (t["rlnDefocusU"] + t["rlnDefocusV"])).mean()),
                   fit_resolution_median_A=float(t["rlnCtfMaxResolution"].median()),
                   figure_of_merit_median=float(t["rlnCtfFigureOfMerit"].median()))
        summary = job.finish()
        emit(summary, as_json)


def _ctf_one(micrograph, pixel_size, voltage, cs, amp, plot, as_json, kw):
    """The single-micrograph behaviour: print the fit, optional PNG."""
    from cryoprism.ctf import estimate_ctf
    from cryoprism.errors import InputError
    from cryoprism.io import read_mrc
    from cryoprism.io.job import Job

    voltage = 300.0 if voltage is None else voltage
    cs = 2.7 if cs is None else cs
    amp = 0.1 if amp is None else amp
    t0 = time.time()
    m, hdr_px = read_mrc(micrograph, ndim=2, finite=True)
    px = pixel_size or hdr_px
    if not px:
        raise InputError("unknown pixel size (header says 0): give --pixel-size", micrograph)
    if not 0 <= amp < 1:
        raise InputError(f"--amp must be in [0, 1), got {amp}")
    try:
        fit, extra = estimate_ctf(m, px, voltage, cs, amp, return_spectrum=True, **kw)
    except ValueError as e:
        raise InputError(str(e), micrograph) from e
    job = Job.for_file(plot or micrograph, "ctf-estimate")
    if plot is not None:
        from cryoprism.report.ctf_fit import ctf_fit_figure

        job.save_figure(Path(plot).name, ctf_fit_figure(fit, extra, px, voltage, cs, amp,
                                                         title=Path(micrograph).name), dpi=100)
    fig_ = {"micrograph": str(micrograph), "pixel_size_A": px, "voltage_kV": voltage, "cs_mm": cs,
            "amplitude_contrast": amp, **fit.to_dict(),
            "defocus_mean_A": 0.5 * (fit.defocus_u_A + fit.defocus_v_A),
            "astigmatism_A": fit.defocus_u_A - fit.defocus_v_A, "plot": str(plot) if plot else None,
            "seconds": round(time.time() - t0, 3)}
    human = (f"defocus U: {fit.defocus_u_A:.1f} Å\ndefocus V: {fit.defocus_v_A:.1f} Å\n"
             f"angle: {fit.defocus_angle_deg:.2f}°\nscore: {fit.score:.4f}\n"
             f"fit resolution: {fit.fit_resolution_A:.2f} Å")
    emit(fig_, as_json, human)


def motioncorr_movies(job, paths, gain, defect_mask, settings: dict, cs_mm: float = 2.7,
                      amplitude_contrast: float = 0.1, progress=None) -> dict:
    """Motion-correct ``paths`` into ``job`` (per-movie checkpoint: a resumed job skips finished movies)."""
    import pandas as pd

    from cryoprism.errors import InputError
    from cryoprism.preprocess.motion import align_movie, plot_trajectories, trajectory_star
    from cryoprism.preprocess.movies import read_movie

    rows = []
    done = skipped = 0
    it = progress(paths) if progress else paths
    for path in it:
        stem = path.stem
        st = path.stat()
        ident = {"movie": str(path.resolve()), "size": int(st.st_size), "mtime": float(st.st_mtime)}
        ck = job.checkpoints.load(f"movie_{stem}")
        outs = [job.out / f"{stem}.mrc", job.out / f"{stem}_noDW.mrc", job.out / f"{stem}.star"]
        if ck is not None and all(p.exists() for p in outs) and all(ck[1].get(k) == v for k, v in ident.items()):
            arrays, meta = ck
            rows.append(meta["row"])
            skipped += 1
            job.log.info("%s: finished earlier, skipped", path)
            continue
        frames, hdr_px = read_movie(path, gain, defects=defect_mask)
        px = settings.get("pixel_size_A") or hdr_px
        if not px:
            raise InputError("unknown pixel size (header says 0 or TIFF): give --pixel-size", path)
        t0 = time.perf_counter()
        res = align_movie(frames, px, dose_per_frame_e_A2=settings["dose_per_frame_e_A2"],
                          voltage_kV=settings["voltage_kV"], pre_exposure_e_A2=settings["pre_exposure_e_A2"],
                          patches=tuple(settings["patches"]), bfactor_global_px2=settings["bfactor_global_px2"],
                          bfactor_local_px2=settings["bfactor_local_px2"])
        del frames
        job.write_mrc(f"{stem}.mrc", res.dose_weighted, px)
        job.write_mrc(f"{stem}_noDW.mrc", res.plain_sum, px)
        job.write_star(f"{stem}.star", trajectory_star(res, str(path)))
        job.save_figure(f"{stem}_shifts.png", plot_trajectories(res, path.name))
        stats = res.stats()
        row = {"rlnMicrographName": f"{stem}.mrc", "rlnMicrographMetadata": f"{stem}.star",
               "rlnAccumMotionTotal": stats["total_motion_A"], "rlnAccumMotionEarly": stats["early_motion_A"],
               "rlnAccumMotionLate": stats["late_motion_A"], "pixel_size_A": float(px),
               "seconds": round(time.perf_counter() - t0, 2)}
        job.checkpoints.save(f"movie_{stem}", {"shifts_px": res.shifts_px}, row=row, **ident)
        job.log.info("%s: %d frames, %.1f Å total motion, %.1f s", path, res.n_frames, stats["total_motion_A"],
                     row["seconds"])
        rows.append(row)
        done += 1
    table = pd.DataFrame(rows)
    pxs = sorted(set(table["pixel_size_A"]))
    table["rlnOpticsGroup"] = [pxs.index(p) + 1 for p in table["pixel_size_A"]]
    optics = pd.DataFrame({"rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(len(pxs))],
                           "rlnOpticsGroup": np.arange(1, len(pxs) + 1),
                           "rlnMicrographOriginalPixelSize": pxs, "rlnMicrographPixelSize": pxs,
                           "rlnVoltage": settings["voltage_kV"], "rlnSphericalAberration": cs_mm,
                           "rlnAmplitudeContrast": amplitude_contrast})
    from cryoprism.io.star import StarFile

    star_cols = ["rlnMicrographName", "rlnMicrographMetadata", "rlnOpticsGroup", "rlnAccumMotionTotal",
                 "rlnAccumMotionEarly", "rlnAccumMotionLate"]
    star = job.write_star("corrected_micrographs.star",
                          StarFile(table[star_cols], optics, {}, "3.1", "micrographs", "optics", None, 30001))
    job.record(movies=len(paths), corrected=done, skipped=skipped, star=star,
               total_motion_A=[round(float(v), 2) for v in table["rlnAccumMotionTotal"]],
               seconds_per_movie=[r.get("seconds") for r in rows])
    return job.finish()
