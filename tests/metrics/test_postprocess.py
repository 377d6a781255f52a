"""Post-processing: phase randomisation, mask-corrected FSC (Chen et al. 2013), B-factor, local resolution,
the automatic mask and the ``cryoprism postprocess`` command, against truths computed here."""

import json

import mrcfile
import numpy as np
import pytest

from cryoprism.cli.main import main
from cryoprism.forward.volumes import gaussian_blob_volume
from cryoprism.fourier import fftnc, radial_index
from cryoprism.image import auto_mask, spherical_mask
from cryoprism.metrics import apply_bfactor, fsc
from cryoprism.metrics.postprocess import (
    correct_fsc,
    fsc_weight,
    local_resolution,
    mask_corrected_fsc,
    postprocess,
    randomize_phases,
    randomize_shell,
)

L = 48
PX = 2.0


def _blobs(radius_px, n=60, sigma_px=1.2, seed=3):
    """Gaussian blobs with centres inside a ball of ``radius_px`` about the box centre."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, (8 * n, 3))
    c = c[np.linalg.norm(c, axis=1) < 1][:n] * radius_px
    return gaussian_blob_volume(L, centers_px=c, sigmas_px=[sigma_px] * len(c)).astype(np.float64)


def _shell_mean(values):
    k = radial_index(values.shape).ravel()
    n_sh = values.shape[0] // 2 + 1
    keep = k < n_sh
    return np.bincount(k[keep], values.ravel()[keep], n_sh) / np.bincount(k[keep], minlength=n_sh)


def _sigma_fsc(n_voxels, f):
    """Standard error of an FSC estimate over n/2 independent Friedel pairs: (1 − F²)/√(n/2)."""
    return (1 - np.clip(f, -1, 1) ** 2) / np.sqrt(np.maximum(n_voxels, 2) / 2)


def test_randomize_phases_keeps_amplitudes_and_low_shells():
    v = _blobs(12)
    k0 = 8
    r = randomize_phases(v, k0, rng=1)
    assert r.dtype == v.dtype and r.shape == v.shape
    F, G = fftnc(v, 3), fftnc(r, 3)
    assert np.allclose(np.abs(F), np.abs(G), atol=1e-9 * np.abs(F).max())
    low = radial_index(v.shape) < k0
    assert np.allclose(F[low], G[low], atol=1e-9 * np.abs(F).max())
    c = fsc(v, r).curve
    assert np.all(c[:k0] > 0.999)
    sig = 1 / np.sqrt(fsc(v, r).n_voxels / 2)
    assert np.all(np.abs(c[k0:]) < 5 * sig[k0:])  # phases independent beyond the cut


def test_randomize_shell_and_correction_formula():
    assert randomize_shell([1, 0.95, 0.9, 0.7, 0.5], 0.8) == 3
    assert randomize_shell([1, 0.95, 0.9], 0.8) == 3  # never below: nothing randomised
    m = np.array([1.0, 0.9, 0.8, 0.6])
    r = np.array([1.0, 0.9, 0.5, 0.2])
    out = correct_fsc(m, r, 2)
    assert np.allclose(out, [1.0, 0.9, (0.8 - 0.5) / 0.5, (0.6 - 0.2) / 0.8])
    assert np.allclose(fsc_weight([1.0, 1 / 3, 0.0, -0.2]), [1.0, np.sqrt(0.5), 0.0, 0.0])


@pytest.fixture(scope="module")
def noisy_pair():
    """Signal inside the plateau of a soft spherical mask, white noise over the whole box."""
    rng = np.random.default_rng(7)
    s = _blobs(11)
    mask = spherical_mask(L, 16, 4).astype(np.float64)
    sig = 0.6 * s[mask > 0.5].std()
    h1 = s + sig * rng.standard_normal(s.shape)
    h2 = s + sig * rng.standard_normal(s.shape)
    return s, h1, h2, mask, sig


def test_mask_corrected_fsc_matches_unmasked_fsc_and_truth(noisy_pair):
    s, h1, h2, mask, sig = noisy_pair
    r = mask_corrected_fsc(h1, h2, mask, PX)
    n = r.unmasked.n_voxels
    # truth: signal power per shell against the white-noise power, all of it (unmasked) or the fraction
    # the mask keeps (Σm² of L³ voxels; the signal lies where m = 1)
    Ps = _shell_mean(np.abs(fftnc(s, 3)) ** 2)
    e_un = Ps / (Ps + sig ** 2 * s.size)
    e_m = Ps / (Ps + sig ** 2 * (mask ** 2).sum())
    sh = slice(1, None)
    assert np.all(np.abs(r.unmasked.curve - e_un)[sh] < 4 * _sigma_fsc(n, e_un)[sh] + 0.01)
    assert np.all(np.abs(r.corrected.curve - e_m)[sh] < 4 * _sigma_fsc(n, e_m)[sh] + 0.02)
    # the corrected curve brought back to the unmasked noise level (SNR × Σm²/L³) is the unmasked FSC
    f = (mask ** 2).mean()
    fc = np.clip(r.corrected.curve, 0, 0.999)
    pred_un = f * fc / (1 - fc) / (1 + f * fc / (1 - fc))
    valid = (np.arange(len(n)) >= 1) & (e_m < 0.97)  # where the corrected curve still carries information
    assert valid.sum() > 10
    dev = np.abs(pred_un - r.unmasked.curve)[valid]
    assert np.all(dev < 4 * _sigma_fsc(n, e_un)[valid] / (1 - e_m[valid]) * f + 4 * _sigma_fsc(n, e_un)[valid])
    assert r.resolution_A() == pytest.approx(1 / (np.interp(-0.143, -e_m[1:], np.arange(1, len(n))) / (L * PX)),
                                             rel=0.1)


def test_phase_randomised_curve_falls_to_zero_beyond_the_cut(noisy_pair):
    s, h1, h2, mask, _ = noisy_pair
    r = mask_corrected_fsc(h1, h2, mask, PX)
    k0 = r.randomize_shell
    assert 2 <= k0 < 20
    assert np.all(r.randomized.curve[1:k0 - 1] > 0.8)  # unchanged below the cut (masked, as the data)
    beyond = np.arange(len(r.randomized.curve)) >= k0 + 3
    sig = 1 / np.sqrt(r.randomized.n_voxels / 2)
    assert np.all(np.abs(r.randomized.curve[beyond]) < 4 * sig[beyond])
    assert abs(r.randomized.curve[beyond].mean()) < 2 * sig[beyond].mean()


def test_local_resolution_worse_on_the_blurred_side():
    rng = np.random.default_rng(2)
    s = _blobs(13, n=120, sigma_px=0.8)
    blurred = apply_bfactor(s, PX, 1000.0)
    x = np.arange(L) - L // 2
    w = 1 / (1 + np.exp(-x / 2.0))[None, None, :]  # 1 on the sharp side (x > 0), 0 on the blurred side
    truth = w * s + (1 - w) * blurred
    sig = truth.std()
    h1 = truth + sig * rng.standard_normal(s.shape)
    h2 = truth + sig * rng.standard_normal(s.shape)
    mask = spherical_mask(L, 17, 3)
    lr = local_resolution(h1, h2, PX, mask)
    assert lr.map_A.shape == s.shape
    assert np.all(np.isfinite(lr.map_A)) and lr.map_A.min() >= 2 * PX - 1e-6
    inside = mask > 0.5
    sharp_side = inside & (x[None, None, :] > 4)
    blurred_side = inside & (x[None, None, :] < -4)
    assert np.median(lr.map_A[blurred_side]) > 1.3 * np.median(lr.map_A[sharp_side])


def test_auto_mask_covers_the_density_with_a_soft_edge():
    rng = np.random.default_rng(0)
    s = _blobs(10)
    noisy = s + 0.05 * s.max() * rng.standard_normal(s.shape)
    m = auto_mask(noisy, PX, lowpass_A=8.0, extend_px=2, edge_px=4)
    assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
    assert np.all(m[s > 0.1 * s.max()] == 1.0)  # all strong density inside the plateau
    from scipy import ndimage

    d = ndimage.distance_transform_edt(s < 0.02 * s.max())
    assert np.all(m[d > 2 + 4 + 4] == 0)  # nothing far from the density (extend + edge + low-pass blur)
    soft = (m > 0.01) & (m < 0.99)
    assert soft.sum() > 0.2 * (m >= 0.99).sum()  # a real soft edge, not a binary mask
    with pytest.raises(ValueError):
        auto_mask(np.zeros((L, L, L)), PX, threshold=1.0)


def test_bfactor_fit_recovers_an_applied_blur(noisy_pair):
    s, _, _, mask, _ = noisy_pair
    rng = np.random.default_rng(5)
    out = {}
    for B in (0.0, 60.0):
        v = apply_bfactor(s, PX, B)
        sig = 0.02 * v.std()
        h1 = v + sig * rng.standard_normal(v.shape)
        h2 = v + sig * rng.standard_normal(v.shape)
        out[B] = postprocess(h1, h2, PX, mask, d_low_A=12.0)
    assert out[0.0].guinier is not None and out[60.0].guinier is not None
    # the fitted (sharpening) B-factor moves by the blur applied; tolerance: the fit's band is the same
    # within a shell and the FSC weights are ≈ 1 at this SNR
    assert out[60.0].bfactor_A2 - out[0.0].bfactor_A2 == pytest.approx(-60.0, abs=8.0)
    given = postprocess(h1, h2, PX, mask, bfactor_A2=-50.0)
    assert given.bfactor_A2 == -50.0 and given.guinier is None
    assert given.sharpened.shape == s.shape and np.all(given.sharpened[mask == 0] == 0)


def _write(path, data, voxel):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        m.voxel_size = voxel
    return str(path)


def test_cli_postprocess_outputs_and_bad_input(tmp_path, capsys, noisy_pair):
    s, h1, h2, mask, _ = noisy_pair
    a = _write(tmp_path / "h1.mrc", h1, PX)
    b = _write(tmp_path / "h2.mrc", h2, PX)
    out = tmp_path / "pp"
    assert main(["postprocess", a, b, "-o", str(out), "--locres", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for name in ("postprocess.mrc", "mask.mrc", "fsc.csv", "fsc.png", "locres.mrc", "summary.json"):
        assert (out / name).is_file(), name
    assert d["resolution_A"] > 2 * PX and d["bfactor_A2"] is not None and d["locres_median_A"] > 0
    import pandas as pd

    t = pd.read_csv(out / "fsc.csv")
    assert list(t.columns[3:7]) == ["fsc_unmasked", "fsc_masked", "fsc_phase_randomized_masked", "fsc_corrected"]
    assert len(t) == L // 2 + 1
    # bad input: another box, another pixel size, a mask outside [0, 1] → one line, exit 2, nothing written
    small = _write(tmp_path / "small.mrc", h1[:40, :40, :40], PX)
    other_px = _write(tmp_path / "px.mrc", h2, 1.5)
    bad_mask = _write(tmp_path / "m.mrc", 3 * mask, PX)
    for args in ([a, small], [a, other_px], [a, b, "--mask", bad_mask], [a, b, "--bfactor", "sharp"]):
        target = tmp_path / "bad"
        assert main(["postprocess", *args, "-o", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cryoprism: error:") and "\n" not in err
        assert not target.exists()


def test_cli_map_without_density_is_refused_without_output(tmp_path, capsys):
    flat = np.random.default_rng(0).standard_normal((L, L, L))
    a = _write(tmp_path / "a.mrc", flat, PX)
    target = tmp_path / "out"
    assert main(["postprocess", a, a, "-o", str(target), "--mask", _write(tmp_path / "z.mrc", 0 * flat, PX)]) == 2
    assert "mask" in capsys.readouterr().err and not target.exists()


@pytest.mark.slow
def test_haemoglobin_resolution_and_bfactor_against_the_truth():
    """EMD-3488 blurred by B = 80 Å² plus white noise: the corrected resolution lies within one shell of
    the truth's (FSC of the half-map average against the truth at 0.5) and the sharpening B-factor within
    10 Å² of minus the noise-free map's Guinier fit over the same band."""
    from pathlib import Path

    from cryoprism.io import read_mrc
    from cryoprism.metrics import guinier_bfactor, resolution_at

    truth, px = read_mrc(Path(__file__).parents[1] / "data" / "maps" / "emd_3488_hemoglobin.mrc", ndim=3)
    n = truth.shape[0]
    rng = np.random.default_rng(0)
    blurred = apply_bfactor(truth, px, 80.0)
    sig = 3.0 * float(blurred.std())
    h1 = blurred + sig * rng.standard_normal(truth.shape).astype(np.float32)
    h2 = blurred + sig * rng.standard_normal(truth.shape).astype(np.float32)
    r = postprocess(h1, h2, px)
    res_truth = resolution_at(fsc(0.5 * (h1 + h2), truth, px, mask=r.mask), 0.5)
    assert abs(n * px / r.resolution_A - n * px / res_truth) < 1.0
    b_truth = -guinier_bfactor(blurred * r.mask, px, d_low_A=10.0, d_high_A=res_truth).bfactor_A2
    assert r.bfactor_A2 == pytest.approx(b_truth, abs=10.0)
    # the mask correction matters here: the unmasked FSC claims a coarser resolution by > 2 shells
    assert n * px / resolution_at(r.fsc.unmasked) < n * px / res_truth - 2


