"""RID / VDM / MFVDM neighbours and alignment on analytic projections of a Gaussian-blob volume."""

import numpy as np
import pytest

from cryoprism.basis import fb_basis_2d
from cryoprism.classify2d import align_pairs, neighbors, prepare
from cryoprism.io import ParticleStack

L = 32
CENTRES = np.array([[0, 0, 0], [7, 2, -3], [-5, 6, 2], [2, -8, 4], [-3, -2, -7], [9, -4, 5.0]])
SIGMAS = np.array([4.0, 2.5, 3.0, 2.0, 2.5, 1.8])
AMPS = np.array([1.0, 0.9, 0.7, 1.2, 0.8, 1.0])


def _src(imgs):
    """Images without CTF as a ParticleSource (pixel size 1 Å: the 2-D pipeline is scale-free)."""
    return ParticleStack.from_arrays(imgs, pixel_size_A=1.0)


def uniform_rotations(n, rng):
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def project_blobs(rots):
    """Analytic projections: blob centre c appears at (A c)_xy with amplitude a √(2π) σ."""
    y, x = np.mgrid[:L, :L] - L // 2
    out = np.zeros((len(rots), L, L))
    for c, s, a in zip(CENTRES, SIGMAS, AMPS):
        p = rots @ c                                    # (n, 3)
        out += a * np.sqrt(2 * np.pi) * s * np.exp(
            -((x[None] - p[:, 0, None, None]) ** 2 + (y[None] - p[:, 1, None, None]) ** 2) / (2 * s * s))
    return out


def truth(rots, i, j, refl):
    """Viewing angle (antipodal allowed) and in-plane angle of the claimed (possibly mirrored) pair."""
    vi, vj = rots[i, 2], rots[j, 2]
    view = np.rad2deg(np.arccos(np.clip(np.abs(np.sum(vi * vj, -1)), 0, 1)))
    F = np.diag([1.0, -1.0, -1.0])                     # the mirror image J I_j is the projection by F A_j
    Bj = np.where(refl[:, None, None], F @ rots[j], rots[j])
    M = rots[i] @ np.swapaxes(Bj, 1, 2)
    inpl = np.arctan2(M[:, 1, 0] - M[:, 0, 1], M[:, 0, 0] + M[:, 1, 1])
    same_side = np.sum(rots[i, 2] * Bj[:, 2], -1) > 0
    return view, inpl, same_side


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(7)
    n = 400
    rots = uniform_rotations(n, rng)
    clean = project_blobs(rots)
    sigma = np.sqrt(clean.var(axis=(1, 2)).mean() / 3.0)         # SNR 3
    noisy = (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)
    return rots, noisy


@pytest.fixture(scope="module")
def prepared(dataset):
    return prepare(_src(dataset[1]), mask_radius_px=14)


def test_align_pairs_recovers_rotation_and_reflection():
    b = fb_basis_2d(L)
    rng = np.random.default_rng(3)
    rots = uniform_rotations(6, rng)
    imgs = project_blobs(rots)
    alphas = np.array([0.4, -2.0, 1.1, 3.0, -0.7, 2.2])
    # image j rotated (after reflection for odd j) by alpha, done analytically through the rotation
    F = np.diag([1.0, -1.0, -1.0])
    Rz = np.array([[[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]] for a in alphas])
    refl = np.arange(6) % 2 == 1
    rots_i = np.where(refl[:, None, None], Rz @ F @ rots, Rz @ rots)
    a_i = b.expand(project_blobs(rots_i))
    a_j = b.expand(imgs)
    allc = np.concatenate([a_i, a_j])
    feats = [allc[:, sl] for sl in b.k_slices]
    ang, got_refl, score = align_pairs(feats, np.arange(6), np.arange(6, 12), n_angles=512)
    err = np.angle(np.exp(1j * (ang - alphas)))
    assert np.all(got_refl == refl)
    assert np.abs(err).max() < np.deg2rad(0.3)
    assert np.all(score > 0.999)


