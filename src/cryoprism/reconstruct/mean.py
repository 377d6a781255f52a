"""Mean volume by least squares with CTF: CG on the normal equations with a Toeplitz kernel.

Forward model (``cryoprism.forward.project``): ``y_j = P_j x + noise`` with
``P_j x = Re F⁻¹[ M · C_j · S_j · N_j x ]`` — ``N_j`` the type-2 NUFFT on the slice ``Aᵀ(kx, ky, 0)``,
``S_j`` the shift phase, ``C_j`` the CTF, ``M`` the mask that drops the unpaired ``-L/2`` frequency
(even L), ``F⁻¹`` the centred inverse 2-D FFT (``1/L²``). Because ``M C_j S_j N_j x`` is Hermitian for
real ``x``, ``Re`` is inert and

    Σ_j P_jᵀ P_j x (r) = Σ_{r'} K(r - r') x(r'),
    K(d) = (1/L²) Σ_j Σ_{k kept} |C_j(k)|² exp(+2πi ω_jk·d / L),   d ∈ {-L, …, L-1}³,

a (real, even) Toeplitz kernel that one type-1 NUFFT onto a ``(2L)³`` grid computes. Applying the
normal operator is then a zero-padded circular convolution on the ``2L`` grid: two real FFTs of size
``(2L)³`` per CG iteration, independent of the number of images. The right-hand side is the exact
back-projection ``Σ_j P_jᵀ y_j``. We solve

    (Σ_j P_jᵀ P_j + λ I) x = Σ_j P_jᵀ y_j

by CG (started from zero, so the iterates stay in the range of the normal operator: Fourier
components no slice reaches, such as the corners of the cube, stay zero). A circulant (L-periodic)
preconditioner was tried and slowed convergence (the kernel decays like 1/|d|, its L-periodic
aliasing is a poor approximation), so none is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import finufft
import numpy as np
import scipy.fft as sfft

from cryoprism.ctf.model import ctf_2d
from cryoprism.errors import InputError
from cryoprism.forward.projection import (
    backproject,
    even_part,
    half_start,
    nufft_eps,
    slice_indices,
    slice_points,
)
from cryoprism.io.particles import ParticleSource
from cryoprism.parallel import map_reduce
from cryoprism.parallel.config import fft_workers, finufft_threads, progress_bar
from cryoprism.parallel.core import batch_ranges, default_workers

# ----------------------------------------------------------------------------------------------
# kernel
# ----------------------------------------------------------------------------------------------

@dataclass
class MeanKernel:
    """Fourier transform of the Toeplitz kernel on the ``(2L)³`` grid (``rfftn`` layout, real)."""

    L: int
    kernel_hat: np.ndarray  # (2L, 2L, L+1), real

    @property
    def dtype(self):
        return self.kernel_hat.dtype

    def __add__(self, other: "MeanKernel") -> "MeanKernel":
        return MeanKernel(self.L, self.kernel_hat + other.kernel_hat)



def kernel_from_spatial(K: np.ndarray) -> MeanKernel:
    """Build a :class:`MeanKernel` from a centred spatial kernel ``K[d + L]`` on ``(2L)³``."""
    L = K.shape[0] // 2
    kh = sfft.rfftn(sfft.ifftshift(K), workers=fft_workers()).real
    return MeanKernel(L, kh.astype(K.dtype, copy=False))


def kernel_spatial(rotations, L: int, ctf=None, weights=None, eps: float | None = None,
                   dtype=np.float32, nthreads: int | None = None) -> np.ndarray:
    """Centred spatial kernel ``K(d)`` on ``(2L)³`` for one batch (real, ``dtype``).

    ``ctf``: ``(n, L, L)`` centred grid or None; ``weights``: optional per-image factors ``(n,)``
    (e.g. class responsibilities) multiplying ``|C_j|²``.
    """
    rot = np.asarray(rotations, np.float64).reshape(-1, 3, 3)
    n = rot.shape[0]
    rdtype = np.float32 if np.dtype(dtype) == np.float32 else np.float64
    cdtype = np.complex64 if rdtype == np.float32 else np.complex128
    if eps is None:  # float32 on the 1.25-upsampled grid: 3e-5 is what its kernel width (8) delivers
        eps = 3e-5 if rdtype == np.float32 else nufft_eps(rdtype)
    m = len(slice_indices(L))
    s = slice(1, None) if L % 2 == 0 else slice(0, None)
    if ctf is None:
        w = np.ones((n, m, m), dtype=np.float64)
    else:
        c = np.asarray(ctf, dtype=np.float64)
        c = np.broadcast_to(c, (n, L, L)) if c.ndim == 2 else c
        w = even_part(c, L)[:, s, s] ** 2  # the CTF part a real image sees
    if weights is not None:
        w = w * np.asarray(weights, np.float64).reshape(-1, 1, 1)
    w = w.reshape(n, m * m) / (L * L)
    # K is real and even: fold the weights of -k onto k and spread only the Hermitian half-plane
    P0 = half_start(L)
    wh = np.empty((n, P0 + 1), dtype=np.float64)
    wh[:, 1:] = w[:, P0 + 1:] + w[:, P0 - 1::-1]
    wh[:, 0] = w[:, P0]
    z, y, x = slice_points(rot, L, dtype=rdtype, half=True)
    nt = finufft_threads(1) if nthreads is None else nthreads
    # upsampfac 1.25 keeps the fine grid at ~(2.5L)³ instead of (4L)³
    out = finufft.nufft3d1(z, y, x, wh.astype(cdtype).ravel(), (2 * L, 2 * L, 2 * L), eps=eps, isign=1,
                           nthreads=nt, upsampfac=1.25 if rdtype == np.float32 else 2.0)
    return out.real.astype(rdtype)


def mean_kernel(rotations, L: int, ctf=None, weights=None, pixel_size_A=None, batch_size: int = 1024,
                dtype=np.float32, n_workers: int | None = None, progress: bool = True) -> MeanKernel:
    """Toeplitz kernel of ``Σ_j w_j P_jᵀ P_j`` for poses ``rotations`` ``(n, 3, 3)`` (no images).

    ``ctf``: None, a centred ``(n, L, L)`` grid, or ``CTFParams`` over n particles (then
    ``pixel_size_A`` is needed). Shifts do not enter the kernel. Batches run through
    ``cryoprism.parallel.map_reduce``.
    """
    rot = np.asarray(rotations, np.float64).reshape(-1, 3, 3)

    def ctf_grid(idx):
        if ctf is None:
            return None
        if isinstance(ctf, np.ndarray):
            return np.broadcast_to(ctf, (len(idx), L, L)) if ctf.ndim == 2 else ctf[idx]
        c = ctf_2d(L, pixel_size_A, ctf.take(idx), dtype=np.float32)
        return np.broadcast_to(c, (len(idx), L, L)) if c.ndim == 2 else c

    w = None if weights is None else np.asarray(weights, np.float64)
    workers = n_workers or default_workers()
    nt = finufft_threads(workers)

    def job(r):
        a, b = r
        idx = np.arange(a, b)
        return kernel_spatial(rot[a:b], L, ctf_grid(idx), None if w is None else w[a:b],
                              dtype=dtype, nthreads=nt)

    K = map_reduce(job, batch_ranges(rot.shape[0], batch_size), n_workers=workers,
                   desc="kernel", progress=progress)
    return kernel_from_spatial(K)


def apply_kernel(kernel: MeanKernel, x: np.ndarray, regularization=0.0) -> np.ndarray:
    """``(Σ_j P_jᵀ P_j + Λ) x`` by a zero-padded convolution on the ``2L`` grid (two real FFTs).

    ``regularization``: a scalar ``λ`` (``Λ = λ I``) or an ``rfftn``-layout array ``(L, L, L//2+1)``
    of Fourier multipliers (``Λ = F⁻¹ diag(λ(k)) F``, see :func:`wiener_regularization`).
    """
    L = kernel.L
    X = sfft.rfftn(x.astype(kernel.dtype, copy=False), s=(2 * L,) * 3, workers=fft_workers())
    X *= kernel.kernel_hat
    y = sfft.irfftn(X, s=(2 * L,) * 3, workers=fft_workers())[:L, :L, :L]
    if np.ndim(regularization) == 0:
        if regularization:
            y = y + regularization * x
    else:
        y = y + sfft.irfftn(sfft.rfftn(x, workers=fft_workers()) * regularization, s=(L,) * 3, workers=fft_workers())
    return y


def _rfft_shell_index(L: int) -> np.ndarray:
    """Integer Fourier radius of every element of an ``rfftn`` array of an ``L³`` volume."""
    f = np.fft.fftfreq(L) * L
    fz, fy = np.meshgrid(f, f, indexing="ij")
    fx = np.fft.rfftfreq(L) * L
    return np.rint(np.sqrt(fz[..., None] ** 2 + fy[..., None] ** 2 + fx[None, None] ** 2)).astype(np.int64)


def wiener_regularization(x1: np.ndarray, x2: np.ndarray, noise_var: float, floor: float = 1e-3):
    """Fourier multipliers ``λ(k) = σ² L³ / S(|k|)`` of a Gaussian prior with power spectrum ``S``.

    ``S`` is the shell average of the cross power ``Re X̂₁ X̂₂*`` of two independent estimates
    (half-sets), which is unbiased for the signal power because their noises are independent;
    shells where it is not positive get ``S = floor · max S``. ``σ²`` is the noise variance per image
    pixel. Returns an ``rfftn``-layout ``(L, L, L//2+1)`` array for :func:`apply_kernel`.
    """
    L = x1.shape[0]
    X1 = sfft.rfftn(np.asarray(x1, np.float64), workers=fft_workers())
    X2 = sfft.rfftn(np.asarray(x2, np.float64), workers=fft_workers())
    r = _rfft_shell_index(L)
    cross = np.real(X1 * np.conj(X2))
    nsh = int(r.max()) + 1
    S = np.bincount(r.ravel(), cross.ravel(), nsh) / np.maximum(np.bincount(r.ravel(), minlength=nsh), 1)
    Smax = float(S.max()) if S.size and S.max() > 0 else 1.0
    S = np.maximum(S, floor * Smax)
    # beyond the first shell where the signal vanishes keep the floor (noise-only cross power)
    bad = np.flatnonzero(S <= floor * Smax)
    if bad.size:
        S[bad[0]:] = floor * Smax
    return (noise_var * L**3 / S)[r]


# ----------------------------------------------------------------------------------------------
# conjugate gradient
# ----------------------------------------------------------------------------------------------

@dataclass
class CGInfo:
    iterations: int
    residuals: list = field(default_factory=list)  # relative residual norms ‖r_k‖/‖b‖
    converged: bool = False


@dataclass
class CGState:
    """Everything CG needs to continue after ``iteration``: iterate, residual, search direction,
    ``ρ = ⟨r, z⟩`` and the residual history (what :class:`CGCheckpoint` saves)."""

    x: np.ndarray
    r: np.ndarray
    p: np.ndarray
    rz: float
    iteration: int
    residuals: list


def _dot(a, b) -> float:
    """``Σ a·b`` without BLAS (a threaded BLAS dot on a busy machine costs ~1000× more here)."""
    return float(np.einsum("i,i->", np.ravel(a), np.ravel(b)))


def conjugate_gradient(apply_A, b, x0=None, tol: float = 1e-5, maxiter: int = 100, precond=None,
                       progress: bool = False, checkpoint=None) -> tuple[np.ndarray, CGInfo]:
    """Preconditioned CG for a symmetric positive (semi)definite operator; float64 accumulators.

    ``checkpoint``: a :class:`CGCheckpoint` (or any object with ``.state`` — a :class:`CGState` to
    continue from, or None — and ``__call__(state, final)``, called after every iteration and once at
    the end). Continuing from a saved state repeats the uninterrupted run's arithmetic exactly.
    """

    b = np.asarray(b, np.float64)
    bn = np.sqrt(_dot(b, b)) or 1.0
    st = None if checkpoint is None else checkpoint.state
    if st is not None:
        x, r, p = (np.array(a, np.float64) for a in (st.x, st.r, st.p))
        rz = float(st.rz)
        info = CGInfo(int(st.iteration), [float(v) for v in st.residuals])
    else:
        x = np.zeros_like(b) if x0 is None else np.array(x0, np.float64)
        r = b - apply_A(x) if x0 is not None else b.copy()
        z = precond(r) if precond else r
        p = z.copy()
        rz = _dot(r, z)
        info = CGInfo(0, [np.sqrt(_dot(r, r)) / bn])
    start = info.iterations + 1
    bar = progress_bar(total=maxiter, initial=info.iterations, desc="CG", progress=progress, leave=False)
    for it in range(start, maxiter + 1):
        if info.residuals[-1] <= tol:
            info.converged = True
            break
        Ap = np.asarray(apply_A(p), np.float64)
        pAp = _dot(p, Ap)
        if pAp <= 0:
            break
        alpha = rz / pAp
        x += alpha * p
        r -= alpha * Ap
        z = precond(r) if precond else r
        rz_new = _dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
        info.iterations = it
        info.residuals.append(np.sqrt(_dot(r, r)) / bn)
        bar.update()
        if checkpoint is not None:
            checkpoint(CGState(x, r, p, rz, it, info.residuals), False)
    else:
        info.converged = info.residuals[-1] <= tol
    bar.close()
    if checkpoint is not None:
        checkpoint(CGState(x, r, p, rz, info.iterations, info.residuals), True)
    return x, info


class CGCheckpoint:
    """Saves the state of one named CG solve in a :class:`cryoprism.io.checkpoint.Checkpoints`
    folder (throttled by its ``due``; always at the end) and, when resuming, starts from it."""

    def __init__(self, checkpoints, name: str):
        self.ck, self.name = checkpoints, name
        self.state = None
        self._saved_at = -1
        got = checkpoints.load(name) if checkpoints is not None else None
        if got is not None:
            a, meta = got
            self.state = CGState(a["x"], a["r"], a["p"], float(meta["rz"]), int(meta["iteration"]),
                                 list(meta["residuals"]))
            self._saved_at = self.state.iteration

    def __call__(self, st: CGState, final: bool = False) -> None:
        if self.ck is None or st.iteration == self._saved_at:
            return
        if final or self.ck.due(self.name):
            self.ck.save(self.name, {"x": st.x, "r": st.r, "p": st.p}, rz=float(st.rz),
                         iteration=int(st.iteration), residuals=[float(v) for v in st.residuals])
            self._saved_at = st.iteration


def cg_checkpoint(checkpoints, name: str) -> CGCheckpoint | None:
    """A :class:`CGCheckpoint` for ``name``, or None without a checkpoint folder."""
    return None if checkpoints is None else CGCheckpoint(checkpoints, name)



def sphere_mask(L: int, radius_px: float, edge_px: float = 0.0) -> np.ndarray:
    """``L³`` mask: 1 within ``radius_px`` of the centre ``L//2``, a raised-cosine fall-off to 0 over
    ``edge_px`` beyond it (a hard boolean-valued mask when ``edge_px = 0``)."""
    g = np.arange(L) - L // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    if edge_px <= 0:
        return (r <= radius_px).astype(np.float64)
    t = np.clip((r - radius_px) / edge_px, 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * t))


def particle_radius_px(x1: np.ndarray, x2: np.ndarray, smooth_px: float = 1.0) -> float | None:
    """Radius (pixels, around the box centre ``L//2``) of the particle's ball, from two independent
    estimates ``x1``, ``x2`` of the volume (half-set maps).

    Their noises are independent, so per spherical shell ``r`` the mean of ``x₁x₂`` estimates the
    signal power ``S(r)`` and the mean of ``((x₁ − x₂)/2)²`` the noise variance ``N(r)`` of their
    average. A support mask removes the noise and keeps the signal of the shells it covers, so it
    should keep exactly the shells where ``S(r) > N(r)``: the radius is the outermost such shell (both
    maps smoothed by a Gaussian of ``smooth_px`` first, which compares the powers at the scale of the
    particle's shape rather than of its finest detail), at least ``L/8``. None when the signal
    exceeds the noise up to the inscribed sphere ``L/2 - 1`` (no support to impose, e.g. noiseless
    data). Cost: two 3-D Gaussian filters and two ``bincount``.
    """
    from scipy.ndimage import gaussian_filter

    L = x1.shape[0]
    a = [gaussian_filter(np.asarray(v, np.float64), smooth_px) if smooth_px > 0 else np.asarray(v, np.float64)
         for v in (x1, x2)]
    g = np.arange(L) - L // 2
    r = np.rint(np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)).astype(np.int64)
    rmax = L // 2 - 1
    inside = r <= rmax
    S = np.bincount(r[inside], (a[0] * a[1])[inside], rmax + 1)
    N = np.bincount(r[inside], (0.25 * (a[0] - a[1]) ** 2)[inside], rmax + 1)
    keep = np.flatnonzero(S > N)
    R = int(keep[-1]) if keep.size else rmax
    return None if R >= rmax else float(max(R, L / 8, 1.0))


def solve_mean(kernel: MeanKernel, rhs: np.ndarray, regularization=0.0, tol: float = 1e-5,
               maxiter: int = 100, x0=None, progress: bool = False, support: np.ndarray | None = None,
               checkpoint: CGCheckpoint | None = None):
    """Solve ``(K + Λ) x = rhs`` by CG. Returns ``(x, CGInfo)``.

    ``regularization``: scalar λ or Fourier multipliers (see :func:`apply_kernel`). ``support``: a
    mask ``M`` (values in [0, 1]); the solution is ``x = M u`` with ``u`` solving ``M (K + Λ) M u = M b``
    by CG — a support prior (hard for a 0/1 mask, tapered for a soft edge). ``checkpoint``: save /
    resume the CG state (:class:`CGCheckpoint`).
    """
    if support is None:
        return conjugate_gradient(lambda v: apply_kernel(kernel, v, regularization), rhs, x0=x0, tol=tol,
                                  maxiter=maxiter, progress=progress, checkpoint=checkpoint)
    m = np.asarray(support, np.float64)
    u0 = None
    if x0 is not None:  # a starting x inside the support: u = x / M where M > 0
        u0 = np.where(m > 1e-3, x0 / np.maximum(m, 1e-3), 0.0)
    u, info = conjugate_gradient(lambda v: apply_kernel(kernel, v * m, regularization) * m, rhs * m,
                                 x0=u0, tol=tol, maxiter=maxiter, progress=progress, checkpoint=checkpoint)
    return u * m, info


# ----------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------

@dataclass
class MeanResult:
    """Mean volume (and half-maps, FSC) with solver figures."""

    volume: np.ndarray
    half_maps: tuple | None = None
    fsc: object | None = None  # cryoprism.metrics FSCResult when half-maps were asked for
    iterations: int = 0
    residual: float = float("nan")
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def auto_batch_size(n: int, L: int, workers: int) -> int:
    """Particles per batch: one share per worker, at most 2²³ / L² images (~4M half-plane slice
    samples: fewer, larger NUFFTs amortise their fine-grid FFTs)."""
    return int(max(16, min(-(-n // max(workers, 1)), 2**23 // (L * L))))


def checked_source(source: ParticleSource) -> ParticleSource:
    """``source`` after checking that it has particles and poses (``InputError`` otherwise)."""
    if source.n == 0:
        raise InputError("no particles: expected at least one row with an image", source.path)
    source.rotations()  # InputError without poses
    return source


def read_batch(source: ParticleSource, idx, use_ctf: bool = True):
    """``(images, rotations, origins in pixels or None when all are 0, CTF grid or None)`` of rows
    ``idx``; the CTF grid (of the images' dtype) only with ``use_ctf`` and CTF parameters."""
    b = source.batch(idx)
    org = b.origins_A / source.pixel_size_A
    return (b.images, b.rotations, org if org.any() else None,
            b.ctf_grid(source.dtype) if use_ctf else None)


def accumulate_normal_equations(source: ParticleSource, groups=None, batch_size: int | None = None,
                                n_workers: int | None = None,
                                progress: bool = True, scheduler: str | None = None, eps: float | None = None,
                                with_norms: bool = False, use_ctf: bool = True):
    """One pass over the particles of ``source``: back-projection RHS and spatial kernel per group.

    ``groups``: ``(n,)`` integer labels ``0..G-1`` (e.g. half-sets) or None (one group). Returns
    ``(rhs (G, L, L, L) float64, K (G, 2L, 2L, 2L))``, plus ``Σ‖y_j‖²`` per group ``(G,)`` with
    ``with_norms``. ``eps``: NUFFT tolerance (default: the dtype's, see ``forward.nufft_eps``).
    ``batch_size`` None: :func:`auto_batch_size`.
    """
    n, L = source.n, source.box
    g = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64)
    G = int(g.max()) + 1 if n else 1
    workers = n_workers or default_workers()
    nt = finufft_threads(workers)
    kdtype = np.float32 if source.dtype == np.float32 else np.float64

    def job(r):
        a, b = r
        im, rot, org, ctf = read_batch(source, np.arange(a, b), use_ctf)
        rhs = np.zeros((G, L, L, L), np.float64)
        K = np.zeros((G, 2 * L, 2 * L, 2 * L), kdtype)
        y2 = np.zeros(G, np.float64)
        for q in range(G):
            sel = np.flatnonzero(g[a:b] == q)
            if sel.size == 0:
                continue
            c = None if ctf is None else ctf[sel]
            o = None if org is None else org[sel]
            rhs[q] = backproject(im[sel], rot[sel], o, c, eps=eps, nthreads=nt)
            K[q] = kernel_spatial(rot[sel], L, c, dtype=kdtype, nthreads=nt,
                                  eps=None if eps is None else max(eps, 3e-5 if kdtype == np.float32 else 0))
            y2[q] = float(np.sum(np.square(im[sel], dtype=np.float64)))
        return rhs, K, y2

    def add(acc, v):
        for x, y in zip(acc, v):
            x += y
        return acc

    if not batch_size:
        batch_size = auto_batch_size(n, L, workers)
    out = map_reduce(job, batch_ranges(n, batch_size), add, n_workers=workers, scheduler=scheduler,
                     desc="back-projection", progress=progress)
    return out if with_norms else out[:2]


def normal_equations(source: ParticleSource, groups=None, batch_size: int | None = None,
                     n_workers: int | None = None, progress: bool = True, scheduler: str | None = None,
                     eps: float | None = None, with_norms: bool = False, checkpoints=None,
                     name: str = "normal_equations", use_ctf: bool = True):
    """:func:`accumulate_normal_equations` with the kernels transformed: ``(rhs, [MeanKernel per
    group], Σ‖y‖² per group or None)``. With ``checkpoints`` (``io.checkpoint.Checkpoints``) the
    result is saved as ``name`` after the pass, and restored from there when resuming."""
    got = checkpoints.load(name) if checkpoints is not None else None
    if got is not None:
        a, _ = got
        G = a["rhs"].shape[0]
        return a["rhs"], [MeanKernel(source.box, a[f"kernel_hat_{q}"]) for q in range(G)], a.get("y2")
    out = accumulate_normal_equations(source, groups, batch_size, n_workers, progress, scheduler, eps,
                                      with_norms=with_norms, use_ctf=use_ctf)
    rhs, K = out[0], out[1]
    y2 = out[2] if with_norms else None
    kernels = [kernel_from_spatial(K[q]) for q in range(K.shape[0])]
    del K, out
    if checkpoints is not None:
        arrays = {"rhs": rhs, **{f"kernel_hat_{q}": k.kernel_hat for q, k in enumerate(kernels)}}
        if y2 is not None:
            arrays["y2"] = y2
        checkpoints.save(name, arrays)
    return rhs, kernels, y2


def source_fingerprint(source: ParticleSource, use_ctf: bool = True) -> dict:
    """Identity of a particle source for checkpoints: counts, box, pixel size, a digest of the
    pose/origin/CTF table and of three sample images (first, middle, last)."""
    from cryoprism.io.checkpoint import digest

    idx = np.unique(np.array([0, source.n // 2, source.n - 1]))
    ctf = source.batch(np.arange(source.n)).ctf if use_ctf else None
    return {"n_images": int(source.n), "box": int(source.box), "pixel_size_A": source.pixel_size_A,
            "dtype": np.dtype(source.dtype).name,
            "poses_ctf_digest": digest(source.rotations(), source.origins_A(), ctf),
            "image_sample_digest": digest(np.asarray(source.images(idx), np.float32))}


def open_checkpoints(job, source: ParticleSource, **settings):
    """The checkpoints of ``job`` (:class:`cryoprism.io.job.Job`), its fingerprint extended with
    ``source``'s identity and ``settings``; None without a job."""
    if job is None:
        return None
    job.add_inputs(**source_fingerprint(source, settings.get("use_ctf", True)), **settings)
    return job.checkpoints


def half_set_labels(n: int, table=None, seed: int = 0) -> np.ndarray:
    """Half-set labels 0/1: ``rlnRandomSubset`` (1/2) when the table has both, else a seeded split."""
    if table is not None and "rlnRandomSubset" in getattr(table, "columns", ()):
        v = np.asarray(table["rlnRandomSubset"], np.int64)
        if set(np.unique(v)) == {1, 2}:  # both halves present (a subset may hold one)
            return v - 1
    lab = np.zeros(n, np.int64)
    lab[np.random.default_rng(seed).permutation(n)[n // 2:]] = 1
    return lab


def solve_groups(source: ParticleSource, solver, *, use_ctf: bool = True, halfmaps: bool = False,
                 batch_size: int | None = None, n_workers: int | None = None,
                 scheduler: str | None = None, seed: int = 0, eps: float | None = None,
                 progress: bool = True, checkpoints=None) -> MeanResult:
    """One pass for the normal equations (per half-set if asked), then ``solver(kernel, rhs, scale,
    name)`` → ``(volume, iterations, residual)`` for each half (``name`` ``half1``, ``half2``) and for
    the full set (``full``); FSC of the halves.

    ``scale`` is the fraction of the particles in the system (1 for the full set, ~½ for a half), so
    a regularisation given for the full set can be scaled to a half. ``checkpoints``: keep the
    normal equations there (see :func:`normal_equations`).
    """
    t0 = time.perf_counter()
    src = checked_source(source)
    groups = half_set_labels(src.n, src.table, seed) if halfmaps else None
    rhs, kernels, _ = normal_equations(src, groups, batch_size, n_workers, progress, scheduler, eps,
                                       checkpoints=checkpoints, use_ctf=use_ctf)
    out: dict = {}
    halves = fsc = None
    if halfmaps:
        h = []
        for q in range(2):
            frac = float(np.mean(groups == q))
            xq, it, _ = solver(kernels[q], rhs[q], frac, f"half{q + 1}")
            h.append(np.asarray(xq).astype(src.dtype))
            out[f"half{q + 1}_iterations"] = it
        halves = tuple(h)
        full_kernel, full_rhs = kernels[0] + kernels[1], rhs[0] + rhs[1]
        from cryoprism.metrics.fsc import fsc as _fsc

        fsc = _fsc(halves[0], halves[1], src.pixel_size_A)
    else:
        full_kernel, full_rhs = kernels[0], rhs[0]
    x, it, res = solver(full_kernel, full_rhs, 1.0, "full")
    return MeanResult(np.asarray(x).astype(src.dtype), halves, fsc, it, res, time.perf_counter() - t0, out)


def reconstruct_mean(source: ParticleSource, *, use_ctf: bool = True, regularization=0.0, tol: float = 1e-5,
                     maxiter: int = 100,
                     halfmaps: bool = False, batch_size: int | None = None,
                     n_workers: int | None = None, scheduler: str | None = None, seed: int = 0,
                     eps: float | None = None, auto_iterations: int = 15,
                     mask_radius_px: float | str | None = "auto", mask_edge_px: float = 0.0,
                     progress: bool = True, job=None) -> MeanResult:
    """Least-squares mean volume from particles with poses (and CTF), by CG on the normal equations.

    ``source``: the particles (``io.ParticleSource``: poses, origins, CTF from its table; arrays go
    through ``ParticleStack.from_arrays``); ``use_ctf=False`` ignores the CTF. ``regularization``: Tikhonov ``λ`` added
    to the normal operator for the full set (same units as ``Σ P_jᵀP_j``, i.e. grows with n; half-sets
    use ``λ`` times their fraction). ``halfmaps``: also reconstruct two half-sets
    (``rlnRandomSubset`` or a seeded split) and their FSC (``cryoprism.metrics.fsc``).

    ``regularization="auto"``: a Wiener (Gaussian-prior) Tikhonov term estimated from the data —
    the two half-sets are solved without regularisation for ``auto_iterations`` CG steps, the noise
    variance per pixel comes from their residuals ``Σ‖y_j − P_j x‖²``, the signal power spectrum from
    the half-maps' cross power (:func:`wiener_regularization`); then the full set (and the halves,
    with ``halfmaps``) is solved with ``Λ = F⁻¹ diag(σ² L³ / S(|k|)) F``. Same single pass over the
    particles. ``eps``: NUFFT tolerance of the pass (default 1e-6 for float32 data).
    ``mask_radius_px``: restrict the solution to a sphere of this radius (pixels) around the box
    centre — a support prior (e.g. ``L/2 - 1``, the inscribed sphere), with a raised-cosine edge of
    ``mask_edge_px`` beyond it; None: the whole box. ``"auto"`` (default): the radius is chosen from
    the data, as the outermost shell where the signal power exceeds the noise power of the two
    half-set maps solved without the mask for ``auto_iterations`` CG steps (:func:`particle_radius_px`)
    — the role of RELION's particle diameter; the chosen radius is in ``info["mask_radius_px"]``.

    ``job`` (:class:`cryoprism.io.job.Job`): keep the normal equations (after the pass over the
    particles) and the state of every CG solve in its checkpoints (CG states as often as the job's
    ``every_s`` allows, default: as often as costs ≤ 2 % of the time, and at the end of each solve).
    With ``job.resume`` the run continues from them — the result equals an uninterrupted run's; a
    checkpoint written from other particles, poses, CTF or settings is refused (``InputError``).
    ``maxiter`` is not part of the fingerprint: resuming with a larger one continues the solves.
    """
    if isinstance(regularization, str) and regularization != "auto":
        raise ValueError("regularization must be a number or 'auto'")
    if isinstance(mask_radius_px, str) and mask_radius_px != "auto":
        raise ValueError("mask_radius_px must be a number, 'auto' or None")
    with_pilots = regularization == "auto" or mask_radius_px == "auto"
    ck = None
    if job is not None:
        src = checked_source(source)
        groups = (half_set_labels(src.n, src.table, seed)
                  if halfmaps or with_pilots else None)
        ck = open_checkpoints(job, src, method="cg", use_ctf=use_ctf,
                              regularization=regularization if isinstance(regularization, str)
                              else float(regularization), tol=float(tol), halfmaps=bool(halfmaps),
                              groups_digest=None if groups is None else _digest(groups),
                              eps=eps, auto_iterations=int(auto_iterations) if with_pilots else None,
                              mask_radius_px=mask_radius_px, mask_edge_px=float(mask_edge_px))
    if with_pilots:
        return _reconstruct_auto(source, use_ctf=use_ctf, tol=tol, maxiter=maxiter,
                                 regularization=regularization,
                                 halfmaps=halfmaps, batch_size=batch_size, n_workers=n_workers,
                                 scheduler=scheduler, seed=seed, eps=eps, auto_iterations=auto_iterations,
                                 mask_radius_px=mask_radius_px, mask_edge_px=mask_edge_px, progress=progress,
                                 checkpoints=ck)

    def solver(kernel, rhs, frac, name="full"):
        sup = None if mask_radius_px is None else sphere_mask(kernel.L, mask_radius_px, mask_edge_px)
        x, info = solve_mean(kernel, rhs, regularization * frac, tol, maxiter, progress=progress, support=sup,
                             checkpoint=cg_checkpoint(ck, name))
        return x, info.iterations, info.residuals[-1]

    return solve_groups(source, solver, use_ctf=use_ctf, halfmaps=halfmaps, batch_size=batch_size,
                        n_workers=n_workers, scheduler=scheduler, seed=seed, eps=eps, progress=progress,
                        checkpoints=ck)


def _digest(*a) -> str:
    from cryoprism.io.checkpoint import digest

    return digest(*a)


def _reconstruct_auto(source: ParticleSource, *, use_ctf, tol, maxiter, halfmaps, batch_size,
                      n_workers, scheduler, seed, eps, auto_iterations, mask_radius_px,
                      mask_edge_px, progress, checkpoints=None, regularization="auto") -> MeanResult:
    """Half-set pilots first (``auto_iterations`` CG steps each), then what they decide: the Wiener
    regularisation (``regularization="auto"``) and / or the support radius (``mask_radius_px="auto"``),
    then the halves (with ``halfmaps``) and the full set from the pilots."""
    t0 = time.perf_counter()
    ck = checkpoints
    src = checked_source(source)
    L = src.box
    groups = half_set_labels(src.n, src.table, seed)
    frac = [float(np.mean(groups == q)) for q in range(2)]
    wiener = regularization == "auto"
    rhs, kernels, y2 = normal_equations(src, groups, batch_size, n_workers, progress, scheduler, eps,
                                        with_norms=True, checkpoints=ck, use_ctf=use_ctf)
    auto_mask = mask_radius_px == "auto"
    sup = None if mask_radius_px is None or auto_mask else sphere_mask(L, mask_radius_px, mask_edge_px)
    # 1. early-stopped half solutions (unregularised for the Wiener estimate)
    pilot = []
    rss = 0.0
    for q in range(2):
        x, _ = solve_mean(kernels[q], rhs[q], 0.0 if wiener else regularization * frac[q], tol, auto_iterations,
                          support=sup, checkpoint=cg_checkpoint(ck, f"pilot{q + 1}"))
        pilot.append(x)
        if wiener:
            rss += y2[q] - 2 * _dot(x, rhs[q]) + _dot(x, apply_kernel(kernels[q], x))
    out: dict = {}
    if auto_mask:  # 2. the particle's ball from the pilots' signal power
        radius = particle_radius_px(pilot[0], pilot[1])
        if radius is not None:
            sup = sphere_mask(L, radius, mask_edge_px)
            pilot = [p * sup for p in pilot]
        out["mask_radius_px"] = radius
    if wiener:
        # residual per pixel (the dropped -L/2 frequencies of even L hold noise only: counted too)
        sigma2 = max(float(rss) / (src.n * L * L), 1e-30)
        lam = wiener_regularization(pilot[0], pilot[1], sigma2)
        lam_half = [lam, lam]
        out.update({"regularization": "auto", "noise_var_per_pixel": sigma2})
    else:
        lam = float(regularization)
        lam_half = [lam * f for f in frac]
    halves = fsc = None
    if halfmaps:
        h = []
        for q in range(2):
            xq, iq = solve_mean(kernels[q], rhs[q], lam_half[q], tol, maxiter, x0=pilot[q], progress=progress,
                                support=sup, checkpoint=cg_checkpoint(ck, f"half{q + 1}"))
            h.append(xq.astype(src.dtype))
            out[f"half{q + 1}_iterations"] = iq.iterations
        halves = tuple(h)
        from cryoprism.metrics.fsc import fsc as _fsc

        fsc = _fsc(halves[0], halves[1], src.pixel_size_A)
    x, info = solve_mean(kernels[0] + kernels[1], rhs[0] + rhs[1], lam, tol, maxiter,
                         x0=0.5 * (pilot[0] + pilot[1]), progress=progress, support=sup,
                         checkpoint=cg_checkpoint(ck, "full"))
    out["residuals"] = info.residuals
    return MeanResult(x.astype(src.dtype), halves, fsc, info.iterations, info.residuals[-1],
                      time.perf_counter() - t0, out)