@pytest.fixture(scope="module")
def reconstruction_like_pair():
    """Blobs inside the mask's plateau; noise over the whole box with a falling spectrum that falls more
    slowly than the signal's (``exp(−0.009 k²)`` in amplitude against the blobs' ``exp(−0.0123 k²)``), so
    the SNR falls slowly and the half-map FSC runs long and shallow near 0.143, as a refinement's."""
    rng = np.random.default_rng(100)
    s = _blobs(11)
    mask = spherical_mask(L, 16, 4).astype(np.float64)
    k = radial_index(s.shape)

    def noise():
        return np.fft.ifftn(np.fft.ifftshift(fftnc(rng.standard_normal(s.shape), 3)
                                             * np.exp(-0.009 * k ** 2))).real

    n1, n2 = noise(), noise()
    scale = 0.5 * s[mask > 0.5].std() / n1.std()
    return s, s + scale * n1, s + scale * n2, mask


def _truth_implied_half_fsc(s, h1, h2, mask):
    """Half-map FSC implied by the masked FSC ``T`` of the half-map average against the truth:
    ``T = √(2F/(1+F))`` (Rosenthal & Henderson 2003) ⇒ ``F = T²/(2 − T²)``."""
    T = fsc(0.5 * (h1 + h2), s, PX, mask=mask).curve
    return T ** 2 / (2 - T ** 2)


