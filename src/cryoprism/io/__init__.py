"""File formats: MRC (maps, stacks), RELION STAR 3.0/3.1/5, cryoSPARC .cs; lazy particle stacks."""

from cryoprism.io.atomic import atomic_path

__all__ = ["atomic_path"]