def _check(nb, rots, max_median_view, max_inplane_deg):
    i, j, ang, refl, _ = nb.pairs()
    view, inpl, same_side = truth(rots, i, j, refl)
    assert np.median(view) < max_median_view
    close = view < 10
    assert close.mean() > 0.25          # 8 nearest of 400 uniform views: median ≈ 8°
    assert same_side[close].mean() > 0.95                # reflection flags right
    err = np.rad2deg(np.abs(np.angle(np.exp(1j * (ang - inpl)))))[close & same_side]
    assert np.median(err) < max_inplane_deg
    return view


def test_rid_neighbours_and_angles(prepared, dataset):
    rots = dataset[0]
    nb = neighbors(prepared, "rir", 8)
    _check(nb, rots, 16.0, 3.0)


def test_rid_features_weights(prepared):
    """Component l of frequency k is ``u_l^H (a_k − μ_k)`` times ``(ℓ_l / (ℓ_l + 1))^p``, computed directly."""
    from cryoprism.classify2d import rid_features

    sp_ = prepared.spca
    a = prepared.coefs[:5].astype(np.complex128)
    for p in (0.5, 1.0):
        got = rid_features(sp_, prepared.coefs[:5], weight_power=p)
        for k, sl in enumerate(prepared.basis.k_slices):
            U, ell = sp_.vectors[k], sp_.eigenvalues[k]
            x = a[:, sl] - (sp_.mean0[None, :] if k == 0 else 0)
            want = np.stack([x @ np.conj(U[:, l]) * (ell[l] / (ell[l] + 1.0)) ** p for l in range(U.shape[1])], 1) \
                if U.shape[1] else np.zeros((5, 0))
            assert got[k].shape == want.shape
            np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-6 * max(np.abs(want).max(initial=0), 1))
    # power 1 is the Wiener-weighted sPCA projection
    w1 = rid_features(sp_, prepared.coefs[:5], weight_power=1.0)
    for k, f in enumerate(sp_.features(prepared.coefs[:5], weighted=True)):
        np.testing.assert_allclose(w1[k], f, rtol=1e-5, atol=1e-7)


def test_mfvdm_neighbours_and_angles(prepared, dataset):
    rots = dataset[0]
    nb0 = neighbors(prepared, "rir", 8)
    nb = neighbors(prepared, "mfvdm", 8, k_max=6, m=20, initial=nb0)
    _check(nb, rots, 16.0, 3.0)
    vdm = neighbors(prepared, "vdm", 8, m=20, initial=nb0)
    _check(vdm, rots, 16.0, 3.0)


def test_scale_invariance(dataset):
    noisy = dataset[1][:200]
    ref = None
    for fac in (1.0, 1e-4, 1e4):
        p = prepare(_src(noisy * np.float32(fac)), mask_radius_px=14)
        nb = neighbors(p, "mfvdm", 6, k_max=4, m=10)
        assert np.isfinite(nb.score).all()
        if ref is None:
            ref = nb
            continue
        assert np.mean(np.sort(nb.j, 1) == np.sort(ref.j, 1)) > 0.99
        # angles of the same pairs (rows ordered by j: two near-equal scores may swap places)
        o, o_ref = np.argsort(nb.j, 1), np.argsort(ref.j, 1)
        same = np.all(np.take_along_axis(nb.j, o, 1) == np.take_along_axis(ref.j, o_ref, 1), axis=1)
        assert same.mean() > 0.95
        d = np.take_along_axis(nb.angle, o, 1) - np.take_along_axis(ref.angle, o_ref, 1)
        assert np.abs(np.angle(np.exp(1j * d[same]))).max() < 1e-3


def project_blobs_shifted(rots, t):
    """``project_blobs`` with every projection translated by ``t`` (n, 2) px (x, y), analytically."""
    y, x = np.mgrid[:L, :L] - L // 2
    out = np.zeros((len(rots), L, L))
    for c, s, a in zip(CENTRES, SIGMAS, AMPS):
        p = rots @ c
        px, py = p[:, 0] + t[:, 0], p[:, 1] + t[:, 1]
        out += a * np.sqrt(2 * np.pi) * s * np.exp(
            -((x[None] - px[:, None, None]) ** 2 + (y[None] - py[:, None, None]) ** 2) / (2 * s * s))
    return out


