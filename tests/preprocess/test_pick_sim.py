"""The micrograph simulator's additions for the pickers: ice noise through the CTF, ice gradient."""

import numpy as np
import pytest

from . import pick_data
from .pick_data import PX


@pytest.fixture
def volume():
    return pick_data.volume()



def test_ice_noise_keeps_sigma_and_shows_thon_rings(volume):
    from cryoprism.ctf.model import ctf_2d
    from cryoprism.forward.micrographs import simulate_micrographs
    from cryoprism.fourier.core import fft2c

    res = simulate_micrographs(volume, 1, 512, 4, PX, snr=0.05, rng=2, progress=False, n_workers=1,
                               keep_clean=True, ctf_noise_fraction=0.5)
    noise = (res.micrographs[0] - res.clean[0]).astype(np.float64)
    assert abs(noise.std() / res.noise_sigma[0] - 1) < 0.02  # 512² samples: 0.3 % standard error
    power = np.abs(fft2c(noise)) ** 2
    c2 = ctf_2d(512, PX, res.ctf.take(0), np.float64) ** 2
    # half the variance follows CTF²: power = σ²N (½ + ½ CTF²/mean CTF²) on average
    assert np.corrcoef(power.ravel(), c2.ravel())[0, 1] > 0.3


def test_ice_gradient_is_a_ramp_of_the_given_height(volume):
    from cryoprism.forward.micrographs import simulate_micrographs

    kw = dict(snr=0.05, rng=2, progress=False, n_workers=1)
    a = simulate_micrographs(volume, 1, 256, 1, PX, **kw)
    b = simulate_micrographs(volume, 1, 256, 1, PX, ice_gradient=4.0, **kw)
    d = (b.micrographs[0] - a.micrographs[0]).astype(np.float64) / a.noise_sigma[0]
    yy, xx = np.mgrid[:256, :256]
    X = np.c_[np.ones(d.size), xx.ravel(), yy.ravel()]
    coef, res, *_ = np.linalg.lstsq(X, d.ravel(), rcond=None)
    assert np.abs(d.ravel() - X @ coef).max() < 1e-3  # a plane
    assert abs(np.hypot(coef[1], coef[2]) * 256 - 4.0) < 1e-3  # 4 σ over the micrograph's width
