"""cryoprism.classify2d: rotation-invariant neighbours, VDM / MFVDM, graph-filter denoising, class averages."""

from cryoprism.classify2d.mfvdm import build_graph, graph_filter, mfvdm_neighbors
from cryoprism.classify2d.pipeline import (
    choose_class_centres,
    class_averages,
    mfvdm_denoise,
    neighbors,
    prepare,
    spca_denoise,
)
from cryoprism.classify2d.rid import Neighbors, align_pairs, rid_features, rid_neighbors

__all__ = ["Neighbors", "rid_features", "rid_neighbors", "align_pairs", "mfvdm_neighbors", "build_graph",
           "graph_filter", "prepare", "neighbors", "mfvdm_denoise", "spca_denoise", "class_averages",
           "choose_class_centres"]
