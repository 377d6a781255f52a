"""CLI of the metrics area: ``cryoprism fsc`` and ``cryoprism align-volumes``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, finish


def _read_map(path: Path):
    from cryoprism.io import read_mrc

    return read_mrc(path, ndim=None, finite=True)


def _pixel_size(path_a: Path, px_a, path_b: Path, px_b, override: Optional[float]) -> float:
    from cryoprism.errors import InputError

    if override is not None:
        if not override > 0:
            raise InputError(f"--pixel-size must be positive, got {override}")
        return float(override)
    if px_a is None and px_b is None:
        raise InputError("voxel size is 0 (unknown) in both headers; give it with --pixel-size (Å)", path_a)
    if px_a is not None and px_b is not None and abs(px_a - px_b) > 1e-3 * max(px_a, px_b):
        raise InputError(f"voxel size {px_b:.4f} Å differs from {path_a}'s {px_a:.4f} Å; resample one map "
                         f"or force a value with --pixel-size", path_b)
    return float(px_a if px_a is not None else px_b)


def _load_pair(a: Path, b: Path, pixel_size_A: Optional[float]):
    from cryoprism.errors import InputError

    va, pa = _read_map(a)
    vb, pb = _read_map(b)
    if va.shape != vb.shape:
        raise InputError(f"shape {vb.shape} differs from {a}'s {va.shape} (z, y, x); the maps must share "
                         f"their box", b)
    if va.ndim not in (2, 3) or len(set(va.shape)) != 1:
        raise InputError(f"expected a square image or a cubic volume, found shape {va.shape}", a)
    return va, vb, _pixel_size(a, pa, b, pb, pixel_size_A)


def fsc_cmd(
    map_a: Path = typer.Argument(..., help="First map or half map (MRC; a cubic volume, or a square image "
                                           "for an FRC)."),
    map_b: Path = typer.Argument(..., help="Second map (MRC), same box and voxel size."),
    mask: Optional[Path] = typer.Option(None, "--mask",
                                        help="Mask (MRC, same box), multiplied into both maps."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the FSC curve as a PNG figure here."),
    pixel_size_A: Optional[float] = typer.Option(None, "--pixel-size",
                                                 help="Voxel size in Å (default: the MRC header)."),
    as_json: bool = JSON_OPTION,
):
    """Fourier shell correlation of two maps (FRC for two images).

    Reads MAP_A and MAP_B (and MASK) as MRC files; prints the resolution in Å where the FSC falls below
    0.143, 0.5 and the half-bit curve. With --json prints one JSON object with those figures and the
    curve (frequencies in 1/Å, FSC per shell, voxels per shell). With --plot writes a PNG of the curve.
    Different boxes, voxel sizes or a missing file: one error line, exit code 2.
    """
    from cryoprism.errors import InputError
    from cryoprism.io.job import Job
    from cryoprism.metrics import fsc, resolution_at, threshold_curve

    va, vb, px = _load_pair(map_a, map_b, pixel_size_A)
    m = None
    if mask is not None:
        m, _ = _read_map(mask)
        if m.shape != va.shape:
            raise InputError(f"mask shape {m.shape} differs from the maps' {va.shape}", mask)
    r = fsc(va, vb, px, mask=m)
    res = {name: resolution_at(r, t) for name, t in
           [("0.143", 0.143), ("0.5", 0.5), ("half_bit", "half-bit")]}
    job = Job.for_file(plot or map_a, "fsc")
    job.record(**{
        "map_a": str(map_a), "map_b": str(map_b), "mask": None if mask is None else str(mask),
        "pixel_size_A": px, "box": r.box,
        "resolution_0.143_A": res["0.143"], "resolution_0.5_A": res["0.5"],
        "resolution_half_bit_A": res["half_bit"], "nyquist_A": 2 * px,
        "freq_invA": r.freq_invA, "fsc": r.curve, "n_voxels": r.n_voxels,
    })
    if plot is not None:
        from cryoprism.report.plots import fsc_figure

        fig = fsc_figure({f"{map_a.name} vs {map_b.name}": (r.freq_invA, r.curve)})
        fig.axes[0].plot(r.freq_invA[1:], threshold_curve(r, "half-bit")[1:], color="tab:red", lw=0.8,
                         ls=":", label="half-bit")
        fig.axes[0].legend(fontsize=7)
        job.record(plot=job.save_figure(plot.name, fig))
    human = "\n".join([
        f"FSC {map_a} vs {map_b} (box {r.box}, {px:.4g} Å/px, Nyquist {2 * px:.3g} Å)",
        f"resolution at FSC = 0.143: {res['0.143']:.2f} Å",
        f"resolution at FSC = 0.5:   {res['0.5']:.2f} Å",
        f"resolution at half-bit:    {res['half_bit']:.2f} Å",
    ] + ([f"plot: {plot}"] if plot is not None else []))
    finish(job, as_json, human)


def align_volumes_cmd(
    reference: Path = typer.Argument(..., help="Reference map (MRC, cubic)."),
    volume: Path = typer.Argument(..., help="Map to move onto the reference (MRC, same box)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the aligned map here (MRC, the "
                                                                 "reference's voxel size)."),
    no_flip: bool = typer.Option(False, "--no-flip", help="Do not try the mirror (other hand)."),
    n_coarse: int = typer.Option(3000, "--n-coarse", help="Rotations in the coarse SO(3) grid."),
    pixel_size_A: Optional[float] = typer.Option(None, "--pixel-size",
                                                 help="Voxel size in Å (default: the MRC header)."),
    as_json: bool = JSON_OPTION,
):
    """Align VOLUME onto REFERENCE over rotation, translation and handedness.

    Reads two MRC maps of the same box; prints the rotation (matrix and RELION Euler angles in degrees),
    the shift (pixels and Å, x y z), whether the hand was flipped, the correlation after alignment and
    the FSC resolution (0.143 and 0.5, Å) of the aligned pair. With --out writes the aligned map (MRC).
    """
    from cryoprism.geometry import matrix_to_euler
    from cryoprism.io.job import Job
    from cryoprism.metrics import align_volumes, fsc, resolution_at

    vr, vv, px = _load_pair(reference, volume, pixel_size_A)
    if vr.ndim != 3:
        from cryoprism.errors import InputError

        raise InputError(f"expected a 3-D map, found shape {vr.shape}", reference)
    r = align_volumes(vr, vv, n_coarse=n_coarse, try_flip=not no_flip)
    f = fsc(vr, r.aligned, px)
    rot, tilt, psi = matrix_to_euler(r.rotation)
    job = Job.for_file(out or volume, "align-volumes")
    job.record(**{
        "reference": str(reference), "volume": str(volume), "pixel_size_A": px,
        "rotation": r.rotation, "euler_deg": [rot, tilt, psi], "shift_px": r.shift_px,
        "shift_A": r.shift_px * px, "flipped": r.flipped, "correlation": r.correlation,
        "resolution_0.143_A": resolution_at(f, 0.143), "resolution_0.5_A": resolution_at(f, 0.5),
    })
    if out is not None:
        job.record(out=job.write_mrc(out.name, r.aligned.astype(np.float32), px))
    human = "\n".join([
        f"aligned {volume} onto {reference}",
        f"rotation (RELION rot, tilt, psi): {rot:.2f} {tilt:.2f} {psi:.2f} deg",
        f"shift: {' '.join(f'{v:.2f}' for v in r.shift_px * px)} Å (x y z)",
        f"hand flipped: {r.flipped}",
        f"correlation: {r.correlation:.4f}",
        f"FSC resolution 0.143 / 0.5: {resolution_at(f, 0.143):.2f} / {resolution_at(f, 0.5):.2f} Å",
    ] + ([f"wrote {out}"] if out is not None else []))
    finish(job, as_json, human)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""
    app.command("fsc")(fsc_cmd)
    app.command("align-volumes")(align_volumes_cmd)
