"""Comparison reconstructions: direct Fourier inversion, weighted back-projection (WBP), SIRT.

All read the particles once in batches (``cryoprism.parallel.map_reduce``) and share the notation of
:mod:`cryoprism.reconstruct.mean` (``b = Σ P_jᵀ y_j``, ``K̂`` = kernel of ``Σ P_jᵀ P_j`` on the
``2L`` grid).

* **Direct Fourier inversion (gridding with weights).** The slice samples ``C_j(k) Ŷ_j(k)`` sit at
  ``ω = Aᵀ(kx, ky, 0)``; on a 2×-padded ``(2L)³`` Fourier grid (index ``κ = 2ω``, where the FFT of the
  zero-padded volume equals ``V̂(κ/2)``) they are spread trilinearly, and so are the weights
  ``C_j(k)²``. The estimate is ``V̂(κ/2) ≈ Σ C Ŷ φ / (Σ C² φ + λ)`` where the weights are non-zero
  (RELION's scheme with padding 2, without its iterative weight refinement), then an inverse FFT on
  the ``2L`` grid cropped to the ``L`` box. One pass, no iterations; accuracy limited by the
  trilinear interpolation (a few % at high frequency).
* **WBP.** Each image is CTF-corrected by a Wiener filter ``C/(C² + ε)`` and weighted by the ramp
  ``2|k|/n`` (the inverse density of central slices of n uniformly distributed views, ``n/(2|k|)``
  samples per unit frequency volume; ``|k| ≥ ½`` at the origin), then back-projected:
  ``x = (1/L) Σ_j P_jᵀ F⁻¹[ramp · Wiener · Ŷ_j]``. Exact only for uniform views.
* **SIRT** (simultaneous iterative reconstruction, here in its Landweber form with uniform row and
  column weights): ``x ← x + α (b − Σ P_jᵀ P_j x)``, ``α = 1/max K̂`` (a bound on the operator norm),
  each step through the Toeplitz kernel (two FFTs).
"""

from __future__ import annotations

import time

import numpy as np

from cryoprism.forward.projection import backproject
from cryoprism.fourier.core import fft2c, ifft2c, ifft3c
from cryoprism.io.particles import ParticleSource
from cryoprism.parallel import map_reduce
from cryoprism.parallel.config import finufft_threads
from cryoprism.parallel.core import batch_ranges, default_workers
from cryoprism.reconstruct.mean import (
    MeanKernel,
    MeanResult,
    _dot,
    apply_kernel,
    checked_source,
    half_set_labels,
    read_batch,
    reconstruct_mean,
    solve_groups,
)

METHODS = ("cg", "fourier", "wbp", "sirt")


