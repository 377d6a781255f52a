"""Patch-model EM: FFT correlations vs brute force, M-step assembly, filters, a tiny EM run."""

import numpy as np
import pytest

from cryoprism.ctf.model import CTFParams, ctf_on_grid
from cryoprism.fourier.core import fft2c, freq_grid, ifft2c
from cryoprism.micrograph.em import (
    MicrographPatches,
    Stage,
    e_step,
    log_likelihood_maps,
    normal_equations,
    patch_transforms,
    run_em,
    shift_grid,
)
from cryoprism.micrograph.patches import (
    ModelFilter,
    cut_patches,
    estimate_noise_variance,
    filter_images,
)
from cryoprism.micrograph.sbasis import evaluate_volume, fit_volume, make_basis
from cryoprism.micrograph.simulate import place_boxes, simulate_micrograph


def _model_patch(img, t, L):
    """The patch seen when the box's top-left corner is at offset t=(ty, tx) from the patch corner."""
    Lb = img.shape[0]
    big = np.zeros((L + 2 * Lb, L + 2 * Lb))
    big[Lb + t[0]:Lb + t[0] + Lb, Lb + t[1]:Lb + t[1] + Lb] = img
    return big[Lb:Lb + L, Lb:Lb + L]


def _brute(patches, images, L, sigma2):
    """ll[p, ω, ty, tx] over t ∈ [−(Lb−1), L−1]² by an explicit loop."""
    Lb = images.shape[-1]
    ts = np.arange(-(Lb - 1), L)
    out = np.zeros((len(patches), len(images), ts.size, ts.size))
    for w, im in enumerate(images):
        for a, ty in enumerate(ts):
            for b, tx in enumerate(ts):
                M = _model_patch(im, (ty, tx), L)
                out[:, w, a, b] = (2 * np.einsum("pij,ij->p", patches, M) - (M * M).sum()) / (2 * sigma2)
    return ts, out


@pytest.mark.parametrize("margin", [0, 2])
def test_fft_loglik_equals_brute_force(margin):
    rng = np.random.default_rng(0)
    L = 5
    grid = shift_grid(L, margin)
    X = rng.standard_normal((3, L, L))
    I = rng.standard_normal((2, grid.Lb, grid.Lb))
    ll = log_likelihood_maps(patch_transforms(X, grid.Nf), I, grid, 0.7)
    ts, ref = _brute(X, I, L, 0.7)
    assert grid.valid().all() and ll.shape[-1] == ts.size
    got = ll[:, :, ts % grid.Nf][:, :, :, ts % grid.Nf]
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_estep_and_normal_equations_equal_brute_force():
    rng = np.random.default_rng(1)
    L, margin, sigma2, rho = 5, 1, 2.0, 0.3
    grid = shift_grid(L, margin)
    n = 4
    op = rng.standard_normal((3, grid.Lb**2, n)).astype(np.float32)
    x = rng.standard_normal(n)
    I = (op @ x.astype(np.float32)).reshape(3, grid.Lb, grid.Lb)
    X = rng.standard_normal((6, L, L)).astype(np.float32)
    st = e_step(patch_transforms(X, grid.Nf), (X.astype(float) ** 2).sum((1, 2)), I, grid, sigma2, rho)
    H, r = normal_equations(st, op, grid)
    # brute force posterior over (ω, t) and the empty state, then Σ γ AᵀCᵀC A and Σ γ AᵀCᵀX
    ts, ll = _brute(X.astype(float), I.astype(float), L, sigma2)
    nt = ts.size**2
    lp = ll + np.log((1 - rho) / (nt * 3))
    lz = np.logaddexp(np.log(rho), np.logaddexp.reduce(lp.reshape(6, -1), axis=1))
    gam = np.exp(lp - lz[:, None, None, None])
    Href, rref = np.zeros((n, n)), np.zeros(n)
    for w in range(3):
        A = op[w].astype(float)
        for a, ty in enumerate(ts):
            for b, tx in enumerate(ts):
                C = np.stack([_model_patch(A[:, k].reshape(grid.Lb, grid.Lb), (ty, tx), L).ravel()
                              for k in range(n)], 1)  # (L², n) = C_t A_ω
                g = gam[:, w, a, b]
                Href += g.sum() * C.T @ C
                rref += C.T @ (X.reshape(6, -1).T @ g)
    np.testing.assert_allclose(H, Href, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r, rref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st.gamma_empty, np.exp(np.log(rho) - lz).sum(), rtol=1e-5)
    ref_ll = np.sum(lz - (X.astype(float) ** 2).sum((1, 2)) / (2 * sigma2)
                    - 0.5 * L * L * np.log(2 * np.pi * sigma2))
    assert abs(st.loglik - ref_ll) < 1e-3 * abs(ref_ll)


