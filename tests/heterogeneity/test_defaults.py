"""``heterogeneity`` at its defaults: N_res chosen from the data's spectral SNR (``choose_nres``)."""

import numpy as np

from cryoprism.forward import gaussian_blob_volume, project
from cryoprism.geometry import uniform_rotations
from cryoprism.heterogeneity.pipeline import NRES_MAX, NRES_MIN, choose_nres, resolve_nres
from cryoprism.io import ParticleStack


def _source(sigma_px, noise, n=600, L=32, seed=0):
    rng = np.random.default_rng(seed)
    vol = gaussian_blob_volume(L, [(0, 0, 0), (4, -3, 2), (-3, 3, -4)], [sigma_px] * 3, [1.0, 0.8, 0.9])
    A = uniform_rotations(n, rng)
    im = project(vol, A)
    im = im + noise * im.std() * rng.standard_normal(im.shape)
    return ParticleStack.from_arrays(im.astype(np.float32), pixel_size_A=3.0, rotations=A)


def test_nres_follows_the_band_that_carries_signal():
    """Sharper particles and less noise carry signal to higher frequencies: N_res grows, and it
    stays within [NRES_MIN, min(L, NRES_MAX)]; an explicit --nres or --max-res still wins."""
    sharp_clean, info = choose_nres(_source(1.0, 0.5))
    sharp_noisy, _ = choose_nres(_source(1.0, 4.0))
    smooth_clean, _ = choose_nres(_source(3.0, 0.5))
    assert sharp_noisy < sharp_clean and smooth_clean < sharp_clean
    for N in (sharp_clean, sharp_noisy, smooth_clean):
        assert NRES_MIN <= N <= min(32, NRES_MAX)
    # the band limit it reports is where the blobs' Gaussian spectrum has sunk into the noise
    assert 0.1 <= info["ssnr_bandlimit_cpp"] <= 0.5
    src = _source(1.0, 0.5)
    assert resolve_nres(32, 3.0, 10, None, source=src) == 10
    assert resolve_nres(32, 3.0, None, 12.0, source=src) == 16
