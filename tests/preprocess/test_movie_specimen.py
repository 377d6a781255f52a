"""simulate_movie with a given specimen image, and the preprocess chain started from movies."""

import numpy as np
import pytest

from cryoprism.preprocess.movies import simulate_movie


def _blobs(shape, centres, sigma=3.0):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in centres)


def test_specimen_movie_moves_the_given_image_along_the_true_displacement():
    centres = [(40, 50), (100, 30), (70, 90)]
    spec = _blobs((128, 144), centres)
    sim = simulate_movie(n_frames=6, pixel_size_A=1.0, dose_per_frame_e_A2=50.0, specimen=spec, defocus_A=None,
                         contrast=0.5, damage=False, drift_px=8.0, local_px=1.0, interp_order=1, rng=3)
    assert sim.frames.shape == (6, 128, 144)
    assert abs(sim.frames.mean() / 50.0 - 1) < 0.02                     # dose · px² counts per pixel
    # the noise-free sum is the specimen (frame-0 coordinates), scaled to the contrast
    t = sim.true_sum - sim.true_sum.mean()
    assert np.corrcoef(t.ravel(), spec.ravel())[0, 1] > 0.999
    assert t.std() / sim.true_sum.mean() == pytest.approx(0.5, rel=0.02)
    # the last frame: each blob's centre of mass moved by the true displacement there
    last = sim.frames[-1].astype(np.float64) - 50.0
    yy, xx = np.mgrid[0:128, 0:144]
    for x, y in centres:
        dx, dy = sim.displacement(np.array([x]), np.array([y]))[-1, 0]
        w = np.clip(last, 0, None) * (np.hypot(xx - x - dx, yy - y - dy) < 9)
        cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        assert np.hypot(cx - x - dx, cy - y - dy) < 0.5
        assert np.hypot(dx, dy) > 5                                       # it did move


def test_specimen_must_be_an_image():
    with pytest.raises(ValueError, match="specimen"):
        simulate_movie(n_frames=3, specimen=np.zeros((16, 16)))


def test_preprocess_chain_runs_from_movies(tmp_path):
    from cryoprism.io.job import Job
    from cryoprism.io.mrc import write_mrc
    from cryoprism.preprocess.chain import run_preprocess

    rng = np.random.default_rng(0)
    centres = [tuple(c) for c in rng.integers(30, 226, (12, 2))]
    spec = -_blobs((256, 256), centres, 4.0)
    sim = simulate_movie(n_frames=6, pixel_size_A=2.0, dose_per_frame_e_A2=4.0, specimen=spec, defocus_A=None,
                         contrast=0.3, drift_px=4.0, local_px=0.5, interp_order=1, rng=1)
    path = write_mrc(tmp_path / "movie.mrcs", sim.frames, 2.0, is_stack=True)
    job = Job(tmp_path / "out", "test")
    figs = run_preprocess([path], job, diameter_A=20.0, box=24, dose_per_frame_e_A2=4.0, threshold=3.0,
                          progress=False)
    assert (tmp_path / "out" / "micrographs" / "movie.mrc").exists()
    assert figs["micrographs"] == 1 and figs["picks"] > 0
