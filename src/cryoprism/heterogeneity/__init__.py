"""Heterogeneity: mean and 3-D covariance by conjugate gradient (Andén, Katsevich & Singer 2015),
eigenvolumes, number of states from the spectral gap, per-particle coordinates and classes, per-class
volumes (derivations and cost in docs/heterogeneity.md)."""

from cryoprism.heterogeneity.classify import (
    StateCount,
    choose_states,
    coordinates,
    count_states,
    gmm_classes,
    matched_accuracy,
    spectral_gaps,
    subspace_em,
)
from cryoprism.heterogeneity.covariance import (
    CovarianceResult,
    MeanOperator,
    SubspaceSystem,
    build_kernel6,
    covariance_full,
    covariance_lowrank,
    estimate_mean,
    full_memory_bytes,
    range_basis,
)
from cryoprism.heterogeneity.data import (
    HetData,
    compute_residuals,
    noise_variance,
    prepare,
    subspace_statistics,
)
from cryoprism.heterogeneity.pipeline import (
    HeterogeneityResult,
    analyze,
    class_reconstructions,
    resolve_nres,
    write_outputs,
)

__all__ = [
    "HetData", "prepare", "noise_variance", "compute_residuals", "subspace_statistics",
    "MeanOperator", "estimate_mean", "SubspaceSystem", "CovarianceResult", "covariance_full",
    "covariance_lowrank", "build_kernel6", "full_memory_bytes", "range_basis",
    "StateCount", "spectral_gaps", "choose_states", "count_states", "coordinates", "gmm_classes",
    "subspace_em", "matched_accuracy",
    "HeterogeneityResult", "analyze", "class_reconstructions", "resolve_nres", "write_outputs",
]
