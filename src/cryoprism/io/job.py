"""One job: the output folder of one command run, and everything written into it.

A :class:`Job` owns ``OUT/``. Every command (and every library entry point that writes files) goes
through it, so outputs, checkpoints, figures, the log and the JSON summary look the same everywhere:

- ``job.path(name)`` — a path inside ``OUT/`` (folders created);
- ``job.write_mrc / write_stack / write_star / write_particles / write_csv / write_json / write_text``
  — atomic writers (a temporary name in the same folder, renamed on success);
- ``job.save_figure(name, fig)`` — a matplotlib figure, written atomically and closed;
- ``job.checkpoints`` — one checkpoint format (``OUT/checkpoints/NAME.ckpt.npz``) stamped with the
  job's fingerprint (command, settings, input digests); ``resume=True`` refuses files written with other
  inputs or settings (:class:`cryoprism.io.checkpoint.Checkpoints`);
- ``job.log`` — a :mod:`logging` logger (``cryoprism.<command>``), also written to ``OUT/job.log``;
- ``job.record(**figures)`` then ``job.finish()`` — the summary, written to ``OUT/summary.json`` and
  returned (the CLI prints it, or prints it as one JSON object with ``--json``).

Library entry points take an optional ``job``: they add what identifies their prepared data to the
fingerprint (:meth:`Job.add_inputs`) before their first checkpoint, and write their outputs through it.
A command whose output is one file (``cryoprism downsample IN OUT.mrcs``) uses :meth:`Job.for_file`:
the folder is the file's, and no summary or log file is added next to it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryoprism.io.atomic import atomic_path
from cryoprism.io.checkpoint import Checkpoints, _jsonable

CHECKPOINT_DIR = "checkpoints"
SUMMARY = "summary.json"
LOG = "job.log"


def jsonable(x: Any):
    """``x`` with numpy scalars/arrays turned into Python numbers/lists, non-finite floats into None."""
    if isinstance(x, Path):
        return str(x)
    x = _jsonable(x)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [jsonable(v) for v in x]
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


class Job:
    """The output folder of one run of ``command``.

    ``settings``: the run's settings (JSON-able; part of the checkpoint fingerprint). ``inputs``: small
    digests identifying the inputs (e.g. ``cryoprism.io.checkpoint.digest`` of the pose/CTF table),
    also part of the fingerprint. ``resume``: continue from ``OUT/checkpoints`` (see
    :class:`~cryoprism.io.checkpoint.Checkpoints`). Checkpoints are created on first use of
    :attr:`checkpoints`, so a command that never checkpoints leaves no folder.
    """

    def __init__(self, out, command: str, settings: dict | None = None, inputs: dict | None = None, *,
                 resume: bool = False, every_s: float | None = None, log_to_file: bool = True,
                 volatile: tuple = (), write_summary: bool = True):
        self.out = Path(out)
        self.command = command
        self.settings = jsonable(dict(settings or {}))
        self.inputs = jsonable(dict(inputs or {}))
        #: settings recorded in the summary but left out of the fingerprint (e.g. an iteration limit
        #: that a resumed run may raise)
        self.volatile = tuple(volatile)
        self.resume = bool(resume)
        self._every_s = every_s
        self._write_summary = bool(write_summary)
        self._checkpoints: Checkpoints | None = None
        self.summary: dict = {}
        self.t0 = time.perf_counter()
        self.log = logging.getLogger(f"cryoprism.{command}")
        self._handler = None
        if resume and not (self.out / CHECKPOINT_DIR).is_dir():
            from cryoprism.errors import InputError

            raise InputError("--resume: no checkpoint folder here (run without --resume first)",
                             self.out / CHECKPOINT_DIR)
        self.out.mkdir(parents=True, exist_ok=True)
        if log_to_file:
            h = logging.FileHandler(self.out / LOG, mode="a" if resume else "w")
            h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            self.log.addHandler(h)
            self._handler = h

    @classmethod
    def for_file(cls, path, command: str, settings: dict | None = None) -> Job:
        """A job writing one output file ``path`` (its folder; no log or summary file added there)."""
        return cls(Path(path).parent, command, settings, log_to_file=False, write_summary=False)

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Detach the log file (done by :meth:`finish`; call it when a run stops early)."""
        if self._handler is not None:
            self.log.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    # ------------------------------------------------------------------ checkpoints
    @property
    def fingerprint(self) -> dict:
        return {"command": self.command,
                **{f"setting.{k}": v for k, v in self.settings.items() if k not in self.volatile},
                **{f"input.{k}": v for k, v in self.inputs.items()}}

    def add_inputs(self, **entries) -> None:
        """Add entries identifying the inputs (digests, sizes, derived settings) to the fingerprint.

        Library code calls this before its first checkpoint; once the checkpoint folder is open the
        fingerprint is fixed, and adding a different value raises ``RuntimeError``."""
        new = jsonable(entries)
        if self._checkpoints is not None:
            changed = {k for k, v in new.items() if self.inputs.get(k, object()) != v}
            if changed:
                raise RuntimeError(f"checkpoints already open; cannot add inputs {sorted(changed)}")
            return
        self.inputs.update(new)

    @property
    def checkpoints(self) -> Checkpoints:
        if self._checkpoints is None:
            self._checkpoints = Checkpoints(self.out / CHECKPOINT_DIR, self.fingerprint, self.resume,
                                            every_s=self._every_s)
        return self._checkpoints

    # ------------------------------------------------------------------ writers
    def path(self, name) -> Path:
        p = self.out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_mrc(self, name, data, voxel_size_A: float | None, *, is_stack: bool = False) -> Path:
        from cryoprism.io.mrc import write_mrc

        return write_mrc(self.path(name), data, voxel_size_A, is_stack=is_stack)

    def write_stack(self, name, batches, n: int, box, voxel_size_A: float | None) -> Path:
        """Stream ``n`` images (an iterable of ``(b, box, box)`` batches, in order) into an MRC stack."""
        from cryoprism.io.mrc import MrcStackWriter

        p = self.path(name)
        with atomic_path(p) as tmp:
            with MrcStackWriter(tmp, n, box, voxel_size_A) as w:
                for b in batches:
                    w.write(b)
        return p

    def write_star(self, name, star, optics=None) -> Path:
        from cryoprism.io.star import write_star

        return write_star(self.path(name), star, optics)

    def write_particles(self, star_name, stack_name, images, table, optics=None, **kw):
        from cryoprism.io.particles import write_particles

        return write_particles(self.path(star_name), self.path(stack_name), images, table, optics, **kw)

    def write_csv(self, name, table) -> Path:
        """A pandas DataFrame (or a dict of equal-length columns) as CSV, without the index."""
        import pandas as pd

        df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
        p = self.path(name)
        with atomic_path(p) as tmp:
            df.to_csv(tmp, index=False)
        return p

    def write_json(self, name, obj) -> Path:
        return self.write_text(name, json.dumps(jsonable(obj), indent=1, sort_keys=False) + "\n")

    def write_text(self, name, text: str) -> Path:
        p = self.path(name)
        with atomic_path(p) as tmp:
            Path(tmp).write_text(text)
        return p

    def save_figure(self, name, fig, dpi: int = 110) -> Path:
        """Save a matplotlib figure atomically (format from the suffix, default PNG) and close it."""
        import matplotlib.pyplot as plt

        p = self.path(name if Path(name).suffix else f"{name}.png")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=p.suffix.lstrip("."))
        plt.close(fig)
        return p

    # ------------------------------------------------------------------ summary
    def record(self, **figures) -> None:
        """Add figures (numbers, short lists, paths) to the summary."""
        self.summary.update(jsonable(figures))

    def finish(self) -> dict:
        """Write ``OUT/summary.json`` (with the wall time) and return the summary."""
        self.summary.setdefault("time_s", round(time.perf_counter() - self.t0, 3))
        if self._write_summary:
            self.write_json(SUMMARY, {"command": self.command, "settings": self.settings, **self.summary})
        self.close()
        return self.summary
