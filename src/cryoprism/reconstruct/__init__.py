"""Reconstruction from particles with known poses: least-squares mean (CG with a Toeplitz kernel),
direct Fourier inversion, weighted back-projection, SIRT (derivations in docs/reconstruct.md)."""

from cryoprism.reconstruct.classic import (  # noqa: E402  (imports mean)
    METHODS,
    fourier_inversion,
    grid_slices,
    reconstruct,
    reconstruct_fourier,
    reconstruct_wbp,
    sirt,
)
from cryoprism.reconstruct.mean import (
    CGCheckpoint,
    CGInfo,
    CGState,
    MeanKernel,
    MeanResult,
    accumulate_normal_equations,
    apply_kernel,
    checked_source,
    conjugate_gradient,
    half_set_labels,
    kernel_from_spatial,
    kernel_spatial,
    mean_kernel,
    read_batch,
    reconstruct_mean,
    solve_groups,
    solve_mean,
)

__all__ = [
    "reconstruct_mean", "mean_kernel", "apply_kernel", "kernel_spatial", "kernel_from_spatial",
    "MeanKernel", "MeanResult", "CGInfo", "CGState", "CGCheckpoint", "conjugate_gradient", "solve_mean",
    "accumulate_normal_equations", "checked_source", "read_batch", "half_set_labels", "solve_groups",
    "reconstruct", "reconstruct_wbp", "fourier_inversion", "grid_slices", "reconstruct_fourier", "sirt",
    "METHODS",
]
