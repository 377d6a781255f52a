"""Particle extraction: boxes around picked coordinates, written as an MRC stack + particles.star.

Convention (RELION): ``rlnCoordinateX/Y`` are the column/row of the particle centre in pixels of the
micrograph; the box centre ``L//2`` is put on the coordinate rounded to the nearest pixel, and the
rounding residual is kept as the origin (``rlnOriginXAngst = −(x − round(x)) · pixel size``; the
particle sits at ``L//2 − origin/pixel`` in the box, docs/conventions.md). Boxes that do not fit
inside the micrograph are skipped (with a warning); a coordinate outside the micrograph is an input
error. Optionally the box is Fourier-cropped to ``bin_box`` pixels
(:func:`cryoprism.fourier.fourier_resize`), the contrast inverted, and every image normalised as
RELION does: zero mean and unit standard deviation of the background outside a circle of radius
``0.75 · box/2`` (:func:`cryoprism.image.normalize.normalize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoprism.errors import InputError
from cryoprism.fourier.resample import fourier_resize
from cryoprism.image.normalize import normalize

BACKGROUND_RADIUS_FRACTION = 0.75  # of box/2: RELION's default background circle


@dataclass
class Boxes:
    """Boxes cut from one micrograph: images and the row indices (into the input coordinates) kept."""

    images: np.ndarray  # (k, b, b) float32
    rows: np.ndarray  # (k,) int
    origins_px: np.ndarray  # (k, 2) [x, y] origins in pixels of the micrograph


def check_inside(x, y, shape, path=None) -> None:
    """InputError when a coordinate lies outside the micrograph ``shape`` (rows, cols)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    bad = (x < 0) | (y < 0) | (x > shape[1] - 1) | (y > shape[0] - 1) | ~np.isfinite(x) | ~np.isfinite(y)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"coordinate ({x[i]:g}, {y[i]:g}) px lies outside the {shape[1]}×{shape[0]} "
                         f"micrograph ({int(bad.sum())} such)", path)


def cut_boxes(micrograph: np.ndarray, x, y, box: int) -> Boxes:
    """Unprocessed ``box × box`` windows centred (``box//2``) on the rounded coordinates.

    Windows that do not fit in the micrograph are left out (``rows`` says which were kept).
    """
    m = np.asarray(micrograph)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    x0, y0 = ix - box // 2, iy - box // 2
    ok = (x0 >= 0) & (y0 >= 0) & (x0 + box <= m.shape[1]) & (y0 + box <= m.shape[0])
    rows = np.flatnonzero(ok)
    imgs = np.empty((rows.size, box, box), np.float32)
    for k, i in enumerate(rows):
        imgs[k] = m[y0[i]:y0[i] + box, x0[i]:x0[i] + box]
    origins = -np.stack([x - ix, y - iy], axis=1)[rows]
    return Boxes(imgs, rows, origins)


def process_boxes(images: np.ndarray, *, bin_box: int | None = None, invert: bool = False,
                  normalize_images: bool = True, pixel_size_A: float = 1.0) -> tuple[np.ndarray, float]:
    """Fourier-crop to ``bin_box``, invert the contrast, normalise (module doc). Returns the images and
    their pixel size in Å."""
    x = np.asarray(images, np.float32)
    px = float(pixel_size_A)
    if bin_box is not None and bin_box != x.shape[-1] and len(x):
        x, px = fourier_resize(x, int(bin_box), 2, px)
    elif bin_box is not None:
        px = px * x.shape[-1] / int(bin_box)
    if invert:
        x = -x
    if normalize_images and len(x):
        x = normalize(x, BACKGROUND_RADIUS_FRACTION * x.shape[-1] / 2.0)
    return x.astype(np.float32), px


