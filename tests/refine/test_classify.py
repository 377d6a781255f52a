"""3-D classification at known poses separates two conformations (ADK open / closed)."""

from importlib.resources import files

import numpy as np

from cryoprism.forward import simulate_particles
from cryoprism.forward.volumes import volume_from_pdb
from cryoprism.heterogeneity.classify import matched_accuracy
from cryoprism.io import read_particles
from cryoprism.refine.classify import classify3d

L, PX = 24, 3.5


def test_two_states_are_separated(tmp_path):
    vols = [volume_from_pdb(files("cryoprism.data") / f"adk_{s}.pdb.gz", L, PX, 8.0) for s in ("open", "closed")]
    sim = simulate_particles(vols, 240, PX, snr=0.5, rng=5, out_star=tmp_path / "p.star",
                             out_mrcs=tmp_path / "p.mrcs", progress=False)
    ps = read_particles(tmp_path / "p.star")
    res = classify3d(ps, 2, sim.rotations, sim.origins_A, resolution_A=10.0, iterations=6, progress=False)
    assert matched_accuracy(sim.states, res.labels) > 0.9
    assert len(res.volumes) == 2 and res.volumes[0].shape == (L, L, L)
    assert np.all((res.probability >= 0.5) & (res.probability <= 1.0))
