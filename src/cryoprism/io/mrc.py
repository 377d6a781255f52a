"""MRC maps and image stacks (MRC2014 through ``mrcfile``), with voxel size and origin in Å.

* :func:`read_mrc` — the whole file as float32 ``[z, y, x]`` (or ``[y, x]``) plus the voxel size;
* :func:`read_mrc_header` — a dict of the header figures, without reading data;
* :func:`write_mrc` — atomic write of a map, image or stack;
* :func:`open_mrc_stack` — ``mrcfile`` memory map of a stack (permissive);
* :class:`MrcStack` — read-only memory-mapped stack used by :class:`cryoprism.io.ParticleStack`
  (copies batches out and releases the pages it touched, so memory stays flat);
* :class:`MrcStackWriter` — streams batches of images into a new stack file.

Files without the MRC ID string or a machine stamp are read (``permissive``) with a
``warnings.warn`` naming the file. Truncated files, unknown or complex modes, the wrong
dimensionality, or NaN where finite data is asked for raise :class:`~cryoprism.errors.InputError`.
"""

from __future__ import annotations

import mmap
import os
import threading
import warnings
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np

from cryoprism.errors import InputError
from cryoprism.io.atomic import atomic_path

_REAL_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_HEADER_BYTES = 1024


def _open_permissive(path, **kw):
    """``mrcfile.open(..., permissive=True)`` re-issuing mrcfile's warnings with the file name."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found (expected an MRC file)", path)
    if path.is_dir():
        raise InputError("is a folder (expected an MRC file)", path)
    if path.stat().st_size < _HEADER_BYTES:
        raise InputError(f"truncated: {path.stat().st_size} bytes, shorter than the 1024-byte MRC header",
                         path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            m = mrcfile.open(path, permissive=True, **kw)
        except (ValueError, OSError) as e:
            raise InputError(f"not a readable MRC file ({e})", path) from None
    for w in caught:
        warnings.warn(f"{path}: {w.message} (read anyway)", RuntimeWarning, stacklevel=3)
    return m


def _header_info(path, header) -> dict:
    """Figures of one MRC header; checks the mode and that the file holds all its data."""
    path = Path(path)
    mode = int(header.mode)
    if mode not in _REAL_MODES:
        kind = "complex" if mode in (3, 4) else "unknown"
        raise InputError(f"MRC mode {mode} ({kind}) is not supported; expected a real mode "
                         f"(0 int8, 1 int16, 2 float32, 6 uint16, 12 float16)", path)
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as e:  # pragma: no cover - mode already checked
        raise InputError(str(e), path) from None
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) < 1:
        raise InputError(f"MRC header gives a non-positive size nx={nx} ny={ny} nz={nz}", path)
    offset = _HEADER_BYTES + int(header.nsymbt)
    need = offset + nx * ny * nz * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise InputError(f"truncated: {size} bytes, but the header ({nx}×{ny}×{nz}, mode {mode}) "
                         f"needs {need}", path)
    cella = np.array([float(header.cella.x), float(header.cella.y), float(header.cella.z)])
    mxyz = np.array([int(header.mx), int(header.my), int(header.mz)])
    with np.errstate(divide="ignore", invalid="ignore"):
        vs = np.where(mxyz > 0, cella / np.maximum(mxyz, 1), 0.0)
    vs = np.array([float(str(np.float32(v))) for v in vs])  # header floats are float32: 1.05, not 1.0499999
    voxel = float(vs[0]) if vs[0] > 0 else None
    if voxel is not None and not np.allclose(vs[:2], vs[0], rtol=1e-4):
        warnings.warn(f"{path}: anisotropic voxel size {tuple(round(float(v), 5) for v in vs)} Å; "
                      f"using x = {vs[0]:.5g} Å",
                      RuntimeWarning, stacklevel=3)
    return {
        "path": str(path), "nx": nx, "ny": ny, "nz": nz, "mode": mode, "dtype": str(dtype),
        "ispg": int(header.ispg),
        "shape": (nz, ny, nx) if nz > 1 or int(header.ispg) != 0 else (ny, nx),
        "voxel_size_A": voxel,
        "voxel_size_xyz_A": tuple(float(v) for v in vs),
        "origin_A": (float(header.origin.x), float(header.origin.y), float(header.origin.z)),
        "start": (int(header.nxstart), int(header.nystart), int(header.nzstart)),
        "data_offset": offset, "byteorder": dtype.byteorder,
        "header_min": float(header.dmin), "header_max": float(header.dmax),
        "header_mean": float(header.dmean),
    }


def read_mrc_header(path) -> dict:
    """Header figures of an MRC file (no data read): ``nx, ny, nz, mode, shape, voxel_size_A`` (None if
    the header says 0 = unknown), ``origin_A`` (x, y, z), ``start``, ``ispg``, ``data_offset``."""
    with _open_permissive(path, header_only=True) as m:
        return _header_info(path, m.header)


def read_mrc(path, *, ndim: int | None = None, finite: bool = False):
    """Read a map, image or stack as float32 (``[z, y, x]`` or ``[y, x]``) and its voxel size in Å.

    ``ndim`` (2 or 3) demands that dimensionality; ``finite=True`` rejects NaN/inf. Returns
    ``(array, voxel_size_A)`` with ``voxel_size_A = None`` when the header says 0 (unknown).
    """
    info = read_mrc_header(path)
    arr = np.fromfile(path, dtype=np.dtype(info["dtype"]), count=info["nx"] * info["ny"] * info["nz"],
                      offset=info["data_offset"])
    arr = arr.reshape(info["nz"], info["ny"], info["nx"]).astype(np.float32)
    if info["nz"] == 1 and (ndim == 2 or (ndim is None and info["ispg"] == 0)):
        arr = arr[0]
    if ndim is not None and arr.ndim != ndim:
        what = {2: "a 2-D image", 3: "a 3-D volume or stack"}.get(ndim, f"{ndim}-D data")
        raise InputError(f"expected {what}, found shape {tuple(info['shape'])} "
                         f"(nx={info['nx']}, ny={info['ny']}, nz={info['nz']})", path)
    if finite:
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(f"{int(bad.sum())} non-finite values (NaN/inf) in the data; expected finite "
                             f"numbers", path)
    return arr, info["voxel_size_A"]


def write_mrc(path, data, voxel_size_A: float | None, origin_A=None, *, is_stack: bool = False) -> Path:
    """Write ``data`` (``[y, x]`` image, ``[z, y, x]`` volume, or ``[n, y, x]`` stack with
    ``is_stack=True``) as float32 MRC, atomically. ``voxel_size_A=None`` writes 0 (unknown);
    ``origin_A`` is (x, y, z) in Å."""
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise InputError(f"cannot write {data.ndim}-D data as MRC (expected 2-D or 3-D)", path)
    data = np.ascontiguousarray(data, dtype=np.float32)
    path = Path(path)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(data)
            if is_stack and data.ndim == 3:
                m.set_image_stack()
            m.voxel_size = float(voxel_size_A) if voxel_size_A else 0.0
            if origin_A is not None:
                ox, oy, oz = (tuple(origin_A) + (0.0, 0.0, 0.0))[:3]
                m.header.origin.x, m.header.origin.y, m.header.origin.z = ox, oy, oz
            m.update_header_stats()
    return path


def open_mrc_stack(path):
    """Memory-mapped ``mrcfile`` object of a stack (read-only, permissive); ``.data`` is ``[n, y, x]``."""
    info = read_mrc_header(path)  # checks size and mode first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already reported by read_mrc_header
        m = mrcfile.mmap(path, mode="r", permissive=True)
    if m.data is None:  # pragma: no cover - size already checked
        m.close()
        raise InputError("no data could be mapped", path)
    del info
    return m


class MrcStack:
    """Read-only memory map of an MRC stack ``[n, y, x]``: ``len``, ``box``, ``read(local_indices)``.

    ``read`` copies the requested images out (as float32) and then tells the kernel this process no
    longer needs the pages it touched (``MADV_DONTNEED``; they stay in the page cache), so a pass over a
    stack larger than RAM keeps a flat resident set.
    """

    def __init__(self, path, info: dict | None = None):
        self.path = Path(path)
        self.info = info if info is not None else read_mrc_header(path)
        self.n = self.info["nz"]
        self.shape = (self.info["ny"], self.info["nx"])
        self.dtype = np.dtype(self.info["dtype"])
        self._mm = None
        self._arr = None
        self._lock = threading.Lock()

    @property
    def voxel_size_A(self):
        return self.info["voxel_size_A"]

    def __len__(self):
        return self.n

    def _map(self):
        with self._lock:
            return self._map_locked()

    def _map_locked(self):
        if self._arr is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._arr = np.ndarray((self.n, *self.shape), dtype=self.dtype, buffer=self._mm,
                                   offset=self.info["data_offset"])
        return self._arr

    def read(self, local_indices) -> np.ndarray:
        """Images at 0-based ``local_indices`` (any order, repeats allowed) as float32 ``(b, y, x)``."""
        idx = np.asarray(local_indices, dtype=np.int64).reshape(-1)
        arr = self._map()
        out = np.empty((idx.size, *self.shape), dtype=np.float32)
        if idx.size == 0:
            return out
        if idx[0] >= 0 and np.all(np.diff(idx) == 1):
            out[...] = arr[idx[0]: idx[-1] + 1]
        else:
            out[...] = arr[idx]
        self._release(int(idx.min()), int(idx.max()) + 1)
        return out

    def _release(self, start: int, stop: int):
        if self._mm is None or not hasattr(self._mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        img = self.shape[0] * self.shape[1] * self.dtype.itemsize
        a = self.info["data_offset"] + start * img
        b = self.info["data_offset"] + stop * img
        page = mmap.ALLOCATIONGRANULARITY
        a0 = (a // page) * page
        b = min(b, len(self._mm))
        if b > a0:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, a0, b - a0)
            except (OSError, ValueError):  # pragma: no cover - advisory only
                pass

    def close(self):
        self._arr = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # an exported view is still alive; the GC will unmap it
                pass
            self._mm = None

    def __del__(self):  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


class MrcStackWriter:
    """Stream ``n`` images of ``box × box`` into a float32 MRC stack, batch by batch.

    The header is written first (with the final size), images are appended with plain writes (no
    memory map, so nothing accumulates in this process), and the min/max/mean/rms are written into
    the header at :meth:`close`. Writes to ``path`` directly: wrap in ``atomic_path`` for atomicity.
    """

    def __init__(self, path, n: int, box: int | tuple[int, int], voxel_size_A: float | None):
        self.path = Path(path)
        self.n = int(n)
        self.shape = (box, box) if np.isscalar(box) else tuple(int(b) for b in box)
        with mrcfile.new_mmap(self.path, shape=(max(self.n, 1), *self.shape), mrc_mode=2,
                              overwrite=True) as m:
            m.set_image_stack()
            m.voxel_size = float(voxel_size_A) if voxel_size_A else 0.0
            self._offset = _HEADER_BYTES + int(m.header.nsymbt)
            if self.n == 0:
                m.header.nz = 0
                m.header.mz = 0
        if self.n == 0:
            os.truncate(self.path, self._offset)
        self._f = open(self.path, "r+b")
        self._f.seek(self._offset)
        self.written = 0
        self._min, self._max, self._sum, self._sum2 = np.inf, -np.inf, 0.0, 0.0

    def write(self, images) -> None:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.shape[1:] != self.shape:
            raise InputError(f"image batch of shape {images.shape[1:]} does not match the stack's "
                             f"{self.shape}", self.path)
        if self.written + images.shape[0] > self.n:
            raise InputError(f"more images than the {self.n} declared", self.path)
        if images.size:
            self._min = min(self._min, float(images.min()))
            self._max = max(self._max, float(images.max()))
            for a in range(0, images.shape[0], 64):  # float64 sums without a full float64 copy
                x = images[a:a + 64].astype(np.float64)
                self._sum += float(x.sum())
                self._sum2 += float(np.vdot(x.ravel(), x.ravel()))
        self._f.write(memoryview(np.ascontiguousarray(images, dtype="<f4")).cast("B"))
        self.written += images.shape[0]

    def close(self) -> None:
        if self._f is None:
            return
        self._f.close()
        self._f = None
        if self.written != self.n:
            raise InputError(f"{self.written} images written, {self.n} expected", self.path)
        count = self.n * self.shape[0] * self.shape[1]
        if count:
            mean = self._sum / count
            rms = np.sqrt(max(self._sum2 / count - mean * mean, 0.0))
            with mrcfile.open(self.path, mode="r", header_only=True) as m:
                header = m.header.copy()
            header.dmin, header.dmax = self._min, self._max
            header.dmean, header.rms = mean, rms
            with open(self.path, "r+b") as f:  # rewrite the 1024 header bytes only
                f.write(header.tobytes())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        elif self._f is not None:
            self._f.close()
            self._f = None