@pytest.mark.parametrize("rounds", [0, pytest.param(4, marks=pytest.mark.slow)])
def test_centring_recovers_known_translations(rounds):
    """Centring shifts of translated images minus those of the untranslated ones = the translations.

    ``rounds`` = 0: rotational-average centring only; 4: refined against neighbour averages (default).
    """
    rng = np.random.default_rng(11)
    n = 300
    rots = uniform_rotations(n, rng)
    t = rng.uniform(-3, 3, (n, 2))
    base = project_blobs(rots)
    noise = rng.normal(0, 0.3 * base.std(), (n, L, L))   # SNR ≈ 11: limited by the method, not the noise
    kw = dict(centre=True, centre_refine_rounds=rounds)
    s0 = prepare(_src((base + noise).astype(np.float32)), **kw).extras["centre_shifts_px"]
    s1 = prepare(_src((project_blobs_shifted(rots, t) + noise).astype(np.float32)), **kw).extras["centre_shifts_px"]
    d = (s1 - s0) - (t - t.mean(axis=0))
    d -= d.mean(axis=0)
    assert np.median(np.hypot(d[:, 0], d[:, 1])) < 0.5


def test_neighbour_references_bring_rotated_and_mirrored_copies_onto_the_image():
    """Neighbours built as I_j = J^r R_{-α} I_i (so I_i = R_α J^r I_j) average back to I_i exactly."""
    from cryoprism.classify2d import Neighbors
    from cryoprism.classify2d.pipeline import neighbour_references

    b = fb_basis_2d(L)
    rng = np.random.default_rng(4)
    imgs = project_blobs(uniform_rotations(2, rng))
    a = b.expand(imgs)                                       # image 0 and an unrelated image 1
    alphas = np.array([0.3, -1.7, 2.6, 1.0])
    refl = np.array([False, True, False, True])
    copies = b.rotate(np.repeat(a[:1], 4, axis=0), -alphas)  # R_{-α} I_0
    copies = np.where(refl[:, None], b.reflect(copies), copies)
    coefs = np.concatenate([a, copies])                      # rows 2..5 are the neighbours of row 0
    j = np.array([[2, 3, 4, 5], [0, 0, 0, 0]] + [[0, 1, 0, 1]] * 4)
    ang = np.zeros(j.shape)
    ang[0] = alphas
    rf = np.zeros(j.shape, dtype=bool)
    rf[0] = refl
    nb = Neighbors(j=j, angle=ang, reflected=rf, score=np.ones(j.shape))
    ref = neighbour_references(b, coefs, nb)
    assert np.allclose(ref[0], a[0], atol=1e-8 * np.abs(a[0]).max())
    assert np.allclose(ref[1], a[0])                         # row 1 lists image 0 four times, unrotated
    # a wrong sign convention (rotating by −α) would not reproduce image 0
    bad = Neighbors(j=j, angle=-ang, reflected=rf, score=nb.score)
    assert not np.allclose(neighbour_references(b, coefs, bad)[0], a[0], atol=1e-3 * np.abs(a[0]).max())


