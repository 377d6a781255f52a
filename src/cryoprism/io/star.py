"""RELION STAR files (3.0, 3.1 and 5) into one :class:`StarFile`, and the per-particle figures
(pixel size, CTF, rotations, origins in Å) that every other area needs.

* RELION 3.0: one data block; optics columns (voltage, Cs, magnification...) repeated on every row;
  origins ``rlnOriginX/Y`` in pixels. An optics table is derived from the distinct optics values.
* RELION 3.1: ``data_optics`` + ``data_particles``; origins ``rlnOriginX/YAngst`` in Å.
* RELION 5: as 3.1 (``# version 50001``), possibly with more blocks and columns; all are kept.

Reading uses ``starfile``; writing is done here, with floats written in Python's shortest
round-trip form, so ``write_star(read_star(f))`` gives back the same tables, columns, row order and
block order. Per-particle lookups take a column from the particle table when it is there, else from
the particle's optics group (docs/io.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cryoprism.errors import InputError
from cryoprism.io.atomic import atomic_path
from cryoprism.io.ctf_model import CTFParams
from cryoprism.io.euler import euler_to_matrix

# Columns that describe the optics of a RELION 3.0 file (repeated per row) and go into the
# derived optics table.
OPTICS_COLUMNS_30 = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification",
                     "rlnDetectorPixelSize", "rlnImagePixelSize", "rlnPixelSize", "rlnBeamTiltX",
                     "rlnBeamTiltY", "rlnImageSize", "rlnImageDimensionality")

PIXEL_SIZE_HINT = ("set rlnImagePixelSize in the optics table (RELION 3.1+), or rlnDetectorPixelSize and "
                   "rlnMagnification (RELION 3.0), or the voxel size in the MRC header of the stack")


@dataclass
class StarFile:
    """A particle STAR file (or a cryoSPARC .cs file mapped to RELION columns).

    ``particles``: one row per particle, RELION column names without the leading ``_``.
    ``optics``: the optics table (3.1/5), or derived from the per-row optics of a 3.0 file, or None.
    ``blocks``: every block of the file in file order (DataFrame for loops, dict for key/value
    blocks); the particle and optics blocks are written from ``particles``/``optics``.
    ``style``: ``"3.0"``, ``"3.1"``, ``"5"`` or ``"cryosparc"``.
    """

    particles: pd.DataFrame
    optics: pd.DataFrame | None = None
    blocks: dict = field(default_factory=dict)
    style: str = "3.1"
    particles_block: str = "particles"
    optics_block: str | None = "optics"
    path: Path | None = None
    version: int | None = None

    @property
    def n(self) -> int:
        return len(self.particles)

    def subset(self, indices) -> "StarFile":
        """The same file restricted to rows ``indices`` (0-based), renumbered from 0."""
        return replace(self, particles=self.particles.iloc[np.asarray(indices)].reset_index(drop=True))


# ----------------------------------------------------------------------------------------- reading
_VERSION_RE = re.compile(r"^#\s*version\s+(\d+)")


def _scan_versions(path: Path) -> int | None:
    """The ``# version NNNNN`` number RELION writes before each block (None if absent)."""
    version = None
    with open(path, "r", errors="replace") as f:
        for line in f:
            if line.startswith("#"):
                m = _VERSION_RE.match(line)
                if m:
                    version = int(m.group(1))
            elif line.startswith("loop_") and version is not None:
                break
    return version


def _choose_particle_block(blocks: dict, path) -> str:
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "particles" in tables:
        return "particles"
    named = [k for k, v in tables.items() if "rlnImageName" in v.columns]
    if named:
        return named[0]
    others = [k for k in tables if k != "optics"]
    if others:
        return max(others, key=lambda k: len(tables[k]))
    raise InputError("no data table (loop_) found; expected a particle STAR file", path)


