"""Picking: matched-filter pickers against simulated micrographs with known centres."""

import numpy as np
import pytest

from cryoprism.preprocess.pick import (
    auto_threshold,
    find_peaks,
    map_templates,
    match_picks,
    pick_micrograph,
    region_outliers,
    subpixel_offsets,
    variance_outliers,
)

from .pick_data import DIAMETER_A, PX, aggregate, truth_xy

RADIUS = 0.25 * DIAMETER_A / PX


def test_match_picks_counts_one_to_one():
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 10.0]])
    picks = np.array([[11.0, 10.0], [10.0, 12.0], [50.0, 56.5], [200.0, 200.0]])
    m = match_picks(picks, truth, 5.0)
    # (11,10)↔(10,10) and (10,12) would both match the first truth; only one counts; (50,56.5) is 6.5 away
    assert m["true_positives"] == 1
    assert m["precision"] == pytest.approx(1 / 4) and m["recall"] == pytest.approx(1 / 3)


def test_subpixel_offset_of_a_sampled_parabola():
    yy, xx = np.mgrid[0:21, 0:21].astype(float)
    score = -((yy - 10.3) ** 2) - (xx - 9.8) ** 2  # a paraboloid: the 3-point fit is exact
    dy, dx = subpixel_offsets(score, np.array([[10, 10]]))
    assert dy[0] == pytest.approx(0.3) and dx[0] == pytest.approx(-0.2)


def test_find_peaks_respects_min_distance_and_order():
    s = 1e-3 * np.random.default_rng(0).random((64, 64))  # weak background peaks, all below 0.001
    s[20, 20], s[20, 26], s[50, 40] = 5.0, 4.0, 3.0
    rc, v = find_peaks(s, 10.0, 2)
    rc, v = rc[v > 0.5], v[v > 0.5]
    assert [tuple(p) for p in rc] == [(20, 20), (50, 40)]  # (20, 26) lies 6 px from a stronger peak
    assert list(v) == [5.0, 3.0]


def test_auto_threshold_separates_a_clear_excess():
    rng = np.random.default_rng(0)
    noise_pos, noise_neg = rng.normal(0, 1, 500), rng.normal(0, 1, 500)
    signal = rng.normal(8, 0.5, 40)
    t, est = auto_threshold(np.r_[noise_pos, signal], noise_neg)
    tp, fp = np.sum(signal >= t), np.sum(noise_pos >= t)
    assert 2 * tp / (tp + fp + 40) >= 0.95  # F1 against the labels: counting noise allows a few errors
    assert est >= 36  # the count estimate (max over t of a noisy excess) errs upward, never far down


def test_variance_outliers_flag_a_noisier_region():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(256, 256))
    w[:, 192:] *= 3.0  # a carbon-like strip with 9× the variance
    rc = np.array([[128, 60], [128, 100], [128, 230], [40, 220]])
    bad = variance_outliers(w, rc, 16.0)
    assert list(bad) == [False, False, True, True]


@pytest.mark.parametrize("sign", [1, -1])
def test_reference_free_picker_finds_the_particles(sim, sign):
    f1 = []
    for i in range(2):
        p = pick_micrograph(sign * sim.micrographs[i], PX, DIAMETER_A, ctf=sim.ctf.take(i))
        assert p.polarity == sign  # the contrast is decided from the data
        f1.append(match_picks(np.c_[p.x, p.y], truth_xy(sim, i), RADIUS)["f1"])
    assert np.mean(f1) >= 0.8


def test_template_picker_finds_the_particles(sim, volume):
    tm = map_templates(volume, PX, PX, DIAMETER_A, n_directions=12, n_inplane=8)
    for i in range(2):
        p = pick_micrograph(-sim.micrographs[i], PX, DIAMETER_A, ctf=sim.ctf.take(i), templates=tm)
        m = match_picks(np.c_[p.x, p.y], truth_xy(sim, i), RADIUS)
        assert m["f1"] >= 0.9, m
        assert p.template is not None and p.template.max() < len(tm)


def test_pure_noise_gives_few_picks():
    rng = np.random.default_rng(5)
    counts = [len(pick_micrograph(rng.normal(size=(768, 768)).astype(np.float32), PX, DIAMETER_A))
              for _ in range(2)]
    # ≈ 230 noise peaks per micrograph: the threshold keeps only a few of them
    assert max(counts) <= 6, counts


