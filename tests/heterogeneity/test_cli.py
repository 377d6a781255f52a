"""``cryoprism heterogeneity`` on a small simulated STAR file."""

import numpy as np
import pandas as pd

from cryoprism.cli.main import main
from cryoprism.io import read_star

from .conftest import blob_states, simulate_star_cli


def test_cli_outputs(tmp_path):
    star = simulate_star_cli(tmp_path, blob_states(16), 400)
    out = tmp_path / "het"
    assert main(["heterogeneity", str(star), "-o", str(out), "--nres", "8", "--method", "lowrank",
                 "--classes", "2", "--json"]) == 0
    for f in ["eigenvalues.csv", "coords.csv", "classes.star", "class_01.mrc", "class_02.mrc",
              "eigvol_01.mrc", "report.png", "class_01.star", "class_02.star"]:
        assert (out / f).exists(), f
    src = read_star(star).particles
    cls = read_star(out / "classes.star").particles
    assert len(cls) == len(src)
    assert set(cls["rlnClassNumber"]) <= {1, 2}
    assert list(cls.columns) == list(src.columns)  # rlnClassNumber overwritten, columns kept
    np.testing.assert_allclose(cls["rlnAngleRot"], src["rlnAngleRot"])
    ev = pd.read_csv(out / "eigenvalues.csv")
    assert np.all(np.diff(ev["eigenvalue"].to_numpy()) <= 1e-12)
    co = pd.read_csv(out / "coords.csv")
    assert len(co) == len(src) and "alpha_1" in co.columns
    # per-class STARs point at the images from their new folder
    sub = read_star(out / "class_01.star").particles
    name = sub["rlnImageName"].iloc[0].split("@", 1)[1]
    assert (out / name).resolve().exists()
    # volumes at the input box and pixel size (the analysis ran at N_res = 8); the summary file
    from cryoprism.io import read_mrc

    v, vs = read_mrc(out / "class_01.mrc")
    assert v.shape == (16, 16, 16) and abs(vs - 4.0) < 1e-6
    import json

    summ = json.loads((out / "summary.json").read_text())
    assert summ["command"] == "heterogeneity" and summ["states"] == 2 and "report.png" in summ["files"]


def test_cli_missing_file_is_one_line_error(tmp_path, capsys):
    assert main(["heterogeneity", str(tmp_path / "nope.star"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.star" in err[0]
