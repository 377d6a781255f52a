"""CTF estimation over many micrographs: inputs, parallel fits, ``micrographs_ctf.star``, one diagnostic
PNG per micrograph (docs/preprocess.md, "CTF for many micrographs").

The fit itself is :func:`cryoprism.ctf.estimate_ctf`. Micrographs run in parallel through
:func:`cryoprism.parallel.map_batches` (one micrograph per task). The output STAR keeps the rows and
columns of an input STAR and appends RELION's CTF columns (``rlnDefocusU/V``, ``rlnDefocusAngle``,
``rlnCtfAstigmatism``, ``rlnCtfMaxResolution``, ``rlnCtfFigureOfMerit``, ``rlnCtfImage``) with an
optics table (pixel size, voltage, Cs, amplitude contrast). The figure is
:func:`cryoprism.report.ctf_fit.ctf_fit_figure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoprism.errors import InputError

MIC_SUFFIXES = {".mrc"}


@dataclass
class MicrographList:
    """Micrographs to process: resolved paths, the table written back (input rows kept) and optics."""

    paths: list[Path]
    table: pd.DataFrame  # one row per micrograph, rlnMicrographName first for non-STAR inputs
    optics: pd.DataFrame | None  # from an input STAR, else None


def collect_micrographs(inputs) -> MicrographList:
    """Resolve files, folders (every ``*.mrc`` inside, sorted) and STAR files (``rlnMicrographName``,
    relative to the STAR's folder, then to the current one) into one list. A STAR must be the only
    input (its rows and optics are kept)."""
    from cryoprism.io.star import read_star

    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise InputError("no micrographs given")
    stars = [p for p in inputs if p.suffix.lower() == ".star"]
    if stars:
        if len(inputs) > 1:
            raise InputError("a STAR file of micrographs must be the only input", stars[0])
        st = read_star(stars[0])
        t = st.particles.reset_index(drop=True)
        if "rlnMicrographName" not in t.columns:
            raise InputError("no rlnMicrographName column (expected a STAR file of micrographs)", stars[0])
        paths = []
        for name in t["rlnMicrographName"].astype(str):
            p = Path(name)
            cands = [p] if p.is_absolute() else [stars[0].parent / p, p]
            hit = next((c for c in cands if c.exists()), None)
            if hit is None:
                raise InputError(f"micrograph {name} not found (relative to the STAR file's folder or "
                                 f"the current one)", stars[0])
            paths.append(hit)
        return MicrographList(paths, t, st.optics if st.style != "3.0" else None)
    paths = []
    for p in inputs:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in MIC_SUFFIXES)
            if not found:
                raise InputError("no .mrc micrographs in this folder", p)
            paths += found
        elif not p.exists():
            raise InputError("no such file", p)
        elif p.suffix.lower() not in MIC_SUFFIXES | {".mrcs"}:
            raise InputError(f"expected an MRC micrograph (.mrc), a folder or a STAR file, got {p.suffix!r}", p)
        else:
            paths.append(p)
    return MicrographList(paths, pd.DataFrame({"rlnMicrographName": [str(p) for p in paths]}), None)


def _optics_value(ml: MicrographList, i: int, column: str, given, default):
    """Per-micrograph optics value: the option if given, else the input STAR's optics, else default."""
    if given is not None:
        return float(given)
    if ml.optics is not None and column in ml.optics.columns:
        if "rlnOpticsGroup" in ml.table.columns and "rlnOpticsGroup" in ml.optics.columns:
            g = ml.table["rlnOpticsGroup"].iloc[i]
            row = ml.optics[ml.optics["rlnOpticsGroup"] == g]
            if len(row):
                return float(row[column].iloc[0])
        return float(ml.optics[column].iloc[0])
    return default


def ctf_row(fit) -> dict:
    """RELION CTF columns of one fit."""
    return {"rlnDefocusU": fit.defocus_u_A, "rlnDefocusV": fit.defocus_v_A,
            "rlnDefocusAngle": fit.defocus_angle_deg,
            "rlnCtfAstigmatism": fit.defocus_u_A - fit.defocus_v_A,
            "rlnCtfMaxResolution": fit.fit_resolution_A, "rlnCtfFigureOfMerit": fit.score}


def estimate_ctf_many(inputs, *, job=None, pixel_size_A: float | None = None, voltage_kV: float | None = None,
                      cs_mm: float | None = None, amplitude_contrast: float | None = None, plots: bool = True,
                      n_workers: int | None = None, progress: bool = True, **estimate_kw) -> dict:
    """Fit the CTF of every micrograph of ``inputs`` (files, folders or one STAR; see
    :func:`collect_micrographs`). With a ``job``, writes ``micrographs_ctf.star`` and
    ``ctf_plots/<name>_ctf.png`` through it. Returns ``{"table", "optics", "fits", "star", "plots"}``.

    Optics: an option given here wins, else the input STAR's optics, else 300 kV, 2.7 mm, 0.1; the pixel
    size: the option, else the STAR optics (``rlnMicrographPixelSize``), else each MRC header.
    """
    from cryoprism.ctf import estimate_ctf
    from cryoprism.io.mrc import read_mrc
    from cryoprism.parallel import map_batches
    from cryoprism.report.ctf_fit import ctf_fit_figure

    ml = collect_micrographs(inputs)
    n = len(ml.paths)
    opt = []
    for i in range(n):
        opt.append((_optics_value(ml, i, "rlnVoltage", voltage_kV, 300.0),
                    _optics_value(ml, i, "rlnSphericalAberration", cs_mm, 2.7),
                    _optics_value(ml, i, "rlnAmplitudeContrast", amplitude_contrast, 0.1),
                    _optics_value(ml, i, "rlnMicrographPixelSize", pixel_size_A, None)))
    for v, cs, q, _ in opt:
        if not 0 <= q < 1:
            raise InputError(f"amplitude contrast must be in [0, 1), got {q}")
    stems = _unique_stems(ml.paths)

    def one(i):
        path = ml.paths[i]
        m, hdr = read_mrc(path, ndim=2, finite=True)
        v, cs, q, px = opt[i]
        px = px or hdr
        if not px:
            raise InputError("unknown pixel size (header says 0): give --pixel-size", path)
        try:
            fit, extra = estimate_ctf(m, px, v, cs, q, return_spectrum=True, **estimate_kw)
        except ValueError as e:
            raise InputError(str(e), path) from e
        png = None
        if plots and job is not None:
            fig = ctf_fit_figure(fit, extra, px, v, cs, q, title=path.name)
            png = job.save_figure(f"ctf_plots/{stems[i]}_ctf.png", fig)
        return fit, px, png

    res = map_batches(one, list(range(n)), n_workers=n_workers, desc="micrographs", progress=progress)
    fits = [r[0] for r in res]
    table = ml.table.copy()
    rows = pd.DataFrame([ctf_row(f) for f in fits])
    for c in rows.columns:
        table[c] = rows[c].to_numpy()
    if res and res[0][2] is not None:
        table["rlnCtfImage"] = [str(Path(r[2]).relative_to(job.out)) for r in res]
    optics = _optics_table(ml, opt, [r[1] for r in res], table)
    star = None
    if job is not None:
        star = write_micrographs_star(job, table, optics)
    return {"table": table, "optics": optics, "fits": fits, "star": star,
            "plots": [r[2] for r in res], "paths": ml.paths}


def _unique_stems(paths) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i + 1:04d}_{s}" for i, s in enumerate(stems)]