def read_star(path) -> StarFile:
    """Read a RELION 3.0 / 3.1 / 5 particle STAR file into a :class:`StarFile`."""
    import starfile

    path = Path(path)
    if not path.exists():
        raise InputError("file not found (expected a STAR file)", path)
    if path.is_dir():
        raise InputError("is a folder (expected a STAR file)", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as e:  # starfile raises many kinds on malformed text
        raise InputError(f"not a readable STAR file ({type(e).__name__}: {e})", path) from None
    if not blocks:
        raise InputError("no data blocks found; expected a STAR file with data_ blocks", path)
    blocks = {k: (v.reset_index(drop=True) if isinstance(v, pd.DataFrame) else v) for k, v in blocks.items()}
    version = _scan_versions(path)
    pblock = _choose_particle_block(blocks, path)
    particles = blocks[pblock]
    optics_block = "optics" if isinstance(blocks.get("optics"), pd.DataFrame) else None
    if optics_block is not None:
        style = "5" if (version or 0) >= 50000 else "3.1"
        optics = blocks[optics_block]
    else:
        style = "3.0"
        optics = derive_optics_30(particles)
    star = StarFile(particles=particles, optics=optics, blocks=blocks, style=style, particles_block=pblock,
                    optics_block=optics_block, path=path, version=version)
    check_optics_groups(star)
    return star


def derive_optics_30(particles: pd.DataFrame) -> pd.DataFrame | None:
    """Optics table of a RELION 3.0 table: one row per distinct combination of optics columns."""
    cols = [c for c in OPTICS_COLUMNS_30 if c in particles.columns]
    if not cols:
        return None
    optics = particles[cols].drop_duplicates().reset_index(drop=True)
    optics.insert(0, "rlnOpticsGroup", np.arange(1, len(optics) + 1))
    optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{i}" for i in range(1, len(optics) + 1)])
    if "rlnImagePixelSize" not in optics.columns:
        ps = _pixel_size_from_columns(optics)
        if ps is not None:
            optics["rlnImagePixelSize"] = ps
    return optics


def optics_group_of_rows_30(particles: pd.DataFrame, optics: pd.DataFrame) -> np.ndarray:
    """For a 3.0 table and its derived optics table: the optics group number of each row."""
    cols = [c for c in OPTICS_COLUMNS_30 if c in particles.columns]
    key = optics[cols + ["rlnOpticsGroup"]]
    merged = particles[cols].merge(key, on=cols, how="left", sort=False)
    return merged["rlnOpticsGroup"].to_numpy()


def check_optics_groups(star: StarFile) -> None:
    """Every particle's ``rlnOpticsGroup`` must exist in the optics table (3.1/5)."""
    if star.optics_block is None or star.optics is None:
        return
    p, o = star.particles, star.optics
    if "rlnOpticsGroup" not in p.columns:
        if len(o) > 1:
            raise InputError(f"the particle table has no rlnOpticsGroup column but the optics table has "
                             f"{len(o)} groups; expected rlnOpticsGroup on every particle", star.path)
        return
    if "rlnOpticsGroup" not in o.columns:
        raise InputError("the optics table has no rlnOpticsGroup column", star.path)
    known = set(pd.to_numeric(o["rlnOpticsGroup"], errors="coerce").tolist())
    groups = pd.to_numeric(p["rlnOpticsGroup"], errors="coerce").to_numpy()
    bad = ~np.isin(groups, list(known))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"particle row {row + 1} refers to optics group {p['rlnOpticsGroup'].iloc[row]}, "
                         f"which is not in the optics table (groups {sorted(known)}); "
                         f"{int(bad.sum())} rows affected", star.path)


# ---------------------------------------------------------------------------------------- writing
_NEEDS_QUOTES = re.compile(r"""[\s"']|^$|^(data_|loop_|save_|global_|stop_)|^[_#$;]""")


def _fmt_column(values: pd.Series) -> list[str]:
    """STAR text of one column: shortest round-trip floats, ints, quoted strings where needed."""
    kind = values.dtype.kind
    if kind == "f":
        out = []
        for x in values.tolist():
            if x != x:
                out.append("nan")
            elif x == math.inf:
                out.append("inf")
            elif x == -math.inf:
                out.append("-inf")
            else:
                out.append(repr(float(x)))
        return out
    if kind in "iub":
        return [str(int(x)) for x in values.tolist()]
    out = []
    for x in values.tolist():
        if isinstance(x, (float, np.floating)):
            out.append("nan" if x != x else repr(float(x)))
            continue
        if isinstance(x, (int, np.integer)):
            out.append(str(int(x)))
            continue
        s = str(x)
        if _NEEDS_QUOTES.search(s):
            s = f"'{s}'" if '"' in s else f'"{s}"'
        out.append(s)
    return out


