"""`cryoprism abinitio` end to end on a tiny simulated STAR (outputs exist and are consistent)."""

import json

import numpy as np
import pytest

from cryoprism.abinitio import gmm


@pytest.mark.parametrize("method", ["gibbs", "hmc"])
def test_cli_abinitio_writes_outputs(tmp_path, rng, capsys, method):
    from cryoprism.cli.main import main
    from cryoprism.forward.simulate import simulate_particles
    from cryoprism.io.mrc import read_mrc
    from cryoprism.io.star import read_star

    L, px = 24, 5.0
    mix = gmm.GaussianMixture(rng.normal(scale=[20, 12, 8], size=(12, 3)), 1 / 40.0, np.ones(12) / 12)
    vol = gmm.render_volume(mix, L, px)
    star = tmp_path / "p.star"
    simulate_particles(vol, 6, px, snr=None, ctf=(method == "hmc"), rng=1, out_star=star,
                       out_mrcs=tmp_path / "p.mrcs", progress=False)
    out = tmp_path / "out"
    rc = main(["abinitio", str(star), "-o", str(out), "--method", method, "-K", "20",
               "--initial-components", "10", "--restarts", "2", "--initial-box", "16", "--refine-box", "24",
               "--rotations", "50", "--alternations", "2", "--sweeps", "4", "--counts", "200",
               "--refine-counts", "500", "--json"])
    assert rc == 0
    figs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figs["images"] == 6 and len(figs["restart_log_posteriors"]) == 2
    m, vs = read_mrc(out / "initial_model.mrc")
    assert m.shape == (L, L, L) and vs == pytest.approx(px)
    assert np.isfinite(m).all() and m.max() > 0
    back = gmm.read_mixture_csv(out / "mixture.csv")
    assert back.K == 20
    t = read_star(out / "rotations.star").particles
    assert len(t) == 6 and {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"} <= set(t.columns)
    assert (out / "log_posterior.png").stat().st_size > 1000
    assert (out / "checkpoints" / "refine.ckpt.npz").exists()
    # resume: everything already done → same rotations
    rc = main(["abinitio", str(star), "-o", str(out), "--method", method, "-K", "20",
               "--initial-components", "10", "--restarts", "2", "--initial-box", "16", "--refine-box", "24",
               "--rotations", "50", "--alternations", "2", "--sweeps", "4", "--counts", "200",
               "--refine-counts", "500", "--resume", "--json"])
    assert rc == 0
    t2 = read_star(out / "rotations.star").particles
    assert np.allclose(t2["rlnAngleTilt"].to_numpy(), t["rlnAngleTilt"].to_numpy())
    # resuming with other settings is refused (one line, exit 2), as is resuming where nothing ran
    assert main(["abinitio", str(star), "-o", str(out), "--method", method, "--resume", "--seed", "3"]) == 2
    assert main(["abinitio", str(star), "-o", str(tmp_path / "none"), "--resume"]) == 2


def test_cli_bad_method(tmp_path):
    from cryoprism.cli.main import main

    assert main(["abinitio", str(tmp_path / "missing.star"), "-o", str(tmp_path), "--method", "x"]) == 2


def test_cli_refine_init_reaches_the_pipeline(tmp_path, rng, monkeypatch):
    """--refine-init sample is passed to run_abinitio; an unknown value is a clear error (exit 2)."""
    import cryoprism.abinitio.pipeline as P
    from cryoprism.cli.main import main
    from cryoprism.forward.simulate import simulate_particles

    L, px = 16, 5.0
    mix = gmm.GaussianMixture(rng.normal(scale=[15, 10, 6], size=(6, 3)), 1 / 40.0, np.ones(6) / 6)
    star = tmp_path / "p.star"
    simulate_particles(gmm.render_volume(mix, L, px), 4, px, snr=None, ctf=False, rng=1, out_star=star,
                       out_mrcs=tmp_path / "p.mrcs", progress=False)
    seen = {}

    class Stop(Exception):
        pass

    def fake(*a, **k):
        seen.update(k)
        raise Stop

    monkeypatch.setattr(P, "run_abinitio", fake)
    with pytest.raises(Stop):
        main(["abinitio", str(star), "-o", str(tmp_path / "o"), "--refine-init", "sample"])
    assert seen["refine_init"] == "sample"
    assert main(["abinitio", str(star), "-o", str(tmp_path / "o"), "--refine-init", "median"]) == 2
