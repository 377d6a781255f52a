"""3-D refinement: poses and map from particles and a starting map (gold-standard auto-refinement).

See docs/refine.md for the scoring, the searches and the measured results.
"""

from cryoprism.refine.pipeline import (
    GoldStandardMaps,
    RefineResult,
    RefineSettings,
    match_reference,
    reconstruct_gold_standard,
    refine,
)
from cryoprism.refine.search import fourier_set, global_search, local_search, rotation_stencil
from cryoprism.refine.symmetry import symmetrize, symmetry_group

__all__ = ["refine", "RefineResult", "RefineSettings", "match_reference", "reconstruct_gold_standard",
           "GoldStandardMaps", "fourier_set", "global_search",
           "local_search", "rotation_stencil", "symmetry_group", "symmetrize"]