def test_expected_randomised_fsc_is_the_mean_of_many_phase_draws(reconstruction_like_pair):
    from cryoprism.metrics.postprocess import expected_randomized_masked_fsc, randomized_masked_fsc

    _, h1, h2, mask = reconstruction_like_pair
    k0 = 6
    e = expected_randomized_masked_fsc(h1, h2, mask, PX, k0)
    draws = 24
    d = randomized_masked_fsc(h1, h2, mask, PX, k0, n_draws=draws, rng=5)
    n = e.n_voxels
    assert np.allclose(e.curve[:k0 - 1], fsc(h1, h2, PX, mask=mask).curve[:k0 - 1], atol=0.02)  # intact below
    sel = np.arange(len(n)) >= k0
    se = 1 / np.sqrt(n[sel] / 2) / np.sqrt(draws)  # standard error of the mean of the draws
    assert np.all(np.abs(e.curve[sel] - d.curve[sel]) < 4 * se + 0.01 * np.abs(e.curve[sel]))
    assert e.curve[k0] > 0.1 and np.all(np.abs(e.curve[k0 + 6:]) < 0.02)  # leakage next to the cut only


def test_corrected_fsc_matches_the_truth_implied_curve_and_ignores_the_phase_seed(reconstruction_like_pair):
    s, h1, h2, mask = reconstruction_like_pair
    imp = _truth_implied_half_fsc(s, h1, h2, mask)
    r0 = mask_corrected_fsc(h1, h2, mask, PX, rng=0)
    r1 = mask_corrected_fsc(h1, h2, mask, PX, rng=1)
    # no random draw: the claimed resolution cannot move with the phase seed (one draw moved it by up to
    # 1.4 shells on this pair, and by 3.6 shells on refined 50S half-maps)
    assert np.array_equal(r0.corrected.curve, r1.corrected.curve)
    k0 = r0.randomize_shell
    n = r0.unmasked.n_voxels
    f = (mask ** 2).mean()  # the mask keeps this share of the independent Fourier samples
    sel = (np.arange(len(n)) >= k0 + 3) & (imp > 0.03)
    assert sel.sum() >= 10
    se = _sigma_fsc(f * n, imp)
    dev = (r0.corrected.curve - imp)[sel]
    assert np.all(np.abs(dev) < 4 * se[sel])
    assert abs(dev.mean()) < 2 * se[sel].mean()  # no bias either way
    # the crossing: a shallow curve (≈ 0.06 per shell here) with per-shell noise ≈ 0.03 puts it ±0.5 shell
    # from the truth's by the half-maps' own noise, whatever the correction
    shell = L * PX / r0.resolution_A()
    truth_shell = float(np.interp(-0.143, -imp[1:], np.arange(1, len(n))))
    assert abs(shell - truth_shell) < 1.5
