"""Classes refined at full resolution: maximum-likelihood 3-D classification with the poses fixed.

Starting from the labels of the covariance-space mixture, EM over the discrete states with each
particle's own imaging operator at the full box (or a Fourier-cropped ``box``):

* E-step: ``log p(y_s | c) = −‖y_s − M_s X_c‖² / 2σ² + const`` (white noise of variance ``σ²`` per
  pixel, CTF and origin in ``M_s``), responsibilities ``γ_sc ∝ π_c p(y_s | c)``;
* M-step: ``π_c = mean_s γ_sc`` and each class volume ``X_c = μ + Δ_c`` from the weighted normal
  equations ``(Σ_s γ_sc M_sᵀM_s + Λ_c) Δ_c = Σ_s γ_sc M_sᵀ(y_s − M_s μ)`` (the Toeplitz kernel and
  back-projection of :mod:`cryoprism.reconstruct`), with a Gaussian prior on the class difference
  ``Δ_c`` whose power spectrum comes from the cross power of the two half-set estimates
  (:func:`cryoprism.reconstruct.mean.wiener_regularization`; ``prior="pooled"``: one spectrum, the
  mean over classes): frequencies where the classes do not differ measurably stay at the common mean
  and add no noise to the next E-step.

The box is chosen from the data: EM on images Fourier-cropped to 32, then to twice that (up to the
full box) while the class differences still have spectral SNR at the box's edge.
Each class difference is solved inside the particle's envelope (the soft mask of the common mean).
Iterates until the log-likelihood gains less than ``tol`` per particle or the labels stop changing.
Optionally (``split``) splits afterwards each class whose own particles hold a further state (the
split-sample test of :mod:`cryoprism.heterogeneity.states`).
Derivation and measured accuracy: docs/heterogeneity.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from cryoprism.forward import backproject, project
from cryoprism.fourier.resample import downsample
from cryoprism.parallel import map_reduce
from cryoprism.parallel.core import batch_ranges, default_workers
from cryoprism.reconstruct.mean import (
    _rfft_shell_index,
    apply_kernel,
    auto_batch_size,
    kernel_from_spatial,
    kernel_spatial,
    solve_mean,
    wiener_regularization,
)

#: responsibilities below this are left out of a class's normal equations
MIN_WEIGHT = 1e-4


@dataclass
class ClassRefinement:
    """Result of :func:`refine_classes` (volumes at ``box``, the input's pixel size × L / box)."""

    labels: np.ndarray  # (n,) 0..C−1
    responsibilities: np.ndarray  # (n, C)
    volumes: np.ndarray  # (C, box, box, box) float32
    proportions: np.ndarray  # (C,)
    log_likelihood: list = field(default_factory=list)  # per E-step, summed over particles (+ const)
    iterations: int = 0
    box: int = 0
    info: dict = field(default_factory=dict)


def _batch_at_box(source, a: int, b: int, box: int):
    """Images, rotations, origins (px of ``box``) and CTF grid of particles ``a:b`` Fourier-cropped to
    ``box``."""
    bt = source.batch(np.arange(a, b))
    L = source.box
    im, rot, ctf = bt.images, bt.rotations, bt.ctf_grid(np.float32)
    org = np.asarray(bt.origins_A, np.float64) / float(source.pixel_size_A)  # pixels of the L box
    if box == L:
        return np.asarray(im, np.float32), rot, org, ctf
    im = downsample(np.asarray(im, np.float32), box)[0]
    if org is not None:
        org = np.asarray(org, np.float64) * box / L
    if ctf is not None:
        lo = L // 2 - box // 2
        ctf = np.asarray(ctf)[..., lo:lo + box, lo:lo + box]
    return im, rot, org, ctf


def _log_likelihoods(volumes, im, rot, org, ctf, noise_var: float, nthreads: int) -> np.ndarray:
    """``−(‖M_s X_c‖² − 2⟨M_s X_c, y_s⟩) / 2σ²`` for each particle and class: ``(b, C)``."""
    y = np.asarray(im, np.float64)
    out = np.empty((y.shape[0], len(volumes)))
    for c, v in enumerate(volumes):
        p = project(np.asarray(v, np.float32), rot, org, ctf, nthreads=nthreads).astype(np.float64)
        out[:, c] = -(np.sum(p * p, axis=(1, 2)) - 2 * np.sum(p * y, axis=(1, 2))) / (2 * noise_var)
    return out


def _posteriors(ll: np.ndarray, log_pi: np.ndarray):
    """Responsibilities ``(b, C)`` and per-particle log marginal likelihoods ``(b,)``."""
    z = ll + log_pi[None]
    mx = z.max(1, keepdims=True)
    e = np.exp(z - mx)
    s = e.sum(1, keepdims=True)
    return e / s, (mx + np.log(s))[:, 0]


def em_pass(source, volumes, gamma: np.ndarray, proportions: np.ndarray, noise_var: float, box: int,
            halves: np.ndarray, *, n_workers: int | None = None, progress: bool = True):
    """One pass over the particles: E-step against ``volumes`` (skipped when None: ``gamma`` is used),
    then the M-step sums per class and half-set.

    Returns ``(gamma (n, C), log-likelihood sum, rhs (C, 2, box³), K (C, 2, (2 box)³))`` where ``rhs``
    and ``K`` are the back-projections ``Σ γ_sc M_sᵀ y_s`` and Toeplitz kernels of ``Σ γ_sc M_sᵀM_s``.
    """
    n = source.n
    C = gamma.shape[1]
    workers = n_workers or default_workers()
    nt = 1 if workers > 1 else 0
    log_pi = np.log(np.maximum(proportions, 1e-12))
    new_gamma = np.empty_like(gamma)

    def job(r):
        a, b = r
        im, rot, org, ctf = _batch_at_box(source, a, b, box)
        if volumes is None:
            g, ll = gamma[a:b], np.zeros(b - a)
        else:
            g, ll = _posteriors(_log_likelihoods(volumes, im, rot, org, ctf, noise_var, nt), log_pi)
        rhs = np.zeros((C, 2, box, box, box))
        K = np.zeros((C, 2) + (2 * box,) * 3, np.float32)
        h = halves[a:b]
        for c in range(C):
            for q in range(2):
                sel = np.flatnonzero((h == q) & (g[:, c] > MIN_WEIGHT))
                if sel.size == 0:
                    continue
                w = g[sel, c]
                cs = None if ctf is None else ctf[sel]
                os_ = None if org is None else org[sel]
                rhs[c, q] = backproject(im[sel] * w[:, None, None].astype(np.float32), rot[sel], os_, cs,
                                        nthreads=nt)
                K[c, q] = kernel_spatial(rot[sel], box, cs, weights=w, nthreads=nt)
        return [(a, g, float(ll.sum()), rhs, K)]

    def add(acc, v):
        for a, g, ll, rhs, K in v:
            new_gamma[a:a + g.shape[0]] = g
            if not acc:
                acc.extend([ll, rhs, K])
            else:
                acc[0] += ll
                acc[1] += rhs
                acc[2] += K
        return acc

    # large batches: each (class, half) costs one fine-grid FFT per batch for its kernel
    batches = batch_ranges(n, auto_batch_size(n, box, workers))
    out = map_reduce(job, batches, add, initial=[], n_workers=workers, desc="3-D classes",
                     progress=progress)
    return new_gamma, out[0], out[1], out[2]


def molecule_support(mean: np.ndarray, *, extend_px: float = 2.0, edge_px: float = 3.0) -> np.ndarray | None:
    """Soft mask of the particle: :func:`cryoprism.image.masks.auto_mask` of the common mean (threshold
    from its solvent statistics, dilated by ``extend_px`` with an ``edge_px`` raised-cosine edge). The
    states differ only where some state has density, and the mean holds every state's density with
    its proportion; it is estimated from all particles, so its envelope is well determined. None when
    no voxel clears the threshold."""
    from cryoprism.image.masks import auto_mask

    try:
        return np.asarray(auto_mask(mean, 1.0, lowpass_A=0.0, extend_px=extend_px, edge_px=edge_px),
                          np.float64)
    except ValueError:
        return None


#: the class-difference supports of :func:`m_step` (``support=``)
SUPPORTS = ("molecule", "none")


def m_step(rhs: np.ndarray, K: np.ndarray, noise_var: float, previous=None, *, maxiter: int = 15,
           regularization: float = 1e-3, prior: str = "class", info: dict | None = None,
           support: str = "molecule"):
    """Class volumes ``μ + Δ_c`` from the per-class, per-half sums of :func:`em_pass`.

    The common mean ``μ`` is the least-squares volume of all particles (``Σ_c`` of the sums, scalar
    ``λ = regularization · max K̂``); each class difference solves ``(K_c + Λ_c) Δ_c = rhs_c − K_c μ``
    with ``Λ_c = σ² L³ / S_c`` the Wiener multipliers of a Gaussian prior on ``Δ_c``. ``prior``:
    ``class`` (default) — ``S_c`` is the shell cross power of the class's own two half-set differences;
    ``pooled`` — one spectrum, the mean of the ``S_c`` over classes (keeps a class that its own
    estimate would shrink to the mean and empty; measured better at n = 5000 per four classes, 0.6
    point worse at n = 10 000, docs/heterogeneity.md).
    ``support``: ``molecule`` (default) — each ``Δ_c = M u_c`` is solved inside the soft mask ``M`` of
    the particle (:func:`molecule_support` of ``μ``; ``solve_mean(..., support=M)``) and ``S_c`` comes from
    the masked half-set differences: the differences of 1250–2500 particles per class carry noise in
    the whole box but signal only where the particle is (measured: 94 % instead of 73 % from the
    covariance-space start, docs/heterogeneity.md); ``none`` — no mask.
    ``previous``: ``(μ, Δ (C, …))`` to start CG from. ``info``: a dict that receives
    ``difference_ssnr`` (per shell, :func:`difference_ssnr`). Returns ``(volumes (C, …), μ, Δ)``.
    """
    if prior not in ("pooled", "class"):
        raise ValueError(f"prior must be pooled or class, got {prior!r}")
    C = rhs.shape[0]
    kh = [[kernel_from_spatial(K[c, q]) for q in range(2)] for c in range(C)]
    full = [kh[c][0] + kh[c][1] for c in range(C)]
    total = full[0]
    for c in range(1, C):
        total = total + full[c]
    lam = regularization * float(np.abs(total.kernel_hat).max())
    mu0 = None if previous is None else previous[0]
    mu, _ = solve_mean(total, rhs.sum(axis=(0, 1)), lam, 1e-6, maxiter, x0=mu0)
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
    halves = []
    for c in range(C):
        d0 = None if previous is None else previous[1][c]
        half = []
        for q in range(2):
            b = rhs[c, q] - apply_kernel(kh[c][q], mu)
            lq = regularization * float(np.abs(kh[c][q].kernel_hat).max())
            x, _ = solve_mean(kh[c][q], b, lq, 1e-6, maxiter // 2, x0=d0)
            half.append(x)
        halves.append(half)
    mask = None
    if support == "molecule":
        mask = molecule_support(mu)
    lams = [wiener_regularization(*(h if mask is None else (h[0] * mask, h[1] * mask)), noise_var)
            for h in halves]
    if prior == "pooled":  # harmonic mean of Λ_c = arithmetic mean of the spectra S_c
        lams = [1.0 / np.mean([1.0 / lm for lm in lams], axis=0)] * C
    deltas = []
    for c in range(C):
        d0 = None if previous is None else previous[1][c]
        b = rhs[c].sum(0) - apply_kernel(full[c], mu)
        x, _ = solve_mean(full[c], b, lams[c], 1e-6, maxiter, x0=d0, support=mask)
        deltas.append(x)
    deltas = np.stack(deltas)
    if info is not None:
        info["difference_ssnr"] = np.mean([difference_ssnr(full[c], lams[c]) for c in range(C)], axis=0)
        info["support_fraction"] = 1.0 if mask is None else float(np.mean(mask))
    return (mu[None] + deltas).astype(np.float32), mu, deltas


def difference_ssnr(kernel, Lam: np.ndarray) -> np.ndarray:
    """Spectral SNR of a class difference per Fourier shell ``k = 0 … L/2``: the shell mean of the data
    precision ``K̂(k)`` (the class's Toeplitz kernel, on the ``2L`` grid at radius ``2k``) over the prior
    precision ``Λ(k) = σ² L³ / S(k)``. Below 1 the prior decides: the classes stop differing measurably."""
    L = kernel.L
    r2 = _rfft_shell_index(2 * L)
    keep = r2 % 2 == 0
    kap = np.bincount(r2[keep] // 2, np.abs(kernel.kernel_hat)[keep], L + 1)[: L // 2 + 1]
    cnt = np.bincount(r2[keep] // 2, minlength=L + 1)[: L // 2 + 1]
    rl = _rfft_shell_index(L)
    lam = np.bincount(rl.ravel(), np.asarray(Lam).ravel(), L + 1)[: L // 2 + 1]
    cl = np.bincount(rl.ravel(), minlength=L + 1)[: L // 2 + 1]
    return (kap / np.maximum(cnt, 1)) / np.maximum(lam / np.maximum(cl, 1), 1e-300)


def _em(source, gamma, pi, sigma2, box, halves, lab, iterations, tol, prior, n_workers, progress,
        support="molecule"):
    """EM at one box from responsibilities ``gamma``: ``(gamma, π, labels, volumes, log-likelihoods,
    E-steps, info of the last M-step)``."""
    n = gamma.shape[0]
    vols, prev, lls, info = None, None, [], {}
    it = 0
    for it in tqdm(range(iterations + 1), desc=f"3-D classification (box {box})", disable=not progress,
                   leave=False):
        gamma, ll, rhs, K = em_pass(source, vols, gamma, pi, sigma2, box, halves, n_workers=n_workers,
                                    progress=False)
        pi = np.maximum(gamma.mean(0), 1.0 / n)
        vols, mu, deltas = m_step(rhs, K, sigma2, prev, prior=prior, info=info, support=support)
        prev = (mu, deltas)
        if it == 0:
            continue
        lls.append(ll)
        new = np.argmax(gamma, 1)
        changed = float(np.mean(new != lab))
        lab = new
        if changed < 1e-3 or (len(lls) > 1 and lls[-1] - lls[-2] < tol * n):
            break
    return gamma, pi, lab, vols, lls, it, info


#: automatic box (``box=None``): the EM starts on images Fourier-cropped to this box and doubles it
#: (up to the full box) while the class differences still have spectral SNR ≥ ``BOX_SSNR`` at its edge
START_BOX = 32
BOX_SSNR = 1.0

#: class splitting: the band of the per-class state test (as the covariance's default ``N_res``), the
#: fewest particles a class needs to be tested, and the smallest sub-class a split may leave
SPLIT_NRES = 17
SPLIT_MIN_PARTICLES = 200
SPLIT_MIN_FRACTION = 0.02



def refine_classes(source, labels: np.ndarray, n_classes: int, noise_var: float, *, box: int | None = None,
                   max_iterations: int = 30, tol: float = 1e-3, seed: int = 0, n_workers: int | None = None,
                   progress: bool = True, prior: str = "class", start_box: int = START_BOX,
                   box_ssnr: float = BOX_SSNR, support: str = "molecule", split: bool = False,
                   split_alpha: float | None = None, split_nres: int = SPLIT_NRES,
                   max_classes: int = 8) -> ClassRefinement:
    """ML 3-D classification with fixed poses, started from ``labels``.

    ``source``: the particles (``io.ParticleSource``: images at the full box ``L``, poses, origins,
    CTF). ``noise_var``: white-noise variance per pixel of the ``L × L`` images (the background
    estimate). ``box``: work on images Fourier-cropped to ``box``; None (default) chooses it from the
    data: EM at ``min(L, start_box)``, then at twice that box (up to ``L``, continuing from the
    responsibilities) while the class differences' spectral SNR (:func:`difference_ssnr`) at the box's
    edge shell is ≥ ``box_ssnr``. ``prior``: the class-difference prior of :func:`m_step`.
    ``support``: where the class differences are solved: ``molecule`` (default) inside the particle's
    envelope from the common mean (:func:`molecule_support`); ``none``: the whole box.
    Stops when the log-likelihood gains less than ``tol`` per particle, when fewer than 0.1 % of the
    labels change, or after ``max_iterations`` E-steps in all.

    ``split``: afterwards, split classes that hold a further state (:func:`split_classes`: the
    split-sample test at level ``split_alpha`` (default :data:`states.ALPHA`) on each class's particles
    at ``split_nres``, up to ``max_classes``); the decisions are in ``info["splits"]``.
    """
    kw = dict(box=box, max_iterations=max_iterations, tol=tol, seed=seed, n_workers=n_workers,
              progress=progress, prior=prior, start_box=start_box, box_ssnr=box_ssnr, support=support)
    res = _refine(source, labels, n_classes, noise_var, **kw)
    if split:
        res = split_classes(source, res, noise_var, alpha=split_alpha, n_res=split_nres,
                            max_classes=max_classes, **kw)
    return res


def _refine(source, labels, n_classes, noise_var, *, box, max_iterations, tol, seed, n_workers, progress,
            prior, start_box, box_ssnr, support) -> ClassRefinement:
    L = int(source.box)
    n = int(source.n)
    C = int(n_classes)
    auto = box is None
    b = int(min(L, start_box if auto else box))
    halves = np.random.default_rng(seed).permutation(n) % 2
    lab = np.asarray(labels, np.int64)
    gamma = np.zeros((n, C))
    gamma[np.arange(n), lab] = 1.0
    pi = np.maximum(gamma.mean(0), 1.0 / n)
    lls, its, stages = [], 0, []
    while True:
        sigma2 = float(noise_var) * (b / L) ** 2
        gamma, pi, lab, vols, ll, it, info = _em(source, gamma, pi, sigma2, b, halves, lab,
                                                 max_iterations - its, tol, prior, n_workers, progress,
                                                 support)
        lls += ll
        its += it
        ssnr = info["difference_ssnr"]
        edge = float(ssnr[max(b // 2 - 1, 0)])
        stages.append({"box": b, "iterations": it, "edge_ssnr": edge,
                       "support_fraction": info.get("support_fraction", 1.0)})
        if not auto or b >= L or edge < box_ssnr or its >= max_iterations:
            break
        b = int(min(L, 2 * b))
    return ClassRefinement(lab, gamma, vols, pi, lls, its, b,
                           {"sigma2_box": sigma2, "stages": stages, "difference_ssnr": ssnr.tolist()})



def class_state_test(source, idx: np.ndarray, *, n_res: int = SPLIT_NRES, alpha: float | None = None, seed: int = 0,
               n_workers: int | None = None):
    """The state test of :func:`states.split_class` on particles ``idx`` of ``source`` (Fourier-cropped to
    ``n_res``, residuals from their own least-squares mean): ``(StateTest, sub-labels or None)``."""
    from cryoprism.heterogeneity.covariance import estimate_mean
    from cryoprism.heterogeneity.data import compute_residuals, prepare
    from cryoprism.heterogeneity.states import ALPHA, split_class

    d = prepare(source.subset(np.asarray(idx)), min(int(n_res), int(source.box)), oversample=1.5,
                n_workers=n_workers, progress=False)
    A = estimate_mean(d, n_workers=n_workers, progress=False)
    compute_residuals(d, A.mean, n_workers=n_workers, progress=False)
    return split_class(d, A, alpha=ALPHA if alpha is None else alpha, seed=seed, n_workers=n_workers)


def split_classes(source, refined: ClassRefinement, noise_var: float, *, alpha: float | None = None,
                  n_res: int = SPLIT_NRES, max_classes: int = 8, min_particles: int = SPLIT_MIN_PARTICLES,
                  min_fraction: float = SPLIT_MIN_FRACTION, **refine_kw) -> ClassRefinement:
    """Split the classes of ``refined`` that hold a further state, refining after each split.

    Each class with at least ``min_particles`` is tested (:func:`class_state_test`: the split-sample test of
    its first eigenvalue at level ``alpha``); the first with ``p < alpha`` is split in two by its own
    covariance's first coordinate, and the EM (:func:`refine_classes`, ``refine_kw``) runs again with
    one class more from those labels. The split is kept unless the log-likelihood of the mixture
    stalls (gains less than ``tol`` per particle) or a sub-class ends below ``min_fraction`` of the
    split class; after a kept split only its two classes are tested again. Stops when no class splits
    or at ``max_classes``. ``info["splits"]``: one record per test (class, particles, eigenvalue,
    p-value, and for a split the sub-class sizes, the log-likelihood gain and whether it was kept).
    """
    n = int(source.n)
    tol = float(refine_kw.get("tol", 1e-3))
    seed = int(refine_kw.get("seed", 0))
    res, decisions = refined, []
    todo = list(range(len(res.proportions)))
    while todo and len(res.proportions) < max_classes:
        c = todo.pop(0)
        idx = np.flatnonzero(res.labels == c)
        rec = {"class": int(c), "n_particles": int(idx.size), "n_classes": int(len(res.proportions))}
        if idx.size < min_particles:
            decisions.append({**rec, "tested": False})
            continue
        test, sub = class_state_test(source, idx, n_res=n_res, alpha=alpha, seed=seed,
                               n_workers=refine_kw.get("n_workers"))
        rec.update(tested=True, eigenvalue=float(test.eigenvalues[0]), p_value=float(test.p_values[0]),
                   split=sub is not None)
        if sub is None:
            decisions.append(rec)
            continue
        C = len(res.proportions)
        labels = np.asarray(res.labels).copy()
        labels[idx[sub == 1]] = C
        new = _refine(source, labels, C + 1, noise_var, **refine_kw)
        gain = float(new.log_likelihood[-1] - res.log_likelihood[-1]) if new.log_likelihood and \
            res.log_likelihood else float("inf")
        sizes = [int(np.sum(new.labels == c)), int(np.sum(new.labels == C))]
        keep = gain >= tol * n and min(sizes) >= min_fraction * idx.size
        rec.update(sub_sizes_start=np.bincount(sub, minlength=2).tolist(), sub_sizes=sizes,
                   log_likelihood_gain=gain, kept=bool(keep))
        decisions.append(rec)
        if keep:
            res = new
            todo = [c, C] + [k for k in todo if k not in (c, C)]
    res.info["splits"] = decisions
    return res