def test_carbon_edge_picks_are_rejected(sim):
    """A carbon-film step (20 noise σ, CTF-filtered) draws a line of strong peaks; the local-variance
    test removes the picks along it and keeps those away from it."""
    from cryoprism.ctf.model import ctf_2d
    from cryoprism.fourier.core import fft2c, ifft2c

    m = -sim.micrographs[0].astype(np.float64)
    xx = np.arange(m.shape[1])[None, :] * np.ones((m.shape[0], 1))
    step = 20 * sim.noise_sigma[0] / (1 + np.exp(-(xx - 500) / 2.0))
    m = m + ifft2c(fft2c(step) * ctf_2d(m.shape[0], PX, sim.ctf.take(0), np.float64)).real
    truth = truth_xy(sim, 0)
    kept = pick_micrograph(m.astype(np.float32), PX, DIAMETER_A, ctf=sim.ctf.take(0))
    everything = pick_micrograph(m.astype(np.float32), PX, DIAMETER_A, ctf=sim.ctf.take(0), variance_z=np.inf)
    assert np.sum(np.abs(everything.x - 500) < 25) >= 5  # without the test: a line of picks
    assert np.sum(np.abs(kept.x - 500) < 25) <= np.sum(np.abs(truth[:, 0] - 500) < 25)
    far = np.abs(truth[:, 0] - 500) > 100
    m_far = match_picks(np.c_[kept.x, kept.y][np.abs(kept.x - 500) > 100], truth[far], RADIUS)
    assert m_far["recall"] >= 0.8  # the edge also raises the threshold a little


def test_polarity_of_bright_particles_at_high_snr(volume):
    """Without a CTF the particles are bright; at SNR 1 the reference-free filter's negative rims give
    more (weaker) peaks than the centres: the contrast must follow the strongest peaks, and the picks
    the centres (a counting rule chose the rims, about a radius off)."""
    from cryoprism.forward.micrographs import simulate_micrographs

    sim = simulate_micrographs(volume, 1, 768, 15, PX, snr=1.0, ctf=False, rng=5, progress=False, n_workers=1)
    truth = truth_xy(sim, 0)
    p = pick_micrograph(sim.micrographs[0], PX, DIAMETER_A, variance_z=np.inf)
    assert p.polarity == 1
    m = match_picks(np.c_[p.x, p.y], truth, RADIUS)
    assert m["recall"] >= 0.9 and m["precision"] >= 0.9, m


@pytest.mark.parametrize("snr", [1.0, 0.05])
def test_outlier_regions_keep_the_particles_at_snr_1_and_0_05(volume, snr):
    """Particles raise the local variance where they sit (at SNR 1 about 2.4× in a window of one
    diameter: a test at that scale rejected every particle of a sparse micrograph); the region tests
    must keep them, sparse (12 particles) or dense (30, centres 1.6 diameters apart): < 2 % of the true
    centres flagged, < 2 % of the true picks lost."""
    from cryoprism.forward.micrographs import simulate_micrographs

    flagged = n_true = tp_all = tp_kept = 0
    for n, sep in ((12, "well-separated"), (30, 80.0)):
        sim = simulate_micrographs(volume, 1, 768, n, PX, snr=snr, separation=sep, rng=21, progress=False,
                                   n_workers=1)
        m, truth = -sim.micrographs[0], truth_xy(sim, 0)
        edge, var = region_outliers(m, truth[:, 0], truth[:, 1], DIAMETER_A / PX)
        flagged, n_true = flagged + int(np.sum(edge | var)), n_true + len(truth)
        kept = pick_micrograph(m, PX, DIAMETER_A, ctf=sim.ctf.take(0))
        every = pick_micrograph(m, PX, DIAMETER_A, ctf=sim.ctf.take(0), variance_z=np.inf)
        tp_kept += match_picks(np.c_[kept.x, kept.y], truth, RADIUS)["true_positives"]
        tp_all += match_picks(np.c_[every.x, every.y], truth, RADIUS)["true_positives"]
    assert n_true == 42 and tp_all >= 0.9 * n_true
    assert flagged < 0.02 * n_true
    assert tp_all - tp_kept < 0.02 * tp_all


def test_aggregate_picks_are_rejected(sim):
    """A clump of 200 particles in a disk of two diameters' radius (a dense, dark blob, CTF-filtered)
    draws picks all over itself; the region tests remove those and keep the particles away from it."""
    centre, radius = np.array([300.0, 400.0]), 2 * DIAMETER_A / PX
    m = -(sim.micrographs[1] + aggregate(sim, 1, centre, radius, 200)).astype(np.float32)
    kept = pick_micrograph(m, PX, DIAMETER_A, ctf=sim.ctf.take(1))
    every = pick_micrograph(m, PX, DIAMETER_A, ctf=sim.ctf.take(1), variance_z=np.inf)

    def inside(x, y):
        return np.hypot(x - centre[0], y - centre[1]) < radius

    assert np.sum(inside(every.x, every.y)) >= 5  # without the tests: the blob is full of picks
    assert np.sum(inside(kept.x, kept.y)) == 0
    truth = truth_xy(sim, 1)
    far = ~inside(*truth.T) & (np.hypot(*(truth - centre).T) > radius + DIAMETER_A / PX)
    m_far = match_picks(np.c_[kept.x, kept.y], truth[far], RADIUS)
    assert m_far["recall"] >= 0.8