def ctf_lookup(ctf_star) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The CTF table of a ``micrographs_ctf.star`` (RELION columns) with optics merged into each row.

    Returns ``(table, optics)``: one row per micrograph (``rlnMicrographName``, ``rlnDefocusU/V``,
    ``rlnDefocusAngle`` and, where present, ``rlnCtfMaxResolution``, ``rlnCtfFigureOfMerit``,
    ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, ``rlnMicrographPixelSize``).
    """
    from cryoprism.io.star import read_star

    star = read_star(ctf_star)
    t = star.particles.copy()
    for c in ("rlnMicrographName", "rlnDefocusU"):
        if c not in t.columns:
            raise InputError(f"expected a micrographs_ctf.star with {c}", ctf_star)
    if star.optics is not None and "rlnOpticsGroup" in t.columns and "rlnOpticsGroup" in star.optics.columns:
        add = [c for c in star.optics.columns if c not in t.columns or c == "rlnOpticsGroup"]
        t = t.merge(star.optics[add], on="rlnOpticsGroup", how="left")
    return t, star.optics


def _match_name(name: str, names: list[str]) -> int | None:
    """Index of ``name`` in ``names``: exact, else the same file name (folder ignored)."""
    if name in names:
        return names.index(name)
    base = [Path(n).name for n in names]
    b = Path(name).name
    return base.index(b) if b in base else None


CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
               "rlnCtfScalefactor", "rlnCtfMaxResolution", "rlnCtfFigureOfMerit")
OPTICS_CTF = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


def group_coordinates(micrographs, coords: pd.DataFrame):
    """Check the coordinates against the micrographs before anything is written: the columns, each
    row's micrograph among ``micrographs`` (:func:`_match_name`), every coordinate inside its
    micrograph (headers only). Returns ``(paths, coords with a fresh index, {micrograph index: row
    indices}, {micrograph index: header})``."""
    from cryoprism.io import read_mrc_header

    for c in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"):
        if c not in coords.columns:
            raise InputError(f"coordinates lack the column {c}")
    mics = [Path(p) for p in micrographs]
    names = [str(p) for p in mics]
    coords = coords.reset_index(drop=True)
    groups: dict[int, np.ndarray] = {}
    for name, idx in coords.groupby("rlnMicrographName", sort=False).indices.items():
        j = _match_name(str(name), names)
        if j is None:
            raise InputError(f"coordinates refer to micrograph {name!r}, which is not among the inputs")
        groups[j] = np.asarray(idx)
    headers = {}
    for j, idx in groups.items():
        h = read_mrc_header(mics[j])
        headers[j] = h
        shape = tuple(h["shape"])[-2:] if "shape" in h else None
        if shape is not None:
            check_inside(coords.loc[idx, "rlnCoordinateX"], coords.loc[idx, "rlnCoordinateY"], shape, mics[j])
    return mics, coords, groups, headers


def extract_particles(micrographs, coords: pd.DataFrame, box: int, job, *, ctf_table: pd.DataFrame | None = None,
                      pixel_size_A: float | None = None, bin_box: int | None = None, invert: bool = False,
                      normalize_images: bool = True, voltage_kV: float = 300.0, cs_mm: float = 2.7,
                      amplitude_contrast: float = 0.1, star_name: str = "particles.star",
                      stack_name: str = "particles.mrcs", progress: bool = True) -> dict:
    """Extract the particles of ``coords`` from ``micrographs`` into ``job`` (one stack + STAR).

    ``micrographs``: paths (2-D MRC); ``coords``: ``rlnMicrographName``, ``rlnCoordinateX/Y`` (px) and
    any other columns (kept, in order). A coordinates row whose micrograph is not given is an error;
    one outside its micrograph too (nothing is written then). ``ctf_table``: :func:`ctf_lookup`'s
    table; its CTF columns are added per particle, its voltage/Cs/amplitude contrast (else the
    arguments) go into the optics table. ``pixel_size_A``: the micrographs' (default: the CTF table's
    ``rlnMicrographPixelSize``, else the MRC header). Returns the summary figures.
    """
    from tqdm import tqdm

    from cryoprism.io import read_mrc

    mics, coords, groups, headers = group_coordinates(micrographs, coords)
    names = [str(p) for p in mics]
    ctf_rows = {}
    if ctf_table is not None:
        cnames = [str(n) for n in ctf_table["rlnMicrographName"]]
        for j in groups:
            k = _match_name(names[j], cnames)
            if k is None:
                k = _match_name(Path(names[j]).name, [Path(n).name for n in cnames])
            if k is None:
                raise InputError(f"no CTF for micrograph {names[j]!r} in the CTF table")
            ctf_rows[j] = ctf_table.iloc[k]

    def px_of(j):
        if pixel_size_A is not None:
            return float(pixel_size_A)
        if j in ctf_rows and "rlnMicrographPixelSize" in ctf_rows[j].index and \
                np.isfinite(ctf_rows[j]["rlnMicrographPixelSize"]):
            return float(ctf_rows[j]["rlnMicrographPixelSize"])
        v = headers[j].get("voxel_size_A")
        v = float(np.atleast_1d(v)[-1]) if v is not None else 0.0
        if not v > 0:
            raise InputError("pixel size unknown: give --pixel-size or a CTF STAR with "
                             "rlnMicrographPixelSize", mics[j])
        return v

    pxs = {j: px_of(j) for j in groups}
    if len(set(np.round(list(pxs.values()), 5))) > 1:
        raise InputError("micrographs have different pixel sizes; extract them separately")
    px = next(iter(pxs.values())) if pxs else float(pixel_size_A or 1.0)

    kept_rows, origins, skipped = [], [], 0
    out_px = px * box / bin_box if bin_box else px

    def images():
        nonlocal skipped
        order = sorted(groups)
        for j in tqdm(order, desc="extract", unit="mic", disable=not progress):
            idx = groups[j]
            m, _ = read_mrc(mics[j], ndim=2, finite=True)
            b = cut_boxes(m, coords.loc[idx, "rlnCoordinateX"], coords.loc[idx, "rlnCoordinateY"], box)
            n_skip = len(idx) - len(b.rows)
            if n_skip:
                skipped += n_skip
                job.log.warning("%s: %d of %d boxes too close to the edge, skipped", mics[j].name,
                                n_skip, len(idx))
            kept_rows.append(idx[b.rows])
            origins.append(b.origins_px)
            if len(b.rows):
                yield process_boxes(b.images, bin_box=bin_box, invert=invert,
                                    normalize_images=normalize_images, pixel_size_A=px)[0]

    # the stack is streamed, the table needs the kept rows: buffer per micrograph (one at a time)
    stack = list(images())
    rows = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64)
    org = np.concatenate(origins) if origins else np.zeros((0, 2))
    table = coords.loc[rows].reset_index(drop=True)
    mic_of_row = np.concatenate([[j] * len(r) for j, r in zip(sorted(groups), kept_rows)]) \
        if kept_rows else np.zeros(0, np.int64)
    if ctf_rows:
        for c in CTF_COLUMNS:
            if all(c in ctf_rows[j].index for j in ctf_rows):
                table[c] = [float(ctf_rows[j][c]) for j in mic_of_row]
    optics_val = {"rlnVoltage": voltage_kV, "rlnSphericalAberration": cs_mm,
                  "rlnAmplitudeContrast": amplitude_contrast}
    if ctf_rows:
        first = ctf_rows[next(iter(ctf_rows))]
        for c in OPTICS_CTF:
            if c in first.index and np.isfinite(first[c]):
                optics_val[c] = float(first[c])
    table["rlnOpticsGroup"] = 1
    table["rlnOriginXAngst"] = org[:, 0] * px
    table["rlnOriginYAngst"] = org[:, 1] * px
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographOriginalPixelSize": [px], **{k: [float(v)] for k, v in optics_val.items()},
                           "rlnImagePixelSize": [out_px], "rlnImageSize": [int(bin_box or box)],
                           "rlnImageDimensionality": [2]})
    if len(table) == 0:
        raise InputError(f"no particle box of {box} px fits inside its micrograph")
    star_path, stack_path = job.write_particles(star_name, stack_name, stack, table, optics,
                                                pixel_size_A=out_px)
    return {"particles": int(len(table)), "skipped_at_edge": int(skipped), "box": int(bin_box or box),
            "pixel_size_A": out_px, "star": str(star_path), "stack": str(stack_path)}
