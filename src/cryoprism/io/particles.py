"""The one particle source: a particle table plus lazily read images, in batches.

:class:`ParticleSource` is the interface every algorithm takes; :class:`ParticleStack` implements it
with two image back-ends: memory-mapped MRC stacks named by a STAR (or .cs) table
(:func:`read_particles`) or an in-memory array (:meth:`ParticleStack.from_arrays`, for simulations,
tests and benchmarks). ``subset(indices)`` and ``cropped(box)`` are lazy views of either.

``read_particles(path)`` checks up front that every row names an existing image (``idx@path``,
1-based, paths relative to the STAR file's folder, then the current directory) and that the stacks
agree on the box size and the pixel size is known; images are only read by ``images(indices)`` or
``batches(batch_size)``. ``write_particles`` streams batches into a new stack and writes a RELION 3.1
STAR next to it, atomically, never holding the whole stack in memory.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np
import pandas as pd

from cryoprism.errors import InputError
from cryoprism.fourier.resample import downsample
from cryoprism.io import star as _star
from cryoprism.io.atomic import atomic_path
from cryoprism.io.cryosparc import read_cs
from cryoprism.io.ctf_model import CTFParams, ctf_2d
from cryoprism.io.euler import matrix_to_euler
from cryoprism.io.mrc import MrcStack, MrcStackWriter, read_mrc_header
from cryoprism.io.star import StarFile, read_star, to_relion31, write_star
from cryoprism.parallel.core import batch_ranges


@dataclass
class Batch:
    """One batch of particles: images ``(b, L, L)`` float32, their 0-based row ``indices``, CTF
    parameters (arrays of b, or None without defocus), rotations ``(b, 3, 3)`` (None without angles),
    origins ``(b, 2)`` [x, y] in Å, class numbers (or None) and the pixel size in Å."""

    images: np.ndarray
    indices: np.ndarray
    ctf: CTFParams | None
    rotations: np.ndarray | None
    origins_A: np.ndarray
    class_number: np.ndarray | None
    pixel_size_A: float | None = None

    def __len__(self):
        return len(self.indices)

    def ctf_grid(self, dtype=np.float32) -> np.ndarray | None:
        """The ``(b, L, L)`` CTF of the batch on the centred Fourier grid of its images (box and pixel
        size of the batch), computed on each call from :attr:`ctf`; None without CTF parameters."""
        if self.ctf is None:
            return None
        L = int(self.images.shape[-1])
        c = ctf_2d(L, self.pixel_size_A, self.ctf, dtype=dtype)
        return np.broadcast_to(c, (len(self), L, L)) if c.ndim == 2 else c


class ParticleSource(Protocol):
    """What an algorithm may ask of its particles; :class:`ParticleStack` is the implementation.

    ``n`` particles of ``box × box`` pixels of ``pixel_size_A`` Å, images of ``dtype``; ``table`` (the
    particle DataFrame, RELION column names) and ``optics`` (the optics DataFrame or None). Indices
    are 0-based rows; ``None`` means all. ``ctf_params``/``rotations`` raise :class:`InputError` when
    the table has no defocus/angles (``has_ctf`` says which; ``Batch.ctf``/``Batch.rotations`` are
    None then).
    """

    n: int
    box: int
    dtype: np.dtype
    table: pd.DataFrame
    optics: pd.DataFrame | None
    path: Path | None  # the particle file (None in memory), for messages

    @property
    def pixel_size_A(self) -> float: ...
    @property
    def has_ctf(self) -> bool: ...
    def ctf_params(self, indices=None) -> CTFParams: ...
    def rotations(self, indices=None) -> np.ndarray: ...
    def origins_A(self, indices=None) -> np.ndarray: ...
    def class_numbers(self, indices=None) -> np.ndarray | None: ...
    def images(self, indices=None) -> np.ndarray: ...
    def batch(self, indices) -> Batch: ...
    def batches(self, batch_size: int = 1000, indices=None) -> Iterator[Batch]: ...
    def subset(self, indices) -> "ParticleSource": ...
    def cropped(self, box: int) -> "ParticleSource": ...


def _take(v, idx):
    """Rows ``idx`` of a per-particle value (array or :class:`CTFParams`; None stays None)."""
    if v is None or idx is None:
        return v
    return v.take(idx) if isinstance(v, CTFParams) else v[idx]


def _parse_image_names(star: StarFile) -> tuple[np.ndarray, np.ndarray]:
    """``rlnImageName`` → (0-based index in the stack, stack path string) per row."""
    p = star.particles
    if "rlnImageName" not in p.columns:
        raise InputError("no rlnImageName column: expected idx@stack.mrcs for every particle", star.path)
    names = p["rlnImageName"].astype(str)
    has_at = names.str.contains("@", regex=False).to_numpy()
    parts = names.str.split("@", n=1, regex=False)
    idx_str = np.where(has_at, parts.str[0].to_numpy(dtype=object), "1")
    path_str = np.where(has_at, parts.str[1].to_numpy(dtype=object), names.to_numpy(dtype=object))
    # RELION accepts a type hint after the name ("stack.mrc:mrcs"); it is not part of the path
    path_str = (pd.Series(path_str, dtype=object).str.replace(r":mrcs?$", "", regex=True)
                .to_numpy(dtype=object))
    idx = pd.to_numeric(pd.Series(idx_str), errors="coerce").to_numpy()
    bad = np.isnan(idx) | (idx < 1) | (idx != np.round(idx))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"row {row + 1}: rlnImageName {names.iloc[row]!r} is not idx@path with a "
                         f"1-based integer idx", star.path)
    return idx.astype(np.int64) - 1, path_str


_META = ("ctf", "rot", "orig", "cls")


class ParticleStack:
    """Particles with lazily read images: the :class:`ParticleSource` of cryoprism.

    ``ParticleStack(star)`` (or :func:`read_particles`) reads memory-mapped MRC stacks named by the
    table; :meth:`from_arrays` holds an in-memory array. :meth:`subset` and :meth:`cropped` are lazy
    views that share the images of their parent.

    Attributes: ``n``, ``box`` (L), ``dtype`` (of the images), ``pixel_size_A`` (one value),
    ``pixel_sizes_A`` (per particle), ``table`` (the particle DataFrame), ``optics``, ``star`` (the
    :class:`StarFile`). A cropped view keeps its parent's table: ``box`` and ``pixel_sizes_A`` are the
    view's, and :func:`write_particles` writes them.
    """

    def __init__(self, star: StarFile, root=None, *, pixel_size_A: float | None = None):
        self._set_table(star)
        self.dtype = np.dtype(np.float32)
        self._read = self._read_files
        self._parent, self._rows = None, None
        self._meta: dict = {}
        root = Path(root) if root is not None else (Path(star.path).parent if star.path else Path.cwd())
        local, path_str = _parse_image_names(star)
        codes, uniques = pd.factorize(pd.Series(path_str), sort=False)
        self._local = local
        self._file_id = codes.astype(np.int64)
        search = [root] + ([root.parent] if star.style == "cryosparc" else []) + [Path.cwd()]
        box = None
        order = np.argsort(self._file_id, kind="stable")
        bounds = np.searchsorted(self._file_id[order], np.arange(len(uniques) + 1))
        for f, name in enumerate(uniques):
            rows = order[bounds[f]:bounds[f + 1]]
            resolved = self._resolve(name, search, rows[0], star.path)
            info = read_mrc_header(resolved)
            stack = MrcStack(resolved, info)
            if stack.shape[0] != stack.shape[1]:
                raise InputError(f"images are {stack.shape[1]}×{stack.shape[0]}; expected square images",
                                 resolved)
            if box is None:
                box = stack.shape[0]
            elif stack.shape[0] != box:
                raise InputError(f"box {stack.shape[0]} differs from {box} of {self.files[0]} "
                                 f"(row {rows[0] + 1}); expected one box size", resolved)
            over = rows[self._local[rows] >= stack.n]
            if over.size:
                r = int(over[0])
                raise InputError(f"row {r + 1} names image {self._local[r] + 1} of {resolved}, which holds "
                                 f"only {stack.n} images ({over.size} rows beyond its end)", star.path)
            self.files.append(resolved)
            self._stacks.append(stack)
        self.box = int(box) if box is not None else 0
        # the table's declared image size (optics group or per row) must match the stacks
        declared = _star.column_per_particle(star, "rlnImageSize")
        if declared is not None and self.n and box is not None:
            bad = np.flatnonzero(np.isfinite(declared) & (declared != self.box))
            if bad.size:
                r = int(bad[0])
                raise InputError(f"row {r + 1}: rlnImageSize is {int(declared[r])} but the images in "
                                 f"{self.files[self._file_id[r]]} are {self.box}×{self.box}; expected "
                                 "one box size", star.path)
        # pixel size: tables > MRC header > explicit fallback > error
        ps = _star.pixel_sizes_A(star)
        if np.isnan(ps).any() and self._stacks:
            header = np.array([s.voxel_size_A or np.nan for s in self._stacks])
            ps = np.where(np.isnan(ps), header[self._file_id], ps)
        if np.isnan(ps).any() and pixel_size_A is not None:
            ps = np.where(np.isnan(ps), float(pixel_size_A), ps)
        if np.isnan(ps).any():
            row = int(np.flatnonzero(np.isnan(ps))[0])
            raise InputError(f"pixel size of row {row + 1} is unknown (not in the STAR/optics table, MRC "
                             f"header voxel size is 0): {_star.PIXEL_SIZE_HINT}", star.path)
        self.pixel_sizes_A = ps
        self._lock = threading.Lock()

    def _set_table(self, star: StarFile):
        self.star = star
        self.table = star.particles
        self.optics = star.optics
        self.path = star.path
        self.n = len(self.table)
        self.files: list[Path] = []
        self._stacks: list[MrcStack] = []

    def _view(self, star: StarFile, box: int, pixel_sizes_A: np.ndarray, read, rows=None) -> "ParticleStack":
        """A lazy view of this stack: its per-particle values are this stack's (rows ``rows``)."""
        v = object.__new__(ParticleStack)
        v._set_table(star)
        v.box, v.pixel_sizes_A, v.dtype = int(box), pixel_sizes_A, self.dtype
        v._read, v._parent, v._rows = read, self, rows
        v._meta, v._lock = {}, threading.Lock()
        return v

    @classmethod
    def from_arrays(cls, images, *, pixel_size_A: float, rotations=None, origins_A=None,
                    ctf: CTFParams | None = None, class_numbers=None, table: pd.DataFrame | None = None,
                    ) -> "ParticleStack":
        """An in-memory particle source: ``images`` ``(n, L, L)`` (float64 kept, anything else as
        float32; not copied), one ``pixel_size_A``, optional ``rotations`` ``(n, 3, 3)`` RELION
        matrices, ``origins_A`` ``(n, 2)`` [x, y] in Å, ``ctf`` (:class:`CTFParams`, scalars or arrays
        of n), ``class_numbers`` (n) and ``table`` (extra particle columns, e.g. ``rlnRandomSubset``).

        The RELION 3.1 table (one optics group with the pixel size, box, voltage, Cs and amplitude
        contrast) is built from them, so :func:`write_particles` writes the source; the algorithms
        read the values given here, exactly.
        """
        arr = np.asarray(images)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
            raise ValueError(f"images must be (n, L, L), got {arr.shape}")
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float32)
        n, L = arr.shape[0], arr.shape[-1]
        cols: dict = {}
        meta: dict = {"ctf": None, "rot": None, "orig": np.zeros((n, 2)), "cls": None}
        if rotations is not None:
            rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
            if rot.shape[0] != n:
                raise ValueError(f"{n} images but {rot.shape[0]} rotations")
            meta["rot"] = rot
            cols["rlnAngleRot"], cols["rlnAngleTilt"], cols["rlnAnglePsi"] = matrix_to_euler(rot)
        if origins_A is not None:
            meta["orig"] = np.broadcast_to(np.asarray(origins_A, np.float64).reshape(-1, 2), (n, 2))
        cols["rlnOriginXAngst"], cols["rlnOriginYAngst"] = meta["orig"][:, 0], meta["orig"][:, 1]
        optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                  "rlnImagePixelSize": [float(pixel_size_A)], "rlnImageSize": [int(L)],
                  "rlnImageDimensionality": [2]}
        if ctf is not None:
            meta["ctf"] = ctf
            for f, c in (("defocus_u_A", "rlnDefocusU"), ("defocus_v_A", "rlnDefocusV"),
                         ("defocus_angle_deg", "rlnDefocusAngle"), ("phase_shift_deg", "rlnPhaseShift"),
                         ("bfactor_A2", "rlnCtfBfactor"), ("scale", "rlnCtfScalefactor")):
                cols[c] = np.broadcast_to(np.asarray(getattr(ctf, f), np.float64), (n,))
            for f, c in (("voltage_kV", "rlnVoltage"), ("cs_mm", "rlnSphericalAberration"),
                         ("amplitude_contrast", "rlnAmplitudeContrast")):
                v = np.asarray(getattr(ctf, f), np.float64)
                if v.ndim == 0 or np.all(v == v.flat[0]):
                    optics[c] = [float(v.flat[0])]
                else:
                    cols[c] = v
        if class_numbers is not None:
            meta["cls"] = np.asarray(class_numbers).reshape(-1)
            cols["rlnClassNumber"] = meta["cls"]
        cols["rlnOpticsGroup"] = np.ones(n, np.int64)
        particles = pd.DataFrame(cols, index=pd.RangeIndex(n))
        if table is not None:
            extra = table.reset_index(drop=True)
            particles = pd.concat([particles, extra[[c for c in extra.columns if c not in cols]]], axis=1)
        optics_df = pd.DataFrame(optics)
        star = StarFile(particles=particles, optics=optics_df,
                        blocks={"optics": optics_df, "particles": particles}, style="3.1", version=30001)
        s = object.__new__(cls)
        s._set_table(star)
        s.box, s.dtype = int(L), arr.dtype
        s.pixel_sizes_A = np.full(n, float(pixel_size_A))
        s._read = lambda idx: arr[idx]
        s._parent, s._rows = None, None
        s._meta, s._lock = meta, threading.Lock()
        return s

    @staticmethod
    def _resolve(name: str, search: list[Path], row: int, star_path) -> Path:
        p = Path(name)
        if p.is_absolute():
            if p.exists():
                return p
        else:
            for base in search:
                if (base / p).exists():
                    return base / p
        raise InputError(f"row {row + 1}: image stack {name!r} not found (looked in "
                         f"{', '.join(str(b) for b in search)})", star_path)

    # ------------------------------------------------------------------ figures
    @property
    def pixel_size_A(self) -> float:
        """The pixel size in Å shared by all particles (InputError if they differ by more than 0.01 %)."""
        if self.n == 0:
            return float("nan")
        lo, hi = float(self.pixel_sizes_A.min()), float(self.pixel_sizes_A.max())
        if hi - lo > 1e-4 * hi:
            raise InputError(f"particles have different pixel sizes ({lo:g}–{hi:g} Å); rescale them to one "
                             f"pixel size first (or select one optics group)", self.path)
        return float(np.median(self.pixel_sizes_A))

    def _get(self, key):
        """A per-particle value (``_META``), computed once: from the table, or from the parent."""
        with self._lock:
            if key not in self._meta:
                if self._parent is not None:
                    self._meta[key] = _take(self._parent._get(key), self._rows)
                elif key == "ctf":
                    self._meta[key] = _star.ctf_params(self.star)
                elif key == "rot":
                    self._meta[key] = _star.rotations(self.star)
                elif key == "orig":
                    self._meta[key] = _star.origins_A(self.star, pixel_size_A=self.pixel_sizes_A)
                else:
                    self._meta[key] = _star.class_numbers(self.star)
            return self._meta[key]

    def _idx(self, indices):
        return np.arange(self.n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)

    @property
    def has_ctf(self) -> bool:
        """Whether the particles have CTF parameters."""
        return self._get("ctf") is not None

    def ctf_params(self, indices=None) -> CTFParams:
        """Per-particle CTF parameters (InputError if the file has no defocus)."""
        ctf = self._get("ctf")
        if ctf is None:
            raise InputError("no CTF parameters (rlnDefocusU) in the particle table", self.path)
        return ctf if indices is None else ctf.take(self._idx(indices))

    def rotations(self, indices=None) -> np.ndarray:
        """``(n, 3, 3)`` RELION matrices A (InputError if the file has no angles)."""
        rot = self._get("rot")
        if rot is None:
            raise InputError("no particle orientations (rlnAngleRot/Tilt/Psi, or cryoSPARC "
                             "alignments3D/pose) in the table", self.path)
        return rot if indices is None else rot[self._idx(indices)]

    def origins_A(self, indices=None) -> np.ndarray:
        """``(n, 2)`` origins [x, y] in Å (0 where the table has none)."""
        o = self._get("orig")
        return o if indices is None else o[self._idx(indices)]

    def class_numbers(self, indices=None) -> np.ndarray | None:
        c = self._get("cls")
        return c if c is None or indices is None else c[self._idx(indices)]

    # ------------------------------------------------------------------ views
    def subset(self, indices) -> "ParticleStack":
        """A lazy view of rows ``indices`` (0-based, in that order); its table holds those rows with
        all their columns, renumbered from 0."""
        idx = self._idx(indices)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"particle indices must be in [0, {self.n})")
        return self._view(self.star.subset(idx), self.box, self.pixel_sizes_A[idx],
                          lambda rows: self.images(idx[rows]), rows=idx)

    def cropped(self, box: int) -> "ParticleStack":
        """A lazy view whose images are Fourier-cropped to ``box`` (``cryoprism.fourier.downsample``):
        pixel size × ``self.box / box``; origins in Å, CTF parameters and the table unchanged."""
        box = int(box)
        if box == self.box:
            return self
        if not 0 < box < self.box:
            raise ValueError(f"crop box {box} must be in [1, {self.box}]")
        return self._view(self.star, box, self.pixel_sizes_A * self.box / box,
                          lambda rows: downsample(self.images(rows), box)[0])

    # ------------------------------------------------------------------ images
    def images(self, indices=None) -> np.ndarray:
        """Images of rows ``indices`` (0-based; default all) as ``(b, L, L)`` of :attr:`dtype`."""
        idx = self._idx(indices)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"particle indices must be in [0, {self.n})")
        return self._read(idx)

    def _read_files(self, idx) -> np.ndarray:
        fid = self._file_id[idx]
        loc = self._local[idx]
        files = np.unique(fid)
        if files.size == 1:  # the common case: the whole batch from one stack, no extra copy
            return self._stacks[files[0]].read(loc)
        out = np.empty((idx.size, self.box, self.box), dtype=np.float32)
        for f in files:  # one read per stack file in the batch
            sel = np.flatnonzero(fid == f)
            out[sel] = self._stacks[f].read(loc[sel])
        return out

    def batch(self, indices) -> Batch:
        """A :class:`Batch` of rows ``indices``."""
        idx = self._idx(indices)
        ps = self.pixel_sizes_A[idx]
        return Batch(images=self.images(idx), indices=idx, ctf=_take(self._get("ctf"), idx),
                     rotations=_take(self._get("rot"), idx), origins_A=self.origins_A(idx),
                     class_number=self.class_numbers(idx),
                     pixel_size_A=float(np.median(ps)) if ps.size else None)

    def batches(self, batch_size: int = 1000, indices=None) -> Iterator[Batch]:
        """Yield :class:`Batch` es of at most ``batch_size`` particles, in order (of ``indices``)."""
        idx = self._idx(indices)
        for a, b in batch_ranges(len(idx), batch_size):
            yield self.batch(idx[a:b])

    def batch_indices(self, batch_size: int = 1000, indices=None) -> list[np.ndarray]:
        """The row indices of each batch, to hand to ``cryoprism.parallel.map_batches``."""
        idx = self._idx(indices)
        return [idx[a:b] for a, b in batch_ranges(len(idx), batch_size)]

    def __len__(self):
        return self.n

    def __repr__(self):
        where = f"files={len(self.files)}" if self.files else ("view" if self._parent else "in memory")
        return (f"ParticleStack(n={self.n}, box={self.box}, {where}, style={self.star.style!r}, "
                f"path={str(self.path)!r})")

    def close(self):
        for s in self._stacks:
            s.close()