def _block_text(name: str, block, version: int | None) -> str:
    lines = []
    if version is not None:
        lines += [f"# version {version}", ""]
    lines += [f"data_{name}", ""]
    if isinstance(block, pd.DataFrame):
        lines.append("loop_")
        lines += [f"_{c} #{i}" for i, c in enumerate(block.columns, 1)]
        cols = [_fmt_column(block[c]) for c in block.columns]
        lines += [" ".join(row) for row in zip(*cols)]
    else:
        width = max((len(str(k)) for k in block), default=0)
        for k, v in block.items():
            val = _fmt_column(pd.Series([v]))[0]
            lines.append(f"_{str(k):<{width}} {val}")
    lines.append("")
    return "\n".join(lines) + "\n"


def write_star(path, star, optics: pd.DataFrame | None = None) -> Path:
    """Write a STAR file atomically.

    ``star`` is a :class:`StarFile` (every block written in its order, the particle and optics
    blocks from ``star.particles``/``star.optics``; 3.0 files stay single-block), or a particle
    DataFrame (with ``optics`` it is written as RELION 3.1 ``data_optics`` + ``data_particles``),
    or a dict of blocks.
    """
    path = Path(path)
    if isinstance(star, StarFile):
        blocks = dict(star.blocks) if star.blocks else {}
        blocks[star.particles_block] = star.particles
        if star.optics_block is not None and star.optics is not None:
            blocks[star.optics_block] = star.optics
            if list(blocks)[0] != star.optics_block and star.optics_block not in (star.blocks or {}):
                blocks = {star.optics_block: star.optics, **{k: v for k, v in blocks.items()
                                                             if k != star.optics_block}}
        version = star.version
        if version is None and star.style in ("3.1", "cryosparc"):
            version = 30001
        elif version is None and star.style == "5":
            version = 50001
        if star.style == "3.0":
            version = star.version
    elif isinstance(star, pd.DataFrame):
        blocks = {"optics": optics, "particles": star} if optics is not None else {"": star}
        version = 30001 if optics is not None else None
    elif isinstance(star, dict):
        blocks, version = star, None
    else:
        raise TypeError(f"write_star: cannot write {type(star).__name__}")
    text = "".join(_block_text(k, v, version) for k, v in blocks.items())
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return path


# ----------------------------------------------------------------------------- per-particle figures
def _numeric(series: pd.Series, name: str, path) -> np.ndarray:
    vals = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(vals).any() and not pd.isna(series).all():
        row = int(np.flatnonzero(np.isnan(vals))[0])
        raise InputError(f"column {name} row {row + 1}: {series.iloc[row]!r} is not a number", path)
    return vals


def column_per_particle(star: StarFile, name: str) -> np.ndarray | None:
    """Values of ``name`` for every particle (float64): the particle column if there is one, else the
    value of the particle's optics group; None when neither table has it."""
    p, o = star.particles, star.optics
    if name in p.columns:
        return _numeric(p[name], name, star.path)
    if o is None or name not in o.columns:
        return None
    ovals = _numeric(o[name], name, star.path)
    if "rlnOpticsGroup" not in p.columns or "rlnOpticsGroup" not in o.columns:
        if len(o) == 1:
            return np.full(len(p), ovals[0])
        if star.style == "3.0":  # derived optics: the per-row columns are the source
            return None
        raise InputError(f"cannot assign {name} from {len(o)} optics groups: the particles have no "
                         f"rlnOpticsGroup column", star.path)
    groups = _numeric(p["rlnOpticsGroup"], "rlnOpticsGroup", star.path)
    ogroups = _numeric(o["rlnOpticsGroup"], "rlnOpticsGroup", star.path)
    order = np.argsort(ogroups)
    pos = np.searchsorted(ogroups[order], groups)
    pos = np.clip(pos, 0, len(order) - 1)
    found = ogroups[order][pos] == groups
    if not found.all():
        row = int(np.flatnonzero(~found)[0])
        raise InputError(f"particle row {row + 1} refers to optics group {groups[row]:g}, which is not in "
                         f"the optics table", star.path)
    return ovals[order][pos]


