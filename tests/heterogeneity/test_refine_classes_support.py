"""The support of the class differences: the particle's envelope from the common mean."""

import numpy as np

from cryoprism.forward import gaussian_blob_volume
from cryoprism.heterogeneity.refine_classes import molecule_support


def test_molecule_support_covers_the_particle_and_leaves_the_solvent():
    L = 24
    mean = gaussian_blob_volume(L, [(0, 0, 0), (4, 2, -3)], [2.0, 1.5], dtype=np.float64)
    mean = mean + np.random.default_rng(0).normal(0, 0.01 * mean.max(), mean.shape)
    m = molecule_support(mean)
    c = L // 2
    assert m[c, c, c] == 1.0 and m[c + 4, c + 2, c - 3] == 1.0  # array axes [z, y, x] = blob offsets
    assert m[0, 0, 0] == 0.0 and m[c, c, 2] == 0.0
    assert 0.01 < m.mean() < 0.25