def _optics_table(ml: MicrographList, opt, pixels, table: pd.DataFrame) -> pd.DataFrame:
    """The input optics table with the pixel size filled in, or one group per distinct optics."""
    if ml.optics is not None and "rlnOpticsGroup" in table.columns:
        o = ml.optics.copy()
        if "rlnMicrographPixelSize" not in o.columns:
            o["rlnMicrographPixelSize"] = [float(pixels[int(np.flatnonzero(table["rlnOpticsGroup"] == g)[0])])
                                           if (table["rlnOpticsGroup"] == g).any() else np.nan
                                           for g in o["rlnOpticsGroup"]]
        return o
    keys = [(v, cs, q, float(px)) for (v, cs, q, _), px in zip(opt, pixels)]
    uniq = list(dict.fromkeys(keys))
    table["rlnOpticsGroup"] = [uniq.index(k) + 1 for k in keys]
    return pd.DataFrame({"rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(len(uniq))],
                         "rlnOpticsGroup": np.arange(1, len(uniq) + 1),
                         "rlnMicrographPixelSize": [k[3] for k in uniq], "rlnVoltage": [k[0] for k in uniq],
                         "rlnSphericalAberration": [k[1] for k in uniq],
                         "rlnAmplitudeContrast": [k[2] for k in uniq]})


def write_micrographs_star(job, table, optics):
    """RELION 3.1 layout: ``data_optics`` then ``data_micrographs``, with the version line."""
    from cryoprism.io.star import StarFile

    return job.write_star("micrographs_ctf.star", StarFile(table, optics, {}, "3.1", "micrographs", "optics",
                                                           None, 30001))
