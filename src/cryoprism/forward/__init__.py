"""Forward model: Fourier-slice projection and its adjoint, synthetic volumes, particle and
micrograph simulation (RELION conventions, docs/conventions.md; derivations in docs/forward.md)."""

from cryoprism.forward.projection import (
    backproject,
    backproject_slices,
    nufft_eps,
    project,
    project_slices,
    slice_indices,
    slice_points,
)
from cryoprism.forward.volumes import gaussian_blob_volume, read_atoms, volume_from_atoms, volume_from_pdb

__all__ = [
    "project", "backproject", "project_slices", "backproject_slices", "slice_points", "slice_indices",
    "nufft_eps", "gaussian_blob_volume", "volume_from_pdb", "volume_from_atoms", "read_atoms",
]
from cryoprism.forward.simulate import (  # noqa: E402
    SimulationResult,
    draw_defocus_groups,
    make_noise,
    noise_psd_grid,
    simulate_particles,
)

__all__ += ["simulate_particles", "SimulationResult", "make_noise", "noise_psd_grid", "draw_defocus_groups"]
from cryoprism.forward.micrographs import MicrographResult, place_particles, simulate_micrographs  # noqa: E402

__all__ += ["simulate_micrographs", "MicrographResult", "place_particles"]
