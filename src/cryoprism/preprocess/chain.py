"""The preprocessing chain: movies or micrographs → motion correction → CTF → picks → particles.

Per input, in order: (movies only) motion correction with dose weighting
(:mod:`cryoprism.preprocess.motion`), the aligned dose-weighted sum written to
``OUT/micrographs/NAME.mrc``; CTF estimation (:func:`cryoprism.ctf.estimate_ctf`); picking
(:func:`cryoprism.preprocess.pick.pick_micrograph`, picks drawn in ``OUT/picks/NAME.png``). Each
finished micrograph is checkpointed (``OUT/checkpoints``), so a rerun with ``--resume`` skips it.
Then ``OUT/micrographs_ctf.star`` (RELION columns), ``OUT/coordinates.star`` and the extraction of all
picks (``OUT/particles.star`` + ``OUT/particles.mrcs``, contrast inverted when the particles are dark).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryoprism.errors import InputError
from cryoprism.preprocess.ctf_batch import ctf_row, write_micrographs_star

MOVIE_SUFFIXES = (".tif", ".tiff", ".eer")


def is_movie(path) -> bool:
    """A movie: a TIFF/EER file, or an MRC file with more than one section (frames)."""
    p = Path(path)
    if p.suffix.lower() in MOVIE_SUFFIXES:
        return True
    from cryoprism.io import read_mrc_header

    h = read_mrc_header(p)
    return len(h["shape"]) == 3 and h["nz"] > 1


def motion_correct(path, pixel_size_A: float | None, gain=None, dose_per_frame_e_A2: float = 1.0):
    """The aligned dose-weighted sum of a movie (:mod:`cryoprism.preprocess.motion`) and its pixel size."""
    from cryoprism.preprocess.motion import align_movie
    from cryoprism.preprocess.movies import read_movie

    frames, header_px = read_movie(path, gain)
    px = pixel_size_A or header_px
    if not px:
        raise InputError("pixel size unknown: give --pixel-size", path)
    res = align_movie(frames, px, dose_per_frame_e_A2=dose_per_frame_e_A2)
    return np.asarray(res.dose_weighted, np.float32), float(px)


def ctf_star_table(rows: list[dict], pixel_size_A: float, voltage_kV: float, cs_mm: float,
                   amplitude_contrast: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A RELION micrographs_ctf.star: (micrographs table, optics table)."""
    t = pd.DataFrame(rows)
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [float(pixel_size_A)], "rlnVoltage": [float(voltage_kV)],
                           "rlnSphericalAberration": [float(cs_mm)],
                           "rlnAmplitudeContrast": [float(amplitude_contrast)]})
    return t, optics