def _pixel_size_from_columns(table: pd.DataFrame):
    for c in ("rlnImagePixelSize", "rlnPixelSize"):
        if c in table.columns:
            return pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=np.float64)
    if "rlnDetectorPixelSize" in table.columns and "rlnMagnification" in table.columns:
        det = pd.to_numeric(table["rlnDetectorPixelSize"], errors="coerce").to_numpy(dtype=np.float64)
        mag = pd.to_numeric(table["rlnMagnification"], errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return det * 1e4 / mag
    return None


def pixel_sizes_A(star: StarFile) -> np.ndarray:
    """Pixel size (Å) of every particle from the STAR tables; NaN where the tables do not say.

    Precedence: ``rlnImagePixelSize``, else ``rlnPixelSize``, else ``rlnDetectorPixelSize`` × 10⁴ /
    ``rlnMagnification``; each looked up on the particle row first, then in its optics group. The
    MRC header is the next source (:class:`~cryoprism.io.ParticleStack` fills it in).
    """
    n = star.n
    out = np.full(n, np.nan)
    for c in ("rlnImagePixelSize", "rlnPixelSize"):
        v = column_per_particle(star, c)
        if v is not None:
            out = np.where(np.isnan(out), v, out)
    det = column_per_particle(star, "rlnDetectorPixelSize")
    mag = column_per_particle(star, "rlnMagnification")
    if det is not None and mag is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(np.isnan(out), det * 1e4 / mag, out)
    out[~(out > 0)] = np.nan
    return out


def ctf_params(star: StarFile) -> CTFParams | None:
    """Per-particle :class:`~cryoprism.ctf.CTFParams` (arrays of length n), or None when the file has
    no defocus. Voltage, Cs and amplitude contrast are required then (particle row or optics group);
    defocus V defaults to U, angle/phase shift/B-factor to 0 and scale to 1."""
    du = column_per_particle(star, "rlnDefocusU")
    if du is None:
        return None
    n = star.n

    def get(name, default=None, required=False):
        v = column_per_particle(star, name)
        if v is None:
            if required:
                raise InputError(f"rlnDefocusU is given but {name} is missing from the particle and "
                                 f"optics tables", star.path)
            return np.full(n, default, dtype=np.float64)
        return v

    return CTFParams(
        defocus_u_A=du,
        defocus_v_A=get("rlnDefocusV", None) if "rlnDefocusV" in star.particles.columns else du.copy(),
        defocus_angle_deg=get("rlnDefocusAngle", 0.0),
        voltage_kV=get("rlnVoltage", required=True),
        cs_mm=get("rlnSphericalAberration", required=True),
        amplitude_contrast=get("rlnAmplitudeContrast", required=True),
        phase_shift_deg=get("rlnPhaseShift", 0.0),
        bfactor_A2=get("rlnCtfBfactor", 0.0),
        scale=get("rlnCtfScalefactor", 1.0),
    )


def euler_angles_deg(star: StarFile) -> np.ndarray | None:
    """``(n, 3)`` RELION (rot, tilt, psi) in degrees; missing angles are 0; None if all are missing."""
    cols = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    if not any(c in star.particles.columns for c in cols):
        return None
    return np.stack([column_per_particle(star, c) if c in star.particles.columns else np.zeros(star.n)
                     for c in cols], axis=1)


def rotations(star: StarFile) -> np.ndarray | None:
    """``(n, 3, 3)`` matrices ``A = euler_to_matrix(rot, tilt, psi)`` (volume → particle frame)."""
    ang = euler_angles_deg(star)
    if ang is None:
        return None
    return euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])


def origins_A(star: StarFile, pixel_size_A=None) -> np.ndarray:
    """``(n, 2)`` origins (x, y) in Å: ``rlnOriginX/YAngst``, else ``rlnOriginX/Y`` (pixels) ×
    pixel size, else 0. ``pixel_size_A`` (scalar or per particle) defaults to :func:`pixel_sizes_A`;
    a pixel origin with an unknown pixel size gives an :class:`InputError`."""
    p = star.particles
    n = star.n
    if "rlnOriginXAngst" in p.columns or "rlnOriginYAngst" in p.columns:
        return np.stack([column_per_particle(star, c) if c in p.columns else np.zeros(n)
                         for c in ("rlnOriginXAngst", "rlnOriginYAngst")], axis=1)
    if "rlnOriginX" in p.columns or "rlnOriginY" in p.columns:
        px = np.stack([column_per_particle(star, c) if c in p.columns else np.zeros(n)
                       for c in ("rlnOriginX", "rlnOriginY")], axis=1)
        ps = pixel_sizes_A(star) if pixel_size_A is None else np.broadcast_to(
            np.asarray(pixel_size_A, dtype=np.float64), (n,))
        if np.isnan(ps).any():
            row = int(np.flatnonzero(np.isnan(ps))[0])
            raise InputError(f"rlnOriginX/Y are in pixels but the pixel size of row {row + 1} is unknown: "
                             f"{PIXEL_SIZE_HINT}", star.path)
        return px * ps[:, None]
    return np.zeros((n, 2))


