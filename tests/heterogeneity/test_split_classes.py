"""Class splitting after the full-resolution refinement: a class that merges two simulated states is
split (and the two parts then match the states), a class of one state is not."""

import numpy as np

from cryoprism.ctf.model import ctf_2d
from cryoprism.forward import project
from cryoprism.heterogeneity.classify import matched_accuracy
from cryoprism.heterogeneity.refine_classes import refine_classes
from cryoprism.io import ParticleStack

from .conftest import blob_states, simulate


def _oracle(imgs, rot, p, px, vols, lab):
    c = ctf_2d(imgs.shape[-1], px, p)
    res = np.stack([np.sum((imgs - project(v, rot, None, c)) ** 2, axis=(1, 2)) for v in vols], 1)
    return float(np.mean(np.argmin(res, 1) == lab))


def test_a_class_of_two_states_is_split_and_one_state_is_not():
    vols = blob_states(16)
    imgs, rot, org, p, lab, s2, px = simulate(vols, 800, 0.05, seed=11)
    src = ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, ctf=p)
    merged = refine_classes(src, np.zeros(lab.size, np.int64), 1, s2, split=True, max_iterations=6,
                            progress=False)
    d = merged.info["splits"]
    assert d[0]["tested"] and d[0]["split"] and d[0]["kept"] and d[0]["p_value"] < 1e-3
    assert len(merged.proportions) == 2
    assert matched_accuracy(lab, merged.labels) > _oracle(imgs, rot, p, px, vols, lab) - 0.03
    # the same noise, the same views, one state: the class is tested and kept whole
    c = ctf_2d(16, px, p)
    one = (project(vols[0], rot, None, c)
           + np.random.default_rng(12).standard_normal(imgs.shape) * np.sqrt(s2)).astype(np.float32)
    single = refine_classes(ParticleStack.from_arrays(one, pixel_size_A=px, rotations=rot, ctf=p),
                            np.zeros(lab.size, np.int64), 1, s2, split=True, max_iterations=6, progress=False)
    s = single.info["splits"]
    assert len(single.proportions) == 1 and s[0]["tested"] and not s[0]["split"] and s[0]["p_value"] > 1e-3
