"""CLI of the io area: ``cryoprism info FILE``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, emit

_MRC_SUFFIXES = {".mrc", ".mrcs", ".map", ".st", ".ali", ".rec", ".mrcz"}


def mrc_figures(path: Path, chunk: int = 64) -> dict:
    """Shape, voxel size, mode and min/max/mean/std of an MRC file, read in chunks of sections."""
    from cryoprism.io.mrc import MrcStack, read_mrc_header

    h = read_mrc_header(path)
    st = MrcStack(path, h)
    lo, hi, s, s2, count = np.inf, -np.inf, 0.0, 0.0, 0
    try:
        for a in range(0, st.n, chunk):
            x = st.read(np.arange(a, min(a + chunk, st.n))).astype(np.float64)
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
            s += float(x.sum())
            s2 += float((x * x).sum())
            count += x.size
    finally:
        st.close()
    mean = s / count
    return {
        "file": str(path), "kind": "mrc", "shape_zyx": list(h["shape"]), "mode": h["mode"],
        "dtype": h["dtype"], "voxel_size_A": h["voxel_size_A"], "origin_A": list(h["origin_A"]),
        "start_xyz": list(h["start"]), "space_group": h["ispg"],
        "min": lo, "max": hi, "mean": mean, "std": float(np.sqrt(max(s2 / count - mean * mean, 0.0))),
    }


def particle_figures(path: Path) -> dict:
    """Particle count, columns, optics groups, box and pixel size of a STAR or .cs file."""
    from cryoprism.errors import InputError
    from cryoprism.io.particles import ParticleStack, read_star_or_cs
    from cryoprism.io.star import pixel_sizes_A

    star = read_star_or_cs(path)
    ps = pixel_sizes_A(star)
    box = None
    if star.optics is not None and "rlnImageSize" in star.optics.columns:
        sizes = np.unique(star.optics["rlnImageSize"].to_numpy())
        box = int(sizes[0]) if len(sizes) == 1 else [int(v) for v in sizes]
    images = "not checked"
    if "rlnImageName" in star.particles.columns and star.n:
        try:
            stack = ParticleStack(star)
            box = stack.box
            ps = stack.pixel_sizes_A
            images = f"all {star.n} found in {len(stack.files)} stack file(s)"
            stack.close()
        except InputError as e:
            images = f"not readable: {e}"
    known = ps[~np.isnan(ps)]
    pix = sorted({round(float(v), 6) for v in known})
    optics_groups = []
    if star.optics is not None:
        for _, row in star.optics.iterrows():
            g = {k: row[k] for k in ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize",
                                     "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                                     "rlnImageSize") if k in row.index}
            optics_groups.append({k: (v.item() if hasattr(v, "item") else v) for k, v in g.items()})
    return {
        "file": str(path), "kind": "cryosparc" if star.style == "cryosparc" else "star",
        "style": star.style, "particles": star.n, "blocks": list(star.blocks),
        "columns": list(star.particles.columns), "optics_groups": len(optics_groups),
        "optics": optics_groups, "box": box,
        "pixel_size_A": (pix[0] if len(pix) == 1 else pix) if pix else None,
        "pixel_size_unknown_rows": int(np.isnan(ps).sum()), "images": images,
    }


def file_figures(path) -> dict:
    """Figures of an MRC, STAR or .cs file (by suffix)."""
    from cryoprism.errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    suffix = path.suffix.lower()
    if suffix in _MRC_SUFFIXES:
        return mrc_figures(path)
    if suffix in (".star", ".cs"):
        return particle_figures(path)
    raise InputError(f"unknown file type {suffix!r}; expected .mrc/.mrcs/.map, .star or .cs", path)


def _human(fig: dict) -> str:
    if fig["kind"] == "mrc":
        z = fig["shape_zyx"]
        return "\n".join([
            f"file: {fig['file']}",
            f"shape (z, y, x): {' × '.join(str(v) for v in z)}",
            f"mode: {fig['mode']} ({fig['dtype']})",
            f"voxel size: {fig['voxel_size_A'] if fig['voxel_size_A'] else 'unknown (0 in header)'} Å",
            f"origin (x, y, z): {fig['origin_A']} Å",
            f"min / max / mean / std: {fig['min']:.6g} / {fig['max']:.6g} / {fig['mean']:.6g} / "
            f"{fig['std']:.6g}",
        ])
    lines = [f"file: {fig['file']}", f"format: {fig['kind']} (style {fig['style']})",
             f"particles: {fig['particles']}", f"box: {fig['box']} px",
             f"pixel size: {fig['pixel_size_A']} Å", f"optics groups: {fig['optics_groups']}",
             f"images: {fig['images']}", f"columns: {', '.join(fig['columns'])}"]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""

    @app.command("info")
    def info(file: Path = typer.Argument(..., help="An MRC map/stack (.mrc, .mrcs, .map), a RELION STAR file "
                                                   "(3.0, 3.1, 5) or a cryoSPARC .cs file."),
             as_json: bool = JSON_OPTION):
        """Describe a file; reads FILE only, writes nothing.

        MRC: shape (z, y, x), mode, voxel size (Å), origin (Å), min/max/mean/std of the data.
        STAR/.cs: particle count, columns, optics groups, box (pixels), pixel size (Å), and whether
        every image named by rlnImageName exists.
        """
        fig = file_figures(file)
        emit(fig, as_json, human=_human(fig))
