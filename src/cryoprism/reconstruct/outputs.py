"""Writing a reconstruction through a job: the volume, the half-maps and the FSC figures."""

from __future__ import annotations

from pathlib import Path


def write_outputs(job, res, pixel_size_A: float, name: str = "volume.mrc") -> dict:
    """Write ``res`` (:class:`cryoprism.reconstruct.MeanResult`) through ``job``
    (:class:`cryoprism.io.job.Job`): ``name`` (voxel size = ``pixel_size_A``) and, when the result has
    half-maps, ``NAME_half1/2`` next to it; record the time, iterations, residual and, with half-maps,
    the gold-standard FSC (curve and 0.143 resolution in Å) in the job's summary."""
    figures = {"volume": job.write_mrc(name, res.volume, pixel_size_A), "seconds": res.seconds,
               "iterations": res.iterations, "residual": res.residual}
    if res.half_maps is not None:
        from cryoprism.metrics.fsc import resolution_at

        stem, sfx = Path(name).stem, Path(name).suffix
        figures["half_maps"] = [job.write_mrc(f"{stem}_half{q + 1}{sfx}", h, pixel_size_A)
                                for q, h in enumerate(res.half_maps)]
        figures["resolution_fsc_0.143_A"] = resolution_at(res.fsc, 0.143)
        figures["fsc"] = res.fsc.to_dict()
    job.record(**figures)
    return figures
