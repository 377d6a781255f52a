"""File formats: MRC (maps, stacks), RELION STAR 3.0/3.1/5, cryoSPARC .cs; the particle source.

See docs/io.md for the formats, the cryoSPARC mapping and the pixel-size precedence.
"""

from cryoprism.io.atomic import atomic_path
from cryoprism.io.cryosparc import cryosparc_pose_to_relion_matrix, read_cs
from cryoprism.io.ctf_model import CTFParams
from cryoprism.io.mrc import MrcStack, MrcStackWriter, open_mrc_stack, read_mrc, read_mrc_header, write_mrc
from cryoprism.io.particles import (
    Batch,
    ParticleSource,
    ParticleStack,
    read_particles,
    read_star_or_cs,
    write_particles,
)
from cryoprism.io.star import (
    StarFile,
    class_numbers,
    column_per_particle,
    ctf_params,
    euler_angles_deg,
    origins_A,
    pixel_sizes_A,
    read_star,
    rotations,
    to_relion31,
    write_star,
)

__all__ = [
    "atomic_path",
    "read_mrc", "read_mrc_header", "write_mrc", "open_mrc_stack", "MrcStack", "MrcStackWriter",
    "StarFile", "read_star", "write_star", "to_relion31", "column_per_particle", "pixel_sizes_A",
    "ctf_params", "euler_angles_deg", "rotations", "origins_A", "class_numbers",
    "read_cs", "cryosparc_pose_to_relion_matrix",
    "ParticleSource", "ParticleStack", "Batch", "CTFParams", "read_particles", "read_star_or_cs",
    "write_particles",
]