def read_star_or_cs(path) -> StarFile:
    """A STAR or cryoSPARC .cs file as a :class:`StarFile` (by the file's suffix)."""
    path = Path(path)
    if path.suffix.lower() == ".cs":
        return read_cs(path)
    return read_star(path)


def read_particles(path, *, pixel_size_A: float | None = None) -> ParticleStack:
    """Open the particles of a STAR (RELION 3.0/3.1/5) or cryoSPARC ``.cs`` file.

    ``pixel_size_A`` is used only where neither the tables nor the MRC header give one.
    """
    star = path if isinstance(path, StarFile) else read_star_or_cs(path)
    return ParticleStack(star, pixel_size_A=pixel_size_A)


# -------------------------------------------------------------------------------------- writing
def _iter_image_batches(images, chunk: int = 1000) -> Iterator[np.ndarray]:
    if isinstance(images, ParticleStack):
        for b in images.batches(chunk):
            yield b.images
        return
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            images = images[None]
        for a, b in batch_ranges(len(images), chunk):
            yield images[a:b]
        return
    for item in images:
        yield item.images if isinstance(item, Batch) else np.asarray(item)


def write_particles(star_path, stack_path, images: Iterable, table=None, optics: pd.DataFrame | None = None,
                    *, pixel_size_A: float | None = None) -> tuple[Path, Path]:
    """Write particle images and their table as RELION 3.1 STAR + MRCS, streaming and atomically.

    ``images``: a :class:`ParticleStack` (then ``table`` and ``pixel_size_A`` default to its own), an
    iterable of ``(b, L, L)`` arrays or :class:`Batch` es, or an ``(n, L, L)`` array; n images in
    total, in table order. ``table``: a :class:`StarFile`, or a
    particle DataFrame (with ``optics``, a 3.1 table; without, a 3.0-style table whose optics columns
    are per row). ``pixel_size_A`` is the pixel size of the images written (defaults to the table's).

    Every input row and column is kept, in order; ``rlnImageName`` points into the new stack
    (``i@stack`` relative to the STAR folder), the old name is kept as ``rlnImageOriginalName`` when
    that column is not there yet; ``rlnOpticsGroup`` / ``rlnOriginX/YAngst`` are appended when missing.
    """
    star_path, stack_path = Path(star_path), Path(stack_path)
    if isinstance(images, ParticleStack):
        table = images.star if table is None else table
        pixel_size_A = images.pixel_size_A if pixel_size_A is None else pixel_size_A
    if isinstance(table, StarFile):
        star_in = table
    elif isinstance(table, pd.DataFrame):
        if optics is not None:
            star_in = StarFile(particles=table.reset_index(drop=True), optics=optics,
                               blocks={"optics": optics, "particles": table.reset_index(drop=True)},
                               style="3.1", optics_block="optics")
        else:
            t = table.reset_index(drop=True)
            star_in = StarFile(particles=t, optics=_star.derive_optics_30(t), blocks={"": t}, style="3.0",
                               particles_block="", optics_block=None)
    else:
        raise TypeError("table must be a StarFile or a pandas DataFrame")
    n = star_in.n
    ps_in = _star.pixel_sizes_A(star_in)
    if pixel_size_A is None:
        known = ps_in[~np.isnan(ps_in)]
        if known.size == 0:
            raise InputError(f"pixel size of the particles is unknown: pass pixel_size_A or "
                             f"{_star.PIXEL_SIZE_HINT}", star_path)
        if known.size != n or np.ptp(known) > 1e-4 * known.max():
            raise InputError("particles have different or missing pixel sizes; pass pixel_size_A",
                             star_path)
        pixel_size_A = float(known[0])

    it = iter(_iter_image_batches(images))
    first = next(it, None)
    if first is None and n:
        raise InputError(f"no images given for {n} particles", stack_path)
    first = None if first is None else np.asarray(first, dtype=np.float32)
    if first is not None and first.ndim == 2:
        first = first[None]
    box = int(first.shape[-1]) if first is not None else 0

    with atomic_path(stack_path) as tmp_stack:
        with MrcStackWriter(tmp_stack, n, box if box else 1, pixel_size_A) as w:
            if first is not None:
                w.write(first)
            for b in it:
                w.write(b)
        out = to_relion31(star_in, pixel_size_A=pixel_size_A, box=box or None,
                          input_pixel_sizes_A=ps_in)
        p = out.particles
        rel = os.path.relpath(stack_path.resolve(), star_path.resolve().parent)
        new_names = [f"{i:06d}@{rel}" for i in range(1, n + 1)]
        if "rlnImageName" in p.columns and "rlnImageOriginalName" not in p.columns:
            p["rlnImageOriginalName"] = p["rlnImageName"].to_numpy()
        p["rlnImageName"] = new_names
        if "rlnImagePixelSize" in p.columns:
            p["rlnImagePixelSize"] = pixel_size_A
        rescaled = not np.allclose(ps_in, pixel_size_A, rtol=1e-6, equal_nan=False)
        if rescaled and "rlnOriginXAngst" in p.columns and ("rlnOriginX" in p.columns
                                                            or "rlnOriginY" in p.columns):
            for c, ca in (("rlnOriginX", "rlnOriginXAngst"), ("rlnOriginY", "rlnOriginYAngst")):
                if c in p.columns:  # keep pixel origins consistent with the written pixel size
                    p[c] = pd.to_numeric(p[ca]).to_numpy() / pixel_size_A
        out.particles = p
        out.blocks[out.particles_block] = p
        write_star(star_path, out)
    return star_path, stack_path


def relocate_image_names(table, star_path, out_dir) -> "pd.DataFrame":
    """``table`` with its ``rlnImageName`` paths (``idx@path``, relative to ``star_path``'s folder or the
    current one) rewritten relative to ``out_dir``, where a new STAR of the same images is written."""
    out_dir = Path(out_dir)
    if "rlnImageName" not in table.columns:
        return table
    base = Path(star_path).parent if star_path else Path.cwd()

    def fix(name: str) -> str:
        if "@" not in str(name):
            return name
        idx, path = str(name).split("@", 1)
        p = Path(path)
        if not p.is_absolute():
            p = (base / p) if (base / p).exists() else (Path.cwd() / p)
        return f"{idx}@{os.path.relpath(p.resolve(), out_dir.resolve())}"

    table = table.copy()
    table["rlnImageName"] = [fix(v) for v in table["rlnImageName"]]
    return table
