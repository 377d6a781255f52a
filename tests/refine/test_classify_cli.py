"""``cryoprism refine --classes 2`` on two simulated conformations: class maps, rlnClassNumber, rows kept."""

from importlib.resources import files

import numpy as np
import pytest

from cryoprism.cli.main import main
from cryoprism.forward import simulate_particles
from cryoprism.forward.volumes import volume_from_pdb
from cryoprism.heterogeneity.classify import matched_accuracy
from cryoprism.io import read_star, write_mrc
from cryoprism.io.mrc import read_mrc

L, PX = 24, 3.5


@pytest.mark.slow
def test_refine_classes_writes_class_maps_and_keeps_rows(tmp_path):
    vols = [volume_from_pdb(files("cryoprism.data") / f"adk_{s}.pdb.gz", L, PX, 8.0) for s in ("open", "closed")]
    sim = simulate_particles(vols, 200, PX, snr=2.0, shift_std_A=PX, rng=7, out_star=tmp_path / "p.star",
                             out_mrcs=tmp_path / "p.mrcs", progress=False)
    write_mrc(tmp_path / "ref.mrc", vols[0], PX)
    out = tmp_path / "out"
    rc = main(["refine", str(tmp_path / "p.star"), "--ref", str(tmp_path / "ref.mrc"), "-o", str(out), "--iter", "2",
               "--grid", "600", "--initial-lowpass", "15", "--classes", "2", "--json"])
    assert rc in (0, None)
    src = read_star(tmp_path / "p.star").particles
    got = read_star(out / "particles.star").particles
    assert len(got) == len(src)
    assert list(got.columns[:len(src.columns)]) == list(src.columns)  # input columns first, in order
    assert list(got["rlnMicrographName"]) == list(src["rlnMicrographName"])  # rows in order
    assert set(got["rlnClassNumber"]) == {1, 2}
    assert got["rlnMaxValueProbDistribution"].between(0.5, 1.0).all()
    assert matched_accuracy(sim.states, got["rlnClassNumber"].to_numpy()) > 0.6  # chance: 0.5 ± 0.035
    for c in (1, 2):
        v, px = read_mrc(out / f"class{c:03d}.mrc")
        assert v.shape == (L, L, L) and abs(px - PX) < 1e-3 and np.isfinite(v).all()