def test_filter_images_matches_full_canvas_filtering():
    rng = np.random.default_rng(2)
    L, px, margin = 9, 4.0, 5
    ctf = CTFParams(defocus_u_A=15000.0, defocus_v_A=13000.0, defocus_angle_deg=30.0)
    img = rng.standard_normal((L, L))
    out = filter_images(img, ModelFilter(ctf=ctf, pixel_size_A=px), margin)
    N = 256  # big canvas, particle centred at N//2
    can = np.zeros((N, N))
    can[N // 2 - L // 2:N // 2 - L // 2 + L, N // 2 - L // 2:N // 2 - L // 2 + L] = img
    s, ang = freq_grid((N, N), px, polar=True)
    ref = ifft2c(fft2c(can) * ctf_on_grid(s, ang, ctf)).real
    Lb = L + 2 * margin
    ref = ref[N // 2 - Lb // 2:N // 2 - Lb // 2 + Lb, N // 2 - Lb // 2:N // 2 - Lb // 2 + Lb]
    np.testing.assert_allclose(out, ref, atol=1e-2 * np.abs(ref).max())


def test_cut_patches_and_noise_variance():
    rng = np.random.default_rng(3)
    m = 1.7 * rng.standard_normal((230, 250))
    P, corners = cut_patches(m, 11)
    assert P.shape == (20 * 22, 11, 11)
    k = 7 * 22 + 3
    np.testing.assert_array_equal(P[k], m[77:88, 33:44].astype(np.float32))
    assert abs(estimate_noise_variance(P) / 1.7**2 - 1) < 0.05


@pytest.mark.parametrize("separated", [True, False])
def test_place_boxes_spacing(separated):
    L = 7
    c = place_boxes((200, 200), L, 150, separated, rng=0)
    d = np.abs(c[:, None, :] - c[None, :, :]).max(-1)
    np.fill_diagonal(d, 10**6)
    assert d.min() >= (2 * L - 1 if separated else L)
    assert len(c) > 20


def _fsc_shells(a, b):
    A, B = np.fft.fftn(a), np.fft.fftn(b)
    k = np.fft.fftfreq(a.shape[0]) * a.shape[0]
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int)
    n = a.shape[0] // 2 + 1
    num = np.bincount(r.ravel(), (A * B.conj()).real.ravel())[:n]
    pa = np.bincount(r.ravel(), (abs(A) ** 2).ravel())[:n]
    den = np.sqrt(pa * np.bincount(r.ravel(), (abs(B) ** 2).ravel())[:n])
    return num / den


def test_tiny_em_improves_fsc():
    rng = np.random.default_rng(4)
    L = 9
    b = make_basis(L, 3)
    # a truth that is not trivially spherical: three Gaussian blobs
    from cryoprism.micrograph.sbasis import grid_points
    p = grid_points(L)
    vol = sum(a * np.exp(-np.sum((p - c) ** 2, 1) / (2 * 1.3**2)) for a, c in
              [(1.0, (1.5, 0, 0)), (0.8, (-1, 1.5, 0.5)), (0.6, (0, -1.5, -1.5))]).reshape(L, L, L)
    truth_c = fit_volume(b, vol)
    truth = evaluate_volume(b, truth_c)
    sim = simulate_micrograph(b, truth_c, (270, 270), 120, snr=2.0, rng=rng)
    P, _ = cut_patches(sim.micrograph, L)
    from scipy.ndimage import gaussian_filter

    init_c = fit_volume(b, gaussian_filter(vol, 1.5))  # a blurred start
    init = evaluate_volume(b, init_c)
    res = run_em([MicrographPatches(P)], L, [Stage(3, 0.5, 80, 4, 1.0)], init_coef=init_c, init_basis=b,
                 sigma2=sim.noise_sigma**2, seed=0)
    f0 = _fsc_shells(init, truth)[1:]
    f1 = _fsc_shells(res.volume, truth)[1:]
    assert f1.mean() > f0.mean() + 0.1
    assert f1[:2].min() > 0.9
    lls = [h["loglik_per_patch"] for h in res.history]
    assert lls[-1] > lls[0]
    assert 0.2 < res.rho_empty < 0.95


def test_full_batch_em_never_decreases_the_likelihood():
    """Exact EM (one block, fixed rotation grid) is an ascent method on the discrete-rotation patch
    likelihood: the log-likelihood of the estimate entering each iteration must not decrease, also
    from a poor start (a wrong volume). This is the property the demo diagnosis rests on."""
    rng = np.random.default_rng(11)
    L = 9
    b = make_basis(L, 3)
    from cryoprism.micrograph.sbasis import grid_points
    p = grid_points(L)
    vol = sum(a * np.exp(-np.sum((p - c) ** 2, 1) / (2 * 1.3**2)) for a, c in
              [(1.0, (1.5, 0, 0)), (0.8, (-1, 1.5, 0.5))]).reshape(L, L, L)
    wrong = sum(a * np.exp(-np.sum((p - c) ** 2, 1) / (2 * 1.3**2)) for a, c in
                [(1.0, (0, 1.5, 0)), (0.8, (1, -1, -1.5))]).reshape(L, L, L)
    sim = simulate_micrograph(b, fit_volume(b, vol), (180, 180), 50, snr=1.0, rng=rng)
    P, _ = cut_patches(sim.micrograph, L)
    res = run_em([MicrographPatches(P)], L, [Stage(3, 0.5, 60, 5, 1.0)], init_coef=fit_volume(b, wrong),
                 init_basis=b, sigma2=sim.noise_sigma**2, seed=0, calibrate=False)
    lls = np.array([h["loglik_per_patch"] for h in res.history])
    assert np.all(np.diff(lls) > -1e-4 * np.abs(lls[:-1])), lls
    assert lls[-1] > lls[0]
