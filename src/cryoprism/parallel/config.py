"""Run-time settings of the parallel machinery: one object, changed by :func:`configure`.

``settings()`` returns the current :class:`Settings`. They are created once, on first use, from these
documented defaults (environment variables read only then, never at import):

============================  ======================  =============================================
field                         environment default     meaning
============================  ======================  =============================================
``workers``                   ``CRYOPRISM_WORKERS``    threads of a local pass over the particles
                                                      (None: every CPU this process may use)
``fft_workers``               ``CRYOPRISM_FFT_WORKERS`` threads of one ``scipy.fft`` call (-1: all)
``scheduler``                 ``CRYOPRISM_SCHEDULER``  ``dask.distributed`` scheduler address
                                                      (None: this machine)
``progress``                  —                       show tqdm progress bars (``cryoprism -q``
                                                      hides them)
============================  ======================  =============================================

The command line's root options (``--workers``, ``--scheduler``, ``-q``) call :func:`configure`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """How work runs on this machine (see the module docstring)."""

    workers: int | None = None
    fft_workers: int = -1
    scheduler: str | None = None
    progress: bool = True


_current: Settings | None = None


def _from_environment() -> Settings:
    def opt_int(name):
        v = os.environ.get(name)
        return int(v) if v not in (None, "") else None

    fft = opt_int("CRYOPRISM_FFT_WORKERS")
    return Settings(workers=opt_int("CRYOPRISM_WORKERS"), fft_workers=-1 if fft is None else fft,
                    scheduler=os.environ.get("CRYOPRISM_SCHEDULER") or None)


def settings() -> Settings:
    """The current settings (created from the environment defaults on first use)."""
    global _current
    if _current is None:
        _current = _from_environment()
    return _current


def configure(**changes) -> Settings:
    """Change some settings (``configure(workers=4, progress=False)``); returns the new settings.

    A value of None for ``workers`` or ``scheduler`` means "the default" (all CPUs / this machine).
    """
    global _current
    new = dataclasses.replace(settings(), **changes)
    if new.workers is not None and new.workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {new.workers}")
    _current = new
    return new


def reset() -> Settings:
    """Forget the changes: settings from the environment defaults again (tests)."""
    global _current
    _current = None
    return settings()


def cpu_count() -> int:
    """CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Worker count of a local pass: the ``workers`` setting, else every CPU this process may use."""
    w = settings().workers
    return max(1, int(w)) if w else cpu_count()


def fft_workers() -> int:
    """Threads of one ``scipy.fft`` call (the ``workers=`` argument; -1 means all CPUs)."""
    return int(settings().fft_workers)


def finufft_threads(workers: int | None = None, batches: int | None = None) -> int:
    """Threads for one finufft call (its ``nthreads``): the one rule used everywhere.

    When ``workers`` (default :func:`default_workers`) threads run the calls of a pass in parallel
    (``workers > 1`` and more than one batch), each call gets 1 thread: the parallelism is over the
    batches, and nested OpenMP threads would oversubscribe the CPUs. A call that runs alone gets every
    worker (``default_workers()``)."""
    w = default_workers() if workers is None else max(1, int(workers))
    if w > 1 and (batches is None or batches > 1):
        return 1
    return default_workers()


def progress_enabled(progress: bool = True) -> bool:
    """Whether a progress bar asked for with ``progress`` is shown (``cryoprism -q`` hides them all)."""
    return bool(progress) and settings().progress


def progress_bar(*args, progress: bool = True, **kw):
    """A ``tqdm`` bar that respects the ``progress`` setting (``disable`` when hidden)."""
    from tqdm.auto import tqdm

    disable = kw.pop("disable", False)
    return tqdm(*args, disable=disable or not progress_enabled(progress), **kw)