def test_ssnr_bandlimit_rule_on_a_known_profile():
    """3-shell running mean ≥ threshold: a profile 0.5 up to shell 10 and 0 beyond ends at shell 11."""
    from cryoprism.classify2d.pipeline import ssnr_bandlimit

    L = 64
    e = np.zeros(L // 2 + 1)
    e[1:11] = 0.5
    # running mean at shell 11 = (0.5 + 0 + 0)/3 ≥ 0.01, at shell 12 = 0  →  r* = 11, band limit 12/L
    assert ssnr_bandlimit(e, L, threshold=0.01) == pytest.approx(12 / L)
    assert ssnr_bandlimit(e, L, threshold=0.2) == pytest.approx(11 / L)   # 0.5/3 < 0.2 at shell 11
    assert ssnr_bandlimit(e, L, threshold=0.4) == pytest.approx(10 / L)   # (0.5+0.5+0)/3 < 0.4 at shell 10
    assert ssnr_bandlimit(np.full(L // 2 + 1, 0.5), L) == 0.5              # signal to Nyquist: no cut
    assert ssnr_bandlimit(np.zeros(L // 2 + 1), L) == pytest.approx(0.1)   # no signal: the floor


def test_whitened_ssnr_finds_the_band_of_a_low_pass_signal():
    """Particles low-passed at 0.2 cycles/px in white noise: SSNR ≈ 0 beyond the cut, the band limit near it."""
    from cryoprism.classify2d.pipeline import prepare, ssnr_bandlimit, whitened_ssnr
    from cryoprism.image.whiten import noise_power_spectrum

    rng = np.random.default_rng(3)
    Ls, n, cut = 48, 600, 0.2
    y, x = np.mgrid[:Ls, :Ls] - Ls // 2
    disk = (np.hypot(x, y) < 0.3 * Ls).astype(float)
    f = np.fft.fftfreq(Ls)
    lp = (np.hypot(f[:, None], f[None, :]) < cut - 0.03).astype(float)
    sig = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, Ls, Ls)) * disk) * lp).real
    sig = np.fft.ifft2(np.fft.fft2(sig) * lp).real                 # particle inside the disk, band < cut
    imgs = (3.0 * sig + rng.standard_normal((n, Ls, Ls))).astype(np.float32)
    nps = noise_power_spectrum(imgs, 0.4 * Ls)
    e = whitened_ssnr(_src(imgs), nps)
    r_cut = int(round(cut * Ls))
    assert e[2:r_cut - 2].min() > 0.1                               # signal band
    assert np.abs(e[r_cut + 2:]).max() < 0.05                       # noise only beyond the cut
    bl = ssnr_bandlimit(e, Ls)
    assert cut - 3 / Ls <= bl <= cut + 3 / Ls
    prep = prepare(_src(imgs))                                            # "auto" is the default
    assert prep.basis.bandlimit == pytest.approx(bl)
    np.testing.assert_allclose(prep.extras["ssnr"], e)


def test_class_templates_are_the_class_average_rotated_and_mirrored():
    """Template 0 is the class average; the 90° and mirrored templates are exact grid transforms of it."""
    from cryoprism.classify2d import Neighbors
    from cryoprism.classify2d.pipeline import class_templates

    b = fb_basis_2d(L)
    rng = np.random.default_rng(8)
    a = b.expand(project_blobs(uniform_rotations(3, rng)))
    nb = Neighbors(j=np.array([[1, 2], [0, 2], [0, 1]]), angle=np.zeros((3, 2)),
                   reflected=np.zeros((3, 2), bool), score=np.array([[3.0, 3.0], [1.0, 1.0], [1.0, 1.0]]))
    T = class_templates(b, a, nb, n_classes=1, n_rotations=4)     # centre = image 0 (highest score)
    assert T.shape == (8, L, L)
    avg = b.evaluate(a.mean(axis=0, keepdims=True))[0]
    assert np.allclose(T[0], avg, atol=1e-5 * np.abs(avg).max())
    c = L // 2                                                      # centre pixel: transform about it
    Y, X = np.mgrid[:L, :L] - c
    rot = [T[0][(c - sgn * X) % L, (c + sgn * Y) % L] for sgn in (1, -1)]   # f(R⁻¹u), R = ±90°
    assert min(np.abs(T[1] - r).max() for r in rot) < 1e-3 * np.abs(avg).max()
    mirror_y = T[0][(c - Y) % L, X + c]
    assert np.abs(T[4] - mirror_y).max() < 1e-3 * np.abs(avg).max()


@pytest.mark.slow  # a scientific validation of 10–50 s: make test-all
def test_class_search_rescues_images_whose_centring_failed():
    """Images whose start is 5.5 px off (beyond the 4 px local step) are brought back by the class search
    (the default synchronised one better than the plain one).

    On this toy particle (six blobs, so many views look alike) the search also matches some images to
    a wrong view; the real-map numbers are in docs/classify2d.md."""
    from cryoprism.classify2d.pipeline import refine_centre_shifts

    rng = np.random.default_rng(12)
    n = 300
    rots = uniform_rotations(n, rng)
    t = rng.uniform(-2, 2, (n, 2))
    clean = project_blobs_shifted(rots, t)
    imgs = clean + rng.normal(0, 0.3 * clean.std(), clean.shape)
    bad = rng.random(n) < 0.15
    phi = rng.uniform(0, 2 * np.pi, n)
    start = t + bad[:, None] * 5.5 * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    b = fb_basis_2d(L)

    def error(sh):
        e = sh - t
        e -= np.median(e, axis=0)
        return np.hypot(e[:, 0], e[:, 1])

    kw = dict(rounds=2, n_neighbors=20, m=20, rescue_classes=20)
    fixed = error(refine_centre_shifts(lambda a, c: imgs[a:c], n, b, start, rescue=True, **kw))
    plain = error(refine_centre_shifts(lambda a, c: imgs[a:c], n, b, start, rescue=True, synchronise=False, **kw))
    kept = error(refine_centre_shifts(lambda a, c: imgs[a:c], n, b, start, rescue=False, **kw))
    assert np.mean(kept[bad] < 1.5) < 0.1          # local steps alone cannot bring them back
    assert np.mean(plain[bad] < 1.5) > 0.6         # unsynchronised class search: most (72 % on this set)
    assert np.mean(fixed[bad] < 1.5) > 0.9         # synchronised + full-resolution refinement: all here
    assert np.median(fixed[~bad]) < 0.5
    assert np.mean(fixed[~bad] > 1.5) < 0.05       # and moves (almost) none of the good ones away


@pytest.mark.slow  # a scientific validation of 10–50 s: make test-all
def test_centring_resumes_from_its_last_saved_round(tmp_path, monkeypatch):
    """Saved after refinement round 1, then after synchronisation round 1; each resumed run ends with
    the same shifts as the uninterrupted one and does not redo the stages before."""
    import cryoprism.classify2d.pipeline as P
    from cryoprism.io.checkpoint import Checkpoints

    rng = np.random.default_rng(5)
    n = 200
    rots = uniform_rotations(n, rng)
    clean = project_blobs_shifted(rots, rng.uniform(-3, 3, (n, 2)))
    imgs = (clean + rng.normal(0, 0.3 * clean.std(), clean.shape)).astype(np.float32)
    kw = dict(centre=True, centre_options={"rescue": False})

    def no_stage(*a, **k):
        raise AssertionError("a finished stage ran again")

    # refinement rounds (no synchronisation)
    full = prepare(_src(imgs), centre_refine_rounds=2, centre_sync_rounds=0, **kw).extras["centre_shifts_px"]
    first = prepare(_src(imgs), centre_refine_rounds=1, centre_sync_rounds=0,
                    checkpoints=Checkpoints(tmp_path / "a", {"test": "a"}), **kw)
    assert not np.allclose(first.extras["centre_shifts_px"], full, atol=1e-3)   # one round is not two
    with monkeypatch.context() as mp:
        mp.setattr(P, "centre_shifts", no_stage)
        resumed = prepare(_src(imgs), centre_refine_rounds=2, centre_sync_rounds=0,
                          checkpoints=Checkpoints(tmp_path / "a", {"test": "a"}, resume=True), **kw)
    assert np.allclose(resumed.extras["centre_shifts_px"], full, atol=1e-6)

    # synchronisation rounds after one refinement round (the damping's anchor is saved too)
    full = prepare(_src(imgs), centre_refine_rounds=1, centre_sync_rounds=2, **kw).extras["centre_shifts_px"]
    first = prepare(_src(imgs), centre_refine_rounds=1, centre_sync_rounds=1,
                    checkpoints=Checkpoints(tmp_path / "b", {"test": "b"}), **kw)
    assert not np.allclose(first.extras["centre_shifts_px"], full, atol=1e-3)
    with monkeypatch.context() as mp:
        mp.setattr(P, "centre_shifts", no_stage)
        mp.setattr(P, "refine_centre_shifts", no_stage)
        resumed = prepare(_src(imgs), centre_refine_rounds=1, centre_sync_rounds=2,
                          checkpoints=Checkpoints(tmp_path / "b", {"test": "b"}, resume=True), **kw)
    assert np.allclose(resumed.extras["centre_shifts_px"], full, atol=1e-6)


def test_shift_offsets_grid():
    from cryoprism.classify2d.pipeline import shift_offsets

    o = shift_offsets(1.0, 0.5)
    r = np.hypot(o[:, 0], o[:, 1])
    assert len(o) == 12 and r.min() > 0 and r.max() <= 1.0 + 1e-12   # 8 on the axes, 4 diagonals at 0.71
    assert len(shift_offsets(0.0, 0.5)) == 0


def test_translation_tolerant_search_finds_translated_copies():
    """Images and copies of them translated by 1 px (own noise): with the joint rotation-translation
    pair search nearly every image finds its copy first; without it, hardly any does."""
    rng = np.random.default_rng(21)
    n = 150
    rots = uniform_rotations(n, rng)
    phi = rng.uniform(0, 2 * np.pi, n)
    t = np.round(np.stack([np.cos(phi), np.sin(phi)], axis=1))          # on the search grid, |t| ≤ 1.41
    t[np.hypot(t[:, 0], t[:, 1]) > 1.0] = [1.0, 0.0]
    clean = np.concatenate([project_blobs(rots), project_blobs_shifted(rots, t)])
    imgs = (clean + rng.normal(0, 0.2 * clean.std(), clean.shape)).astype(np.float32)
    res = {}
    for key, search in (("plain", (0.0, 0.0)), ("tolerant", (1.0, 0.5))):
        prep = prepare(_src(imgs), mask_radius_px=14, shift_search_px=search)
        nb = neighbors(prep, "rir", 5)
        res[key] = np.mean(nb.j[:n, 0] == np.arange(n) + n)
    assert res["plain"] < 0.2
    assert res["tolerant"] > 0.9
    # the best match records the translation: image i is its copy translated back by −t
    found = nb.j[:n, 0] == np.arange(n) + n
    assert np.mean(np.all(np.abs(nb.shift_px[:n, 0][found] + t[found]) < 1e-9, axis=1)) > 0.9
    assert nb.shift_px.shape == (2 * n, 5, 2)


def test_synchronised_class_templates_agree_with_each_other():
    """Classes = one view rotated in-plane (multiples of 10°) and translated by ±2 px each: after
    synchronisation every pair of templates aligns at (almost) zero shift, as they did not before."""
    from cryoprism.classify2d import Neighbors
    from cryoprism.classify2d.pipeline import synchronised_class_templates
    from cryoprism.image.align import template_peaks

    rng = np.random.default_rng(5)
    C = 6
    R0 = uniform_rotations(1, rng)[0]
    th = np.deg2rad(10.0 * rng.choice(36, C, replace=False))
    Rz = np.stack([[[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]] for a in th])
    o = rng.uniform(-2, 2, (C, 2))
    b = fb_basis_2d(L)
    a = b.expand(project_blobs_shifted(Rz @ R0, o))
    # every image is its own class (its neighbour list is itself): the class averages are the images
    nb = Neighbors(j=np.arange(C)[:, None], angle=np.zeros((C, 1)), reflected=np.zeros((C, 1), bool),
                   score=np.arange(C, 0, -1.0)[:, None])
    T, off, centres = synchronised_class_templates(b, a, nb, C, n_rotations=36, edges_per_class=3,
                                                   max_shift_px=6)
    assert np.array_equal(centres, np.arange(C))
    raw = np.concatenate([b.evaluate(b.rotate(a, q)) for q in 2 * np.pi * np.arange(36) / 36])
    for templates, synced in ((T[:36 * C], True), (raw, False)):          # (rotation, class), unmirrored
        score, sh = template_peaks(templates[:C], templates, max_shift_px=6)
        best = score.reshape(C, 36, C).argmax(axis=1)
        d = sh.reshape(C, 36, C, 2)[np.arange(C)[:, None], best, np.arange(C)[None]]
        err = np.hypot(d[..., 0], d[..., 1])[~np.eye(C, dtype=bool)]
        if synced:
            assert np.median(err) < 0.3 and err.max() < 0.6
        else:
            assert np.median(err) > 1.0                                        # the test can fail


def test_synchronise_shifts_solves_the_relative_shift_equations():
    """Exact edges d_i = M_ij (δ_ij + d_j) with random rotations/reflections, 10 % of them wrong:
    the robust least squares recovers the displacements (mean removed); plain averaging does not."""
    from cryoprism.classify2d import Neighbors
    from cryoprism.classify2d.pipeline import _rot_refl, synchronise_shifts

    rng = np.random.default_rng(3)
    n, s = 300, 12
    d = rng.normal(0, 1.0, (n, 2))
    j = np.stack([rng.choice(np.delete(np.arange(n), i), s, replace=False) for i in range(n)])
    ang = rng.uniform(-np.pi, np.pi, (n, s))
    refl = rng.random((n, s)) < 0.5
    M = _rot_refl(ang, refl)                                           # (n, s, 2, 2)
    delta = np.einsum("isba,isb->isa", M, np.repeat(d[:, None], s, 1)) - d[j]   # M^T d_i − d_j
    wrong = rng.random((n, s)) < 0.1
    delta[wrong] = rng.uniform(-3, 3, (wrong.sum(), 2))
    nb = Neighbors(j=j, angle=ang, reflected=refl, score=-np.arange(s) * np.ones((n, 1)), shift_px=delta)
    est = synchronise_shifts(nb, edges_per_image=s, damp=0.05)
    err = np.hypot(*((est - (d - d.mean(axis=0))).T))
    assert np.median(err) < 0.05 and np.percentile(err, 95) < 0.15
    plain = synchronise_shifts(nb, edges_per_image=s, damp=0.05, reweight=1)    # no reweighting: the wrong edges pull
    assert np.median(np.hypot(*((plain - (d - d.mean(axis=0))).T))) > 2 * np.median(err)
    with pytest.raises(ValueError, match="translation-tolerant"):
        synchronise_shifts(Neighbors(j=j, angle=ang, reflected=refl, score=ang))
    # a second round on the corrected images, anchored on the first correction, is (nearly) a fixed
    # point with the strong default damping; without the anchor the damped solution moves on
    def exact(dd):
        return Neighbors(j=j, angle=ang, reflected=refl, score=nb.score,
                         shift_px=np.einsum("isba,isb->isa", M, np.repeat(dd[:, None], s, 1)) - dd[j])

    d1 = synchronise_shifts(exact(d), edges_per_image=s)
    nb2 = exact(d - d1)                                                # what is left in the images
    anchored = synchronise_shifts(nb2, edges_per_image=s, anchor=d1)
    free = synchronise_shifts(nb2, edges_per_image=s)
    assert np.median(np.hypot(*anchored.T)) < 0.02 < np.median(np.hypot(*free.T))


@pytest.mark.slow  # a scientific validation of 10–50 s: make test-all
def test_shift_synchronisation_makes_the_centring_of_neighbouring_views_consistent():
    """Blob projections displaced by up to 1 px: after the tolerant search + synchronisation the
    displacements left are (nearly) a common 3-D translation projected into each view."""
    from cryoprism.classify2d.pipeline import sync_centre_shifts

    rng = np.random.default_rng(8)
    n = 300
    rots = uniform_rotations(n, rng)
    t = rng.uniform(-1, 1, (n, 2))
    clean = project_blobs_shifted(rots, t)
    imgs = (clean + rng.normal(0, 0.3 * clean.std(), clean.shape)).astype(np.float32)
    b = fb_basis_2d(L, radius_px=L // 2)
    sh = sync_centre_shifts(lambda a, c: imgs[a:c], n, b, np.zeros((n, 2)), rounds=2, n_neighbors=20,
                            edges_per_image=10)

    def left(resid):
        # remove the gauge: a common 3-D translation c projected into each view, (A c)_xy
        A = rots[:, :2, :].reshape(2 * n, 3)
        c = np.linalg.lstsq(A, resid.ravel(), rcond=None)[0]
        return np.hypot(*(resid - (A @ c).reshape(n, 2)).T)

    before, after = left(t - t.mean(axis=0)), left(t - sh)
    assert np.median(before) > 0.5                     # the test can fail
    assert np.median(after) < 0.6 * np.median(before)  # 0.77 → 0.42 px here
    assert np.median(left(t + sh)) > np.median(before)  # the correction's sign matters
