"""Class splitting after the full-resolution refinement: a class that merges two simulated states is
split (and the two parts then match the states), a class of one state is not."""

import numpy as np

from cryoprism.ctf.model import ctf_2d
from cryoprism.forward import project
from cryoprism.heterogeneity.classify import matched_accuracy
from cryoprism.heterogeneity.refine_classes import refine_classes
from cryoprism.io import ParticleStack

from .conftest import blob_states, simulate


def _two_states():
    vols = blob_states(16)
    return (vols,) + simulate(vols, 500, 0.05, seed=11)


def test_a_class_merging_two_states_is_split_into_them():
    """One class holding both states: its first eigenvalue is significant, it is split, and the two
    classes then classify within 3 points of the oracle (true volumes, poses and CTF)."""
    vols, imgs, rot, org, p, lab, s2, px = _two_states()
    src = ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, ctf=p)
    r = refine_classes(src, np.zeros(lab.size, np.int64), 1, s2, split=True, max_iterations=6,
                       max_classes=2, progress=False)
    d = r.info["splits"]
    assert len(d) == 1 and d[0]["tested"] and d[0]["split"] and d[0]["kept"] and d[0]["p_value"] < 1e-3
    assert len(r.proportions) == 2 and r.volumes.shape[0] == 2
    c = ctf_2d(16, px, p)
    res = np.stack([np.sum((imgs - project(v, rot, None, c)) ** 2, axis=(1, 2)) for v in vols], 1)
    oracle = float(np.mean(np.argmin(res, 1) == lab))
    assert matched_accuracy(lab, r.labels) > oracle - 0.03


def test_a_class_of_one_state_is_not_split():
    """The same views, CTFs and noise level, one state: the class is tested and kept whole."""
    vols, imgs, rot, org, p, lab, s2, px = _two_states()
    c = ctf_2d(16, px, p)
    one = (project(vols[0], rot, None, c)
           + np.random.default_rng(12).standard_normal(imgs.shape) * np.sqrt(s2)).astype(np.float32)
    r = refine_classes(ParticleStack.from_arrays(one, pixel_size_A=px, rotations=rot, ctf=p),
                       np.zeros(lab.size, np.int64), 1, s2, split=True, max_iterations=6, progress=False)
    d = r.info["splits"]
    assert len(r.proportions) == 1 and len(d) == 1 and d[0]["tested"] and not d[0]["split"]
    assert d[0]["p_value"] > 1e-3