def grid_slices(values, weights, rotations, L: int):
    """Trilinear spreading of centred slices ``values`` ``(b, L, L)`` (complex) and ``weights`` (real)
    onto the ``(2L)³`` padded Fourier grid (centre index ``L``). Returns ``(data, weight)`` grids."""
    rot = np.asarray(rotations, np.float64).reshape(-1, 3, 3)
    k = np.arange(L) - L // 2
    ky, kx = np.meshgrid(k, k, indexing="ij")
    kx, ky = kx.ravel().astype(np.float64), ky.ravel().astype(np.float64)
    N = 2 * L
    dat = np.zeros(N**3, np.complex128)
    wgt = np.zeros(N**3, np.float64)
    v = np.asarray(values).reshape(len(rot), -1)
    w = np.asarray(weights, np.float64).reshape(len(rot), -1)
    if L % 2 == 0:  # the unpaired -L/2 frequency is not part of the model (see forward.projection)
        keep = (kx > -(L // 2)) & (ky > -(L // 2))
        v, w, kx, ky = v[:, keep], w[:, keep], kx[keep], ky[keep]
    # padded-grid coordinates (x, y, z) of every sample, index = 2ω + L
    pos = [2.0 * (rot[:, 0, i, None] * kx[None] + rot[:, 1, i, None] * ky[None]) + L for i in range(3)]
    base = [np.floor(p).astype(np.int64) for p in pos]
    frac = [p - b for p, b in zip(pos, base)]
    v, w = v.ravel(), w.ravel()
    base = [b.ravel() for b in base]
    frac = [f.ravel() for f in frac]
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                ix, iy, iz = base[0] + dx, base[1] + dy, base[2] + dz
                f = ((frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1])
                     * (frac[2] if dz else 1 - frac[2]))
                ok = (ix >= 0) & (ix < N) & (iy >= 0) & (iy < N) & (iz >= 0) & (iz < N)
                lin = (iz[ok] * N + iy[ok]) * N + ix[ok]
                fw = f[ok]
                dat.real += np.bincount(lin, weights=fw * v.real[ok], minlength=N**3)
                dat.imag += np.bincount(lin, weights=fw * v.imag[ok], minlength=N**3)
                wgt += np.bincount(lin, weights=fw * w[ok], minlength=N**3)
    return dat.reshape(N, N, N), wgt.reshape(N, N, N)


def fourier_inversion(data_grid, weight_grid, regularization: float = 0.0, floor: float = 1e-6):
    """Volume from gridded data and weights: ``crop F⁻¹_{2L}[data / (weight + λ)]`` (zero where the
    weight is below ``floor · max weight``)."""
    N = data_grid.shape[0]
    L = N // 2
    ok = weight_grid > floor * weight_grid.max()
    Vh = np.where(ok, data_grid / np.where(ok, weight_grid + regularization, 1.0), 0.0)
    vol = ifft3c(Vh).real  # F⁻¹ on 2L of the samples V̂(κ/2) is the zero-padded volume
    lo = L - L // 2
    return vol[lo:lo + L, lo:lo + L, lo:lo + L]


def _group_labels(src, halfmaps: bool, seed: int):
    """Per-particle group labels (0/1 half sets with ``halfmaps``, else all 0) and the group count."""
    groups = half_set_labels(src.n, src.table, seed) if halfmaps else \
        np.zeros(src.n, np.int64)
    return groups, (int(groups.max()) + 1 if src.n else 1)


def reconstruct_fourier(source: ParticleSource, *, use_ctf: bool = True,
                        regularization: float = 0.0, halfmaps: bool = False, batch_size: int = 512,
                        n_workers: int | None = None, scheduler: str | None = None, seed: int = 0,
                        progress: bool = True) -> MeanResult:
    """Direct Fourier inversion by trilinear gridding with weights (see module docstring)."""
    t0 = time.perf_counter()
    src = checked_source(source)
    L = src.box
    groups, G = _group_labels(src, halfmaps, seed)
    workers = n_workers or default_workers()

    def job(r):
        a, b = r
        im, rot, org, c = read_batch(src, np.arange(a, b), use_ctf)
        F = fft2c(im.astype(np.float64))
        if org is not None:
            k = np.arange(L) - L // 2
            F *= np.exp(-2j * np.pi * (org[:, 1, None, None] * k[None, :, None]
                                       + org[:, 0, None, None] * k[None, None, :]) / L)
        cc = np.ones((1, L, L)) if c is None else np.asarray(c, np.float64)
        out = []
        for q in range(G):
            sel = np.flatnonzero(groups[a:b] == q)
            cq = np.broadcast_to(cc, (b - a, L, L))[sel]
            out.append(grid_slices(F[sel] * cq, cq * cq, rot[sel], L))
        return out

    def add(acc, v):
        for (d0, w0), (d1, w1) in zip(acc, v):
            d0 += d1
            w0 += w1
        return acc

    acc = map_reduce(job, batch_ranges(src.n, batch_size), add, n_workers=workers, scheduler=scheduler,
                     desc="gridding", progress=progress)
    vols = [fourier_inversion(d, w, regularization * float(np.mean(groups == q)))
            for q, (d, w) in enumerate(acc)]
    halves = fsc = None
    if halfmaps:
        halves = (vols[0].astype(src.dtype), vols[1].astype(src.dtype))
        from cryoprism.metrics.fsc import fsc as _fsc

        fsc = _fsc(halves[0], halves[1], src.pixel_size_A)
        full = fourier_inversion(acc[0][0] + acc[1][0], acc[0][1] + acc[1][1], regularization)
    else:
        full = vols[0]
    return MeanResult(full.astype(src.dtype), halves, fsc, 0, float("nan"), time.perf_counter() - t0, {})


def sirt(kernel: MeanKernel, rhs: np.ndarray, n_iter: int = 50, regularization: float = 0.0,
         relaxation: float = 1.0):
    """Landweber-SIRT iterations on the normal equations; returns ``(x, relative residuals)``."""
    a = relaxation / (float(np.max(kernel.kernel_hat)) + regularization)
    b = np.asarray(rhs, np.float64)
    x = np.zeros_like(b)
    bn = np.sqrt(_dot(b, b)) or 1.0
    res = []
    for _ in range(int(n_iter)):
        r = b - apply_kernel(kernel, x, regularization)
        res.append(float(np.sqrt(_dot(r, r)) / bn))
        x += a * r
    return x, res


def _wbp_filter(L: int, n_views: int, ctf, wiener_eps: float) -> np.ndarray:
    k = np.meshgrid(*(np.arange(L) - L // 2,) * 2, indexing="ij")
    ramp = 2.0 * np.maximum(np.hypot(k[0], k[1]), 0.5) / max(n_views, 1)
    if ctf is None:
        return ramp[None]
    c = np.asarray(ctf, np.float64)
    return ramp[None] * c / (c * c + wiener_eps)


def reconstruct_wbp(source: ParticleSource, *, use_ctf: bool = True,
                    wiener_eps: float = 0.1, halfmaps: bool = False, batch_size: int = 512,
                    n_workers: int | None = None, scheduler: str | None = None, seed: int = 0,
                    progress: bool = True) -> MeanResult:
    """Weighted back-projection with a per-image Wiener CTF correction (see module docstring)."""
    t0 = time.perf_counter()
    src = checked_source(source)
    L = src.box
    groups, G = _group_labels(src, halfmaps, seed)
    counts = np.bincount(groups, minlength=G)
    workers = n_workers or default_workers()
    nt = finufft_threads(workers)

    def job(r):
        a, b = r
        im, rot, org, c = read_batch(src, np.arange(a, b), use_ctf)
        out = np.zeros((G, L, L, L), np.float64)
        for q in range(G):
            sel = np.flatnonzero(groups[a:b] == q)
            if sel.size == 0:
                continue
            F = fft2c(im[sel].astype(np.float64)) * _wbp_filter(L, counts[q], None if c is None else c[sel],
                                                              wiener_eps)
            out[q] = backproject(ifft2c(F).real, rot[sel], None if org is None else org[sel],
                                 nthreads=nt) / L
        return out

    acc = map_reduce(job, batch_ranges(src.n, batch_size), n_workers=workers, scheduler=scheduler,
                     desc="wbp", progress=progress)
    halves = fsc = None
    if halfmaps:
        halves = (acc[0].astype(src.dtype), acc[1].astype(src.dtype))
        from cryoprism.metrics.fsc import fsc as _fsc

        fsc = _fsc(halves[0], halves[1], src.pixel_size_A)
        # full map: the two half-maps weighted by their share of the particles
        full = (counts[0] * acc[0] + counts[1] * acc[1]) / max(counts.sum(), 1)
    else:
        full = acc[0]
    return MeanResult(full.astype(src.dtype), halves, fsc, 0, float("nan"), time.perf_counter() - t0, {})


def reconstruct(source: ParticleSource, *, method: str = "cg", use_ctf: bool = True,
                regularization: float = 0.0, tol: float = 1e-5, maxiter: int = 100,
                halfmaps: bool = False, batch_size: int | None = None, n_workers: int | None = None,
                scheduler: str | None = None, seed: int = 0, mask_radius_px: float | str | None = "auto",
                eps: float | None = None, progress: bool = True, job=None) -> MeanResult:
    """Reconstruct by ``method``: ``"cg"`` (least squares, default), ``"fourier"`` (direct Fourier
    inversion), ``"wbp"`` (weighted back-projection), ``"sirt"`` (``maxiter`` Landweber steps).

    ``source``: the particles with poses (``io.ParticleSource``); ``use_ctf=False`` ignores the CTF.
    Other arguments as in :func:`cryoprism.reconstruct.reconstruct_mean` (``regularization="auto"``,
    ``mask_radius_px`` — default ``"auto"``, the particle's ball chosen from the data —, ``eps`` and
    ``job`` — checkpoints and ``--resume`` — apply to ``"cg"`` only;
    ``batch_size`` None = automatic).
    """
    common = dict(use_ctf=use_ctf, halfmaps=halfmaps, batch_size=batch_size, n_workers=n_workers, scheduler=scheduler,
                  seed=seed, progress=progress)
    if method == "cg":
        return reconstruct_mean(source, regularization=regularization, tol=tol, maxiter=maxiter,
                                mask_radius_px=mask_radius_px, eps=eps, job=job, **common)
    if job is not None and job.resume:
        raise ValueError(f"checkpoints are for method 'cg' only, not {method!r}")
    if isinstance(regularization, str):
        raise ValueError(f"regularization='auto' is for method 'cg' only, not {method!r}")
    common["batch_size"] = batch_size or 512
    if method == "wbp":
        return reconstruct_wbp(source, **common)
    if method == "fourier":
        return reconstruct_fourier(source, regularization=regularization, **common)
    if method == "sirt":
        def solver(kernel, rhs, frac, name=None):
            x, res = sirt(kernel, rhs, maxiter, regularization * frac)
            return x, len(res), res[-1] if res else float("nan")
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return solve_groups(source, solver, **common)
