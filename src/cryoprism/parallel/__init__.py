"""Parallel map-reduce over particle batches on threads, local processes or a dask cluster."""

from cryoprism.parallel.core import batch_ranges, default_workers, map_batches, map_reduce, scheduler_address

__all__ = ["batch_ranges", "default_workers", "map_batches", "map_reduce", "scheduler_address"]
