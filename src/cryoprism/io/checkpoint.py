"""Checkpoints of long computations: a folder of atomic ``.npz`` files stamped with the inputs.

A :class:`Checkpoints` folder holds one ``NAME.ckpt.npz`` per named step (a finished pass over the
particles, the state of a CG solve, …). Each file carries the run's *fingerprint* — a small JSON
dict of the settings and digests of the inputs (particle count, box, band, a hash of the pose/CTF
table, …). Resuming from a file with a different fingerprint raises an :class:`InputError` naming
the entries that differ, so a checkpoint is never silently used with other inputs. Files are written
with :func:`cryoprism.io.atomic.atomic_path`: an interrupt leaves the previous complete file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from cryoprism.errors import InputError
from cryoprism.io.atomic import atomic_path

SUFFIX = ".ckpt.npz"
#: with ``every_s=None``, periodic saves take at most this fraction of the wall time (2 %)
MAX_OVERHEAD = 0.02


def digest(*objs) -> str:
    """Short SHA-256 hex digest of arrays, scalars, strings, None and dataclasses (e.g. ``CTFParams``)."""
    h = hashlib.sha256()

    def feed(o):
        if o is None:
            h.update(b"<none>")
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            h.update(type(o).__name__.encode())
            for f in dataclasses.fields(o):
                h.update(f.name.encode())
                feed(getattr(o, f.name))
        elif isinstance(o, (list, tuple)):
            h.update(b"<seq>")
            for v in o:
                feed(v)
        elif isinstance(o, (str, bytes)):
            h.update(o.encode() if isinstance(o, str) else o)
        else:
            a = np.ascontiguousarray(np.asarray(o))
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())

    for o in objs:
        feed(o)
    return h.hexdigest()[:16]


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def fingerprint_mismatch(found: dict, expected: dict) -> list[str]:
    """Entries that differ, as ``key (checkpoint X, now Y)`` strings."""
    out = []
    for k in sorted(set(found) | set(expected)):
        a, b = found.get(k, "<absent>"), expected.get(k, "<absent>")
        if a != b:
            out.append(f"{k} (checkpoint {a}, now {b})")
    return out


def save_npz(path, arrays: dict, meta: dict) -> None:
    """Atomically write ``arrays`` and ``meta`` (JSON, under the key ``__meta__``) to ``path``."""
    d = {k: np.asarray(v) for k, v in arrays.items()}
    d["__meta__"] = np.array(json.dumps(_jsonable(meta), sort_keys=True))
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **d)


def load_meta(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["__meta__"]))


def load_npz(path) -> tuple[dict, dict]:
    """``(arrays, meta)`` from :func:`save_npz` (arrays read into memory)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
    return arrays, meta


class Checkpoints:
    """A checkpoint folder for one run.

    ``fingerprint``: JSON-able dict identifying the inputs and settings; every file is stamped with
    it. ``resume=False`` starts afresh (existing ``*.ckpt.npz`` files in the folder, and temporaries
    of a killed writer, are removed);
    ``resume=True`` requires at least one checkpoint there and refuses (``InputError``) files whose
    fingerprint differs. Periodic saves of a name (:meth:`due`) are at least ``every_s`` seconds
    apart (0: at every call); ``every_s=None`` (default) spaces them so that writing takes at most
    :data:`MAX_OVERHEAD` of the wall time (the write time is measured).
    """

    def __init__(self, directory, fingerprint: dict, resume: bool = False, *, every_s: float | None = None):
        self.directory = Path(directory)
        self.fingerprint = _jsonable(dict(fingerprint))
        self.resume = bool(resume)
        self.every_s = every_s
        self._last: dict = {}  # name -> (time of the last save or of the first due() call, write seconds)
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = sorted(self.directory.glob("*" + SUFFIX))
        if self.resume:
            if not existing:
                raise InputError("--resume: no checkpoint in this folder", self.directory)
            for p in existing:
                try:
                    found = load_meta(p).get("fingerprint", {})
                except Exception as e:  # noqa: BLE001  (a damaged file)
                    raise InputError(f"--resume: unreadable checkpoint ({e})", p)
                bad = fingerprint_mismatch(found, self.fingerprint)
                if bad:
                    raise InputError("--resume: the checkpoint was written with different inputs or "
                                     "settings: " + "; ".join(bad), p)
        else:  # start afresh: old checkpoints, and temporaries a killed writer left behind
            for p in existing + sorted(self.directory.glob(".*" + SUFFIX + ".*.part.npz")):
                p.unlink()

    def path(self, name: str) -> Path:
        return self.directory / f"{name}{SUFFIX}"

    def save(self, name: str, arrays: dict, **meta) -> None:
        t0 = time.perf_counter()
        save_npz(self.path(name), arrays, {"fingerprint": self.fingerprint, **meta})
        t1 = time.perf_counter()
        self._last[name] = (t1, t1 - t0)

    def load(self, name: str):
        """``(arrays, meta)`` of ``name`` when resuming and it exists, else None."""
        p = self.path(name)
        if not (self.resume and p.exists()):
            return None
        arrays, meta = load_npz(p)
        bad = fingerprint_mismatch(meta.get("fingerprint", {}), self.fingerprint)
        if bad:
            raise InputError("--resume: the checkpoint was written with different inputs or settings: "
                             + "; ".join(bad), p)
        return arrays, meta

    def due(self, name: str) -> bool:
        """Whether a periodic save of ``name`` is due now (see the class docstring)."""
        now = time.perf_counter()
        if name not in self._last:
            self._last[name] = (now, 0.0)
        last, cost = self._last[name]
        wait = cost / MAX_OVERHEAD if self.every_s is None else float(self.every_s)
        return now - last >= wait