def class_numbers(star: StarFile) -> np.ndarray | None:
    """``rlnClassNumber`` as int64, or None."""
    if "rlnClassNumber" not in star.particles.columns:
        return None
    return _numeric(star.particles["rlnClassNumber"], "rlnClassNumber", star.path).astype(np.int64)


# ------------------------------------------------------------------------------------- conversion
def to_relion31(star: StarFile, pixel_size_A: float | None = None, box: int | None = None,
                input_pixel_sizes_A=None) -> StarFile:
    """The same particles as a RELION 3.1 :class:`StarFile` (``data_optics`` + ``data_particles``).

    Every input column and row is kept; ``rlnOpticsGroup`` and ``rlnOriginX/YAngst`` are appended when
    missing. The optics table gets ``rlnImagePixelSize`` (``pixel_size_A`` overrides), ``rlnImageSize``
    (``box``) and ``rlnImageDimensionality`` = 2 where known. Pixel origins (3.0) are converted with
    the input's pixel size (tables, else ``input_pixel_sizes_A``, e.g. from the MRC header, else
    ``pixel_size_A``).
    """
    p = star.particles.copy()
    if star.optics_block is not None and star.optics is not None:
        optics = star.optics.copy()
    elif star.optics is not None:  # 3.0: derived optics; keep the per-row columns too
        optics = star.optics.copy()
        if "rlnOpticsGroup" not in p.columns:
            p["rlnOpticsGroup"] = optics_group_of_rows_30(star.particles, star.optics)
    else:
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"]})
        if "rlnOpticsGroup" not in p.columns:
            p["rlnOpticsGroup"] = 1
    if "rlnOpticsGroup" not in optics.columns:
        optics.insert(0, "rlnOpticsGroup", np.arange(1, len(optics) + 1))
    if "rlnOpticsGroup" not in p.columns:
        p["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
    if ("rlnOriginX" in p.columns or "rlnOriginY" in p.columns) and "rlnOriginXAngst" not in p.columns:
        ps_in = pixel_sizes_A(star)
        for fill in (input_pixel_sizes_A, pixel_size_A):
            if fill is not None:
                fill = np.broadcast_to(np.asarray(fill, float), ps_in.shape)
                ps_in = np.where(np.isnan(ps_in), fill, ps_in)
        o = origins_A(star, pixel_size_A=ps_in)
        p["rlnOriginXAngst"] = o[:, 0]
        p["rlnOriginYAngst"] = o[:, 1]
    if pixel_size_A is not None:
        optics["rlnImagePixelSize"] = float(pixel_size_A)
    elif "rlnImagePixelSize" not in optics.columns:
        ps = _pixel_size_from_columns(optics)
        if ps is not None:
            optics["rlnImagePixelSize"] = ps
    if box is not None:
        optics["rlnImageSize"] = int(box)
        optics["rlnImageDimensionality"] = 2
    for c, default in (("rlnVoltage", None), ("rlnSphericalAberration", None),
                       ("rlnAmplitudeContrast", None)):
        if c not in optics.columns and c in p.columns and len(optics) == 1:
            optics[c] = float(pd.to_numeric(p[c]).iloc[0]) if len(p) else default
    blocks = {"optics": optics, "particles": p}
    if star.optics_block is not None:
        blocks = {k: v for k, v in star.blocks.items()}
        blocks[star.optics_block] = optics
        blocks[star.particles_block] = p
    return StarFile(particles=p, optics=optics, blocks=blocks,
                    style="5" if star.style == "5" else "3.1",
                    particles_block=star.particles_block if star.optics_block is not None else "particles",
                    optics_block=star.optics_block or "optics", path=None,
                    version=star.version if star.style in ("3.1", "5") else 30001)
