"""`cryoprism reconstruct` at its defaults: the particle's ball is found from the data and beats the
unmasked map against the truth (the figure the mean-reconstruction benchmark checks: FSC vs truth)."""

import json

import numpy as np

from cryoprism.cli.main import main
from cryoprism.forward import gaussian_blob_volume, simulate_particles
from cryoprism.io import read_mrc
from cryoprism.metrics import fsc, resolution_at
from cryoprism.reconstruct.mean import particle_radius_px


def test_particle_radius_from_half_maps(rng):
    """Two noisy copies of a ball of radius 6 in a 32³ box: the shells where signal beats noise end at
    the ball's edge (the Gaussian smoothing of 1 px widens it by about a pixel)."""
    L = 32
    g = np.arange(L) - L // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    ball = (r <= 6).astype(float)
    x1, x2 = (ball + 0.5 * rng.standard_normal((L,) * 3) for _ in range(2))
    assert 6 <= particle_radius_px(x1, x2) <= 8
    # noiseless: the signal reaches the box edge → no support (None)
    assert particle_radius_px(ball + 1.0, ball + 1.0) is None


def test_cli_reconstruct_defaults_find_the_ball_and_beat_no_mask(tmp_path, capsys):
    L, px = 32, 4.0
    vol = gaussian_blob_volume(L, [(2.0, 1.0, -2.0), (-2.0, -2.0, 2.0), (0.0, 3.0, 1.0)], [2.0, 2.5, 2.0],
                               [1.0, 0.7, 0.8])
    star = tmp_path / "p.star"
    simulate_particles(vol, 600, px, snr=0.02, rng=3, out_star=star, out_mrcs=tmp_path / "p.mrcs",
                       progress=False, batch_size=300)
    res = {}
    for name, extra in (("default", []), ("none", ["--mask-radius", "none"])):
        out = tmp_path / f"{name}.mrc"
        capsys.readouterr()
        assert main(["reconstruct", str(star), "-o", str(out), "--json", *extra]) == 0
        fig = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        v, _ = read_mrc(out)
        res[name] = (fig, resolution_at(fsc(v, vol, px), 0.5), float(np.linalg.norm(v - vol)))
    fig = res["default"][0]
    # the blobs reach ~5 + 2.5·2 px from the centre: the chosen ball holds them, far inside the box
    assert 6 <= fig["mask_radius_px"] <= 13, fig
    assert res["default"][2] < 0.8 * res["none"][2]       # closer to the truth
    assert res["default"][1] <= res["none"][1]           # FSC 0.5 vs truth at least as fine
