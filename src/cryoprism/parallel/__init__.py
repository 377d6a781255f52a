"""Parallel map-reduce over particle batches on threads, local processes or a dask cluster, and the
run-time settings (workers, FFT threads, scheduler, progress bars) in one :class:`Settings` object."""

from cryoprism.parallel.config import (
    Settings,
    configure,
    default_workers,
    fft_workers,
    finufft_threads,
    progress_bar,
    settings,
)
from cryoprism.parallel.core import batch_ranges, map_batches, map_reduce, scheduler_address

__all__ = ["Settings", "batch_ranges", "configure", "default_workers", "fft_workers", "finufft_threads",
           "map_batches", "map_reduce", "progress_bar", "scheduler_address", "settings"]
