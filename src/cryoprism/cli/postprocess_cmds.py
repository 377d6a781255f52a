"""CLI of post-processing: ``cryoprism postprocess half1.mrc half2.mrc -o OUT``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, emit


def _parse_bfactor(text: str):
    from cryoprism.errors import InputError

    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--bfactor must be 'auto' or a number in Å² (negative sharpens), got {text!r}")
    if not np.isfinite(value):
        raise InputError(f"--bfactor must be finite, got {text!r}")
    return value


def _read_mask(path: Path, shape):
    from cryoprism.errors import InputError
    from cryoprism.io import read_mrc

    m, _ = read_mrc(path, ndim=3, finite=True)
    if m.shape != shape:
        raise InputError(f"mask shape {m.shape} differs from the half-maps' {shape} (z, y, x)", path)
    lo, hi = float(m.min()), float(m.max())
    if lo < -1e-3 or hi > 1 + 1e-3 or hi <= 0:
        raise InputError(f"mask values must lie in [0, 1] with some voxels above 0, found [{lo:.3g}, {hi:.3g}]",
                         path)
    return np.clip(m, 0.0, 1.0)


def postprocess_cmd(
    half1: Path = typer.Argument(..., help="First half-map (MRC, cubic volume)."),
    half2: Path = typer.Argument(..., help="Second half-map (MRC), same box and voxel size."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Soft solvent mask (MRC, same box, values "
                                                             "0…1). Default: made automatically from the "
                                                             "half-maps' average (15 Å low-pass, threshold "
                                                             "from the data, 3 px dilation, 6 px soft edge)."),
    bfactor: str = typer.Option("auto", "--bfactor", help="'auto' (Guinier fit of the FSC-weighted masked map "
                                                          "between 10 Å and the resolution) or the B-factor "
                                                          "to apply in Å² (negative sharpens, as RELION's "
                                                          "--adhoc_bfac)."),
    locres: bool = typer.Option(False, "--locres", help="Also compute the local resolution (windowed FSC "
                                                        "between the half-maps) and write OUT/locres.mrc."),
    randomize_at_fsc: float = typer.Option(0.8, "--randomize-at-fsc", min=0.0, max=1.0,
                                           help="Randomise phases beyond the shell where the unmasked FSC "
                                                "falls below this value (Chen et al. 2013)."),
    pixel_size_A: Optional[float] = typer.Option(None, "--pixel-size",
                                                 help="Voxel size in Å (default: the MRC headers)."),
    as_json: bool = JSON_OPTION,
):
    """Post-process two half-maps: mask-corrected FSC, B-factor sharpening, local resolution.

    Reads HALF1 and HALF2 (MRC, same box and voxel size) and optionally a mask. Writes to OUT:
    postprocess.mrc (average map, FSC-weighted, sharpened by the B-factor, low-passed at the resolution,
    masked), mask.mrc (the mask used), fsc.csv (per shell: frequency in 1/Å, resolution in Å, unmasked,
    masked, phase-randomised masked and corrected FSC), fsc.png, with --locres locres.mrc (local
    resolution in Å per voxel), summary.json and job.log. Prints the resolution at FSC 0.143 of the
    corrected curve (Å) and the B-factor applied (Å², negative = sharpened); one JSON object with --json.
    Half-maps of different box or voxel size, or a bad mask: one error line, exit code 2.
    """
    from cryoprism.cli.metrics_cmds import _load_pair
    from cryoprism.errors import InputError
    from cryoprism.io.checkpoint import digest
    from cryoprism.io.job import Job
    from cryoprism.metrics.postprocess import postprocess, write_outputs

    b = _parse_bfactor(bfactor)
    v1, v2, px = _load_pair(half1, half2, pixel_size_A)
    if v1.ndim != 3:
        raise InputError(f"expected a 3-D half-map, found shape {v1.shape}", half1)
    m = None if mask is None else _read_mask(mask, v1.shape)
    settings = {"bfactor": b, "locres": locres, "randomize_at_fsc": randomize_at_fsc, "pixel_size_A": px,
                "mask": None if mask is None else str(mask)}
    try:  # compute everything first, so that bad data leaves nothing half-written
        r = postprocess(v1, v2, px, m, bfactor_A2=b, locres=locres, randomize_at_fsc=randomize_at_fsc,
                        progress=not as_json)
    except ValueError as e:  # e.g. an automatic mask that finds no density
        raise InputError(str(e), half1)
    job = Job(out, "postprocess", settings, {"half1": digest(v1), "half2": digest(v2)})
    write_outputs(r, px, job)
    job.log.info("phases randomised from shell %d; resolution %.2f Å; B-factor applied %.1f Å²",
                 r.fsc.randomize_shell, r.resolution_A, r.bfactor_A2)
    job.record(half1=str(half1), half2=str(half2), pixel_size_A=px, box=v1.shape[0],
               outputs=sorted(p.name for p in Path(out).iterdir() if p.is_file()))
    summary = job.finish()
    human = "\n".join([
        f"post-processed {half1} + {half2} (box {v1.shape[0]}, {px:.4g} Å/px) → {out}",
        f"resolution at FSC 0.143 (mask-corrected): {r.resolution_A:.2f} Å "
        f"(unmasked {summary['resolution_unmasked_A']:.2f} Å)",
        f"phases randomised beyond {summary['randomize_resolution_A']:.2f} Å" if summary.get(
            "randomize_resolution_A") else "phases not randomised (FSC never fell below the threshold)",
        f"B-factor applied: {r.bfactor_A2:.1f} Å²" + (" (Guinier fit)" if r.guinier is not None else ""),
    ] + ([f"local resolution (inside the mask): median {summary['locres_median_A']:.2f} Å, 5–95 % "
          f"{summary['locres_range_A'][0]:.2f}–{summary['locres_range_A'][1]:.2f} Å"] if locres else []))
    emit(summary, as_json, human)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""
    app.command("postprocess")(postprocess_cmd)