def run_preprocess(inputs, job, diameter_A: float, box: int | None = None, *,
                   pixel_size_A: float | None = None, voltage_kV: float = 300.0, cs_mm: float = 2.7,
                   amplitude_contrast: float = 0.1, gain=None, dose_per_frame_e_A2: float = 1.0,
                   templates_path=None, threshold: float | None = None, bin_box: int | None = None,
                   progress: bool = True) -> dict:
    """Run the chain (module doc) over ``inputs`` into ``job``; returns the summary figures.

    ``box``: extraction box in micrograph pixels (default: 1.5 × the diameter, even).
    """
    from tqdm import tqdm

    from cryoprism.ctf import estimate_ctf
    from cryoprism.io import read_mrc
    from cryoprism.preprocess.extract import extract_particles
    from cryoprism.preprocess.pick import (
        PNG_DPI,
        Picks,
        load_templates,
        pick_micrograph,
        picks_table,
        plot_picks,
    )

    inputs = [Path(p) for p in inputs]
    stems = [p.stem for p in inputs]
    if len(set(stems)) != len(stems):
        raise InputError("two inputs share a file name; the chain names its outputs after them")
    ck = job.checkpoints
    ctf_rows, coords, mic_paths, pols, pxs = [], [], [], [], []
    templates = None
    n_skipped = 0
    for i, path in enumerate(tqdm(inputs, desc="preprocess", unit="mic", disable=not progress)):
        name = f"mic_{i:05d}"
        done = ck.load(name)
        if done is not None:
            arr, meta = done
            n_skipped += 1
            mic_path, px = meta["micrograph"], float(meta["pixel_size_A"])
            ctf_rows.append(meta["ctf_row"])
            p_x, p_y, p_f = arr["x"], arr["y"], arr["fom"]
            pol = int(meta["polarity"])
        else:
            if is_movie(path):
                mic, px = motion_correct(path, pixel_size_A, gain, dose_per_frame_e_A2)
                mic_path = str(job.write_mrc(f"micrographs/{path.stem}.mrc", mic, px))
            else:
                mic, hpx = read_mrc(path, ndim=2, finite=True)
                px = pixel_size_A or hpx
                if not px:
                    raise InputError("pixel size unknown: give --pixel-size", path)
                mic_path = str(path)
            try:
                fit = estimate_ctf(mic, px, voltage_kV, cs_mm, amplitude_contrast)
            except ValueError as e:
                raise InputError(str(e), path) from e
            row = {"rlnMicrographName": mic_path, "rlnOpticsGroup": 1, **ctf_row(fit)}
            ctf = fit.params(voltage_kV, cs_mm, amplitude_contrast)
            if templates_path is not None and templates is None:
                templates = load_templates(templates_path, px, diameter_A)
            picks = pick_micrograph(mic, px, diameter_A, ctf=ctf, templates=templates, threshold=threshold)
            job.save_figure(f"picks/{path.stem}.png", plot_picks(
                mic, picks, diameter_A / px, f"{path.name}: {len(picks)} picks (threshold "
                f"{picks.threshold:.2f})"), dpi=PNG_DPI)
            p_x, p_y, p_f, pol = picks.x, picks.y, picks.fom, picks.polarity
            ctf_rows.append({k: (v if k in ("rlnMicrographName", "rlnOpticsGroup") else float(v))
                             for k, v in row.items()})
            ck.save(name, {"x": p_x, "y": p_y, "fom": p_f}, micrograph=mic_path, pixel_size_A=px,
                    ctf_row=ctf_rows[-1], polarity=pol)
            job.log.info("%s: defocus %.0f/%.0f Å, %d picks", path.name, fit.defocus_u_A, fit.defocus_v_A,
                         len(picks))
        mic_paths.append(mic_path)
        pxs.append(px)
        pols.append(pol)
        coords.append(picks_table(mic_path, Picks(np.asarray(p_x), np.asarray(p_y), np.asarray(p_f), 0.0, pol)))
    if len(set(np.round(pxs, 5))) > 1:
        raise InputError("inputs have different pixel sizes; run them separately")
    px = pxs[0]
    t, optics = ctf_star_table(ctf_rows, px, voltage_kV, cs_mm, amplitude_contrast)
    write_micrographs_star(job, t, optics)
    table = pd.concat(coords, ignore_index=True)
    job.write_star("coordinates.star", table)
    if box is None:
        box = int(2 * round(0.75 * diameter_A / px))
    ctf_table = t.merge(optics.drop(columns=["rlnOpticsGroupName"]), on="rlnOpticsGroup")
    dark = int(np.sum(np.asarray(pols) < 0)) > len(pols) / 2
    figs = {"micrographs": len(inputs), "resumed": n_skipped, "picks": int(len(table)),
            "picks_per_micrograph": [int(np.sum(table.rlnMicrographName == m)) for m in mic_paths],
            "defocus_mean_A": [0.5 * (r["rlnDefocusU"] + r["rlnDefocusV"]) for r in ctf_rows],
            "inverted": dark}
    if len(table):
        figs.update(extract_particles(mic_paths, table, box, job, ctf_table=ctf_table, pixel_size_A=px,
                                      bin_box=bin_box, invert=dark, voltage_kV=voltage_kV, cs_mm=cs_mm,
                                      amplitude_contrast=amplitude_contrast, progress=progress))
    return figs
