"""Mean and covariance of a heterogeneous particle set (Andén, Katsevich & Singer 2015).

Two estimators of the covariance ``Σ`` solving Andén, Katsevich & Singer's (2015) normal equations ``L_n(Σ) = B_n``

    L_n(Σ) = (1/n) Σ_s A_s Σ A_s,     A_s = M_sᵀ M_s,
    B_n    = (1/n) Σ_s M_sᵀ z_s z_sᵀ M_s − σ² Ā,      z_s = y_s − M_s μ,  Ā = (1/n) Σ_s A_s,

* :func:`covariance_full` — the dense ``p × p`` solution by conjugate gradient with early stopping,
  ``L_n`` applied through its 6-D Toeplitz kernel on a ``(2N)⁶`` grid (two 6-D real FFTs per
  iteration, independent of ``n``). Memory ``~ (2N)⁶`` floats: for ``N ≤ 12`` or so.
* :func:`covariance_lowrank` — matrix-free: a block-Krylov range finder on ``Ā⁻¹ B_n Ā⁻¹`` picks an
  ``m``-dimensional volume subspace ``V``; the same normal equations restricted to ``Σ = V S Vᵀ``
  (a Galerkin projection) are solved by preconditioned CG on ``m × m`` matrices. Per pass over the
  particles it costs ``m`` projections and back-projections per image; nothing ``p × p`` is formed.

Derivation and cost: docs/heterogeneity.md.

Every estimator takes an optional ``checkpoints`` folder (:class:`cryoprism.io.checkpoint.Checkpoints`):
the mean's normal equations and CG state, the dense 6-D kernel (when it is at most
:data:`CACHE_MAX_BYTES`), the range finder's blocks, the Galerkin statistics (same limit) and the
covariance CG state are saved there and, when resuming, taken from there — the result equals an
uninterrupted run's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft

from cryoprism.heterogeneity.data import (
    HetData,
    adjoint_of,
    as_particle_source,
    band_ctf2_and_spectra,
    band_points,
    fourier_batch,
    slices_of,
)
from cryoprism.parallel import map_reduce
from cryoprism.parallel.config import fft_workers, finufft_threads, progress_bar
from cryoprism.parallel.core import default_workers
from cryoprism.reconstruct import conjugate_gradient
from cryoprism.reconstruct.mean import cg_checkpoint, normal_equations

#: largest precomputed array set (6-D kernel, Galerkin statistics) kept in a checkpoint folder
CACHE_MAX_BYTES = 1e9

# ------------------------------------------------------------------------------------------------
# mean and the mean normal operator Ā
# ------------------------------------------------------------------------------------------------

@dataclass
class MeanOperator:
    """``Ā = (1/n) Σ_s M_sᵀ M_s`` as a Toeplitz kernel on the ``(2N)³`` grid, and the mean ``μ``."""

    N: int
    kernel_hat: np.ndarray  # rfftn layout (2N, 2N, N+1), real, already divided by n
    mean: np.ndarray  # (N, N, N)
    regularization: float  # λ used in (Ā + λ I)⁻¹
    info: dict = field(default_factory=dict)

    def apply(self, x: np.ndarray, reg: float = 0.0) -> np.ndarray:
        """``(Ā + reg·I) x`` for one volume or a stack ``(m, N, N, N)``."""
        N = self.N
        X = sfft.rfftn(x, s=(2 * N,) * 3, axes=(-3, -2, -1), workers=fft_workers())
        X *= self.kernel_hat
        y = sfft.irfftn(X, s=(2 * N,) * 3, axes=(-3, -2, -1), workers=fft_workers())[..., :N, :N, :N]
        return y + reg * x if reg else y

    def solve(self, rhs: np.ndarray, maxiter: int = 40, tol: float = 1e-4) -> np.ndarray:
        """``(Ā + λ I)⁻¹ rhs`` column by column (CG on a stack, one step size per volume)."""
        single = rhs.ndim == 3
        b = np.asarray(rhs, np.float64).reshape((-1,) + rhs.shape[-3:])
        x = np.zeros_like(b)
        r = b.copy()
        p = r.copy()
        rr = _dots(r, r)
        bn = np.sqrt(rr) + 1e-300
        for _ in range(maxiter):
            if np.all(np.sqrt(rr) <= tol * bn):
                break
            Ap = self.apply(p, self.regularization)
            pAp = _dots(p, Ap)
            alpha = np.where(pAp > 0, rr / np.where(pAp > 0, pAp, 1), 0.0)
            x += alpha[:, None, None, None] * p
            r -= alpha[:, None, None, None] * Ap
            rr_new = _dots(r, r)
            p = r + (rr_new / np.where(rr > 0, rr, 1))[:, None, None, None] * p
            rr = rr_new
        return x[0] if single else x


def _dots(a, b):
    return np.sum(a.reshape(a.shape[0], -1) * b.reshape(b.shape[0], -1), axis=1)


def estimate_mean(d: HetData, *, regularization: float = 1e-3, maxiter: int = 40, tol: float = 1e-5,
                  n_workers: int | None = None, progress: bool = True, checkpoints=None) -> MeanOperator:
    """Least-squares mean ``(Ā + λ I) μ = (1/n) Σ M_sᵀ y_s`` (Andén, Katsevich & Singer 2015, eq. 13) on the
    ``N³`` grid.

    ``regularization``: λ relative to the largest eigenvalue of ``Ā`` (the kernel's peak). The
    right-hand side and kernel come from :func:`cryoprism.reconstruct.accumulate_normal_equations`.
    """
    rhs, kernels, _ = normal_equations(as_particle_source(d), None, n_workers=n_workers, progress=progress,
                                       checkpoints=checkpoints, name="mean_normal_equations")
    kh = kernels[0].kernel_hat / d.n
    lam = regularization * float(np.max(np.abs(kh)))
    op = MeanOperator(d.N, kh, np.zeros((d.N,) * 3), lam)
    x, info = conjugate_gradient(lambda v: op.apply(v, lam), rhs[0] / d.n, tol=tol, maxiter=maxiter,
                                 progress=progress, checkpoint=cg_checkpoint(checkpoints, "mean_cg"))
    op.mean = x
    op.info = {"mean_cg_iterations": info.iterations, "mean_cg_residual": info.residuals[-1]}
    return op


# ------------------------------------------------------------------------------------------------
# matrix-free pieces of B_n
# ------------------------------------------------------------------------------------------------

def apply_data_term(d: HetData, W: np.ndarray, n_workers: int | None = None,
                    progress: bool = False) -> np.ndarray:
    """``(1/n) Σ_s M_sᵀ z_s (z_sᵀ M_s W_j)`` for volumes ``W (m, N, N, N)``: the data part of ``B_n W``."""
    workers = n_workers or default_workers()
    nt = finufft_threads(workers)
    m, N = W.shape[0], d.N

    def job(r):
        a, b = r
        pts, _, Y = fourier_batch(d, a, b)
        P = slices_of(W, pts, nt).reshape(m, b - a, -1)
        c = np.einsum("ibk,bk->ib", P.conj(), Y).real / N ** 2  # ⟨M_s W_i, z_s⟩
        return adjoint_of((c[:, :, None] * Y[None]).reshape(m, -1) / N ** 2, pts, N, nt)

    out = map_reduce(job, d.batches(), n_workers=workers, desc="B·W", progress=progress)
    return out / d.n


def apply_B(d: HetData, A: MeanOperator, W: np.ndarray, n_workers=None, progress=False) -> np.ndarray:
    """``B_n W`` (matrix-free): data term minus ``σ² Ā W``."""
    return apply_data_term(d, W, n_workers, progress) - d.noise_var * A.apply(W)


def _orth(X: np.ndarray) -> np.ndarray:
    """Orthonormal rows spanning the volumes ``X (m, N, N, N)`` (drops dependent directions)."""
    shp = X.shape[1:]
    M = X.reshape(X.shape[0], -1).T
    Q, R = np.linalg.qr(M)
    keep = np.abs(np.diag(R)) > 1e-10 * max(np.abs(np.diag(R)).max(), 1e-300)
    return Q[:, keep].T.reshape((-1,) + shp)


def support_ball(N: int, support_radius: float | None) -> np.ndarray | None:
    """Indicator of the ball of radius ``support_radius · N/2`` voxels about ``N//2`` (None: no support)."""
    from cryoprism.image.masks import spherical_mask

    if not support_radius:
        return None
    return spherical_mask(N, 0.5 * support_radius * N, dtype=np.float64)


def range_basis(d: HetData, A: MeanOperator, block: int = 8, steps: int = 3, seed: int = 0,
                n_workers: int | None = None, progress: bool = True, checkpoints=None,
                support_radius: float | None = 1.0) -> np.ndarray:
    """Block-Krylov basis of ``T = P (Ā+λ)⁻¹ D_n (Ā+λ)⁻¹ P``: ``[TΩ, T²Ω, …]`` orthonormalised.

    ``D_n = (1/n) Σ_s M_sᵀ z_s z_sᵀ M_s`` is the data part of ``B_n``; ``λ`` = ``A.regularization``.
    ``P`` restricts to the particle's support, the ball of radius ``support_radius · N/2`` voxels
    (1.0: the ball inscribed in the box, as a Fourier–Bessel basis would; None or 0: the whole cube).
    ``checkpoints``: the blocks found so far are saved after every step (``range_basis``).

    Returns ``(block·steps, N, N, N)`` orthonormal volumes (fewer if dependent).
    """
    ball = support_ball(d.N, support_radius)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((block,) + (d.N,) * 3)
    if ball is not None:
        X = X * ball
    blocks = []
    got = checkpoints.load("range_basis") if checkpoints is not None else None
    if got is not None:
        blocks = [got[0][f"block_{i}"] for i in range(int(got[1]["steps_done"]))]
        X = blocks[-1].reshape((-1,) + (d.N,) * 3)
    for _ in progress_bar(range(len(blocks), steps), desc="range finder", progress=progress, leave=False):
        # the noise term −σ²Ā⁻¹ of B_n is left out here: it only shifts the spectrum, and with a
        # regularised inverse it would favour poorly measured directions (docs/heterogeneity.md)
        Y = A.solve(apply_data_term(d, A.solve(X), n_workers))
        if ball is not None:
            Y = Y * ball
        Y = Y.reshape(Y.shape[0], -1)
        for Q in blocks:  # block Gram-Schmidt (twice for stability)
            for _ in range(2):
                Y = Y - (Y @ Q.T) @ Q
        Qb = _orth(Y.reshape((-1,) + (d.N,) * 3)).reshape(-1, d.N ** 3)
        blocks.append(Qb)
        X = Qb.reshape((-1,) + (d.N,) * 3)
        if checkpoints is not None:
            checkpoints.save("range_basis", {f"block_{i}": q for i, q in enumerate(blocks)},
                             steps_done=len(blocks))
    V = np.concatenate(blocks)
    return _orth(V.reshape((-1,) + (d.N,) * 3))


# ------------------------------------------------------------------------------------------------
# Galerkin normal equations in a subspace
# ------------------------------------------------------------------------------------------------

@dataclass
class SubspaceSystem:
    """Normal equations restricted to ``Σ = V S Vᵀ``: per-particle ``G_s``, ``c_s`` and the noise."""

    G: np.ndarray  # (n, m, m)
    c: np.ndarray  # (n, m)
    noise_var: float

    def operator(self, w: np.ndarray | None = None):
        G = self.G
        n, m, _ = G.shape
        w = np.full(n, 1.0 / n) if w is None else np.asarray(w, np.float64) / np.sum(w)
        Gw = G * w[:, None, None]
        Gt = G.reshape(n * m, m)

        def apply(S):
            GS = np.matmul(Gw, S)  # (n, m, m)
            return GS.transpose(1, 0, 2).reshape(m, n * m) @ Gt

        return apply

    def rhs(self, w: np.ndarray | None = None) -> np.ndarray:
        n = self.G.shape[0]
        w = np.full(n, 1.0 / n) if w is None else np.asarray(w, np.float64) / np.sum(w)
        C = (self.c * w[:, None]).T @ self.c
        return C - self.noise_var * np.tensordot(w, self.G, axes=1)

    def solve(self, maxiter: int = 10, tol: float = 1e-8, w=None, precondition: bool = True,
              progress: bool = False, checkpoint=None):
        """``S`` from PCG (preconditioner ``Ḡ⁻¹ · Ḡ⁻¹``); returns ``(S, CGInfo)``. ``checkpoint``: a
        :class:`cryoprism.reconstruct.CGCheckpoint` (save / resume the PCG state)."""
        n = self.G.shape[0]
        ww = np.full(n, 1.0 / n) if w is None else np.asarray(w, np.float64) / np.sum(w)
        Gbar = np.tensordot(ww, self.G, axes=1)
        ev, Q = np.linalg.eigh(Gbar)
        ev = np.maximum(ev, 1e-6 * ev.max())
        Ginv = (Q / ev) @ Q.T
        pre = (lambda R: Ginv @ R @ Ginv) if precondition else None
        S, info = conjugate_gradient(self.operator(ww), self.rhs(ww), tol=tol, maxiter=maxiter,
                                     precond=pre, progress=progress, checkpoint=checkpoint)
        return 0.5 * (S + S.T), info


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------

@dataclass
class CovarianceResult:
    """Eigen-decomposition of the covariance estimate (eigenvalues descending)."""

    eigenvalues: np.ndarray  # (k,)
    eigenvolumes: np.ndarray  # (k, N, N, N) orthonormal
    method: str
    iterations: int
    residuals: list
    info: dict = field(default_factory=dict)


def cached_subspace_statistics(d: HetData, basis: np.ndarray, n_workers=None, progress: bool = True,
                               desc: str = "projections", checkpoints=None, name: str = "subspace_statistics"):
    """:func:`cryoprism.heterogeneity.data.subspace_statistics`, kept in ``checkpoints`` as ``name``
    when ``G`` and ``c`` together are at most :data:`CACHE_MAX_BYTES`."""
    from cryoprism.heterogeneity.data import subspace_statistics

    got = checkpoints.load(name) if checkpoints is not None else None
    if got is not None:
        return got[0]["G"], got[0]["c"]
    G, c = subspace_statistics(d, basis, n_workers, progress, desc=desc)
    if checkpoints is not None and G.nbytes + c.nbytes <= CACHE_MAX_BYTES:
        checkpoints.save(name, {"G": G, "c": c})
    return G, c


def covariance_lowrank(d: HetData, A: MeanOperator, *, block: int = 8, steps: int = 3,
                       maxiter: int = 10, range_regularization: float = 0.05, seed: int = 0,
                       n_workers: int | None = None, support_radius: float | None = 1.0,
                       progress: bool = True, checkpoints=None) -> CovarianceResult:
    """Matrix-free covariance: Krylov subspace of ``Ā⁻¹ B_n Ā⁻¹`` + Galerkin normal equations + PCG.

    ``support_radius``: the eigenvolumes are sought inside the ball of this radius (a fraction of half
    the box; None: the whole cube), see :func:`range_basis`.
    ``checkpoints``: range-finder blocks, Galerkin statistics and the PCG state (see the module
    docstring)."""
    Ar = MeanOperator(A.N, A.kernel_hat, A.mean, range_regularization * float(np.abs(A.kernel_hat).max()))
    V = range_basis(d, Ar, block, steps, seed, n_workers, progress, checkpoints=checkpoints,
                    support_radius=support_radius)
    G, c = cached_subspace_statistics(d, V, n_workers, progress, desc="Galerkin projections",
                                      checkpoints=checkpoints)
    sysm = SubspaceSystem(G, c, d.noise_var)
    S, info = sysm.solve(maxiter=maxiter, progress=progress,
                         checkpoint=cg_checkpoint(checkpoints, "covariance_pcg"))
    lam, Q = np.linalg.eigh(S)
    order = np.argsort(lam)[::-1]
    lam, Q = lam[order], Q[:, order]
    U = np.tensordot(Q.T, V, axes=1)
    return CovarianceResult(lam, U, "lowrank", info.iterations, info.residuals,
                            {"subspace_dim": int(V.shape[0]), "system": sysm, "basis": V, "Q": Q})


# ------------------------------------------------------------------------------------------------
# the dense estimator with the 6-D Toeplitz kernel
# ------------------------------------------------------------------------------------------------

def _exp_factors(d: HetData, a: int, b: int, coords: np.ndarray):
    """``exp(+i ω_k·r)`` factors along z, y, x: three ``(b, q, len(coords))`` arrays (band points)."""
    pts = band_points(d, a, b)
    return [np.exp(1j * p.reshape(b - a, -1)[:, :, None] * coords[None, None, :]) for p in pts]


def per_image_kernels(d: HetData, a: int, b: int) -> np.ndarray:
    """Toeplitz kernels ``k_s(Δ)`` of ``A_s = M_sᵀM_s`` on ``Δ ∈ [−N, N−1]³``: ``(b − a, (2N)³)``.

    ``k_s(Δ) = N⁻² Σ_k |C_s(k)|² exp(+2πi ω_sk·Δ / N)`` over the band frequencies.
    """
    N = d.N
    w, _ = band_ctf2_and_spectra(d, a, b, images=np.zeros((b - a, N, N)))
    q = w.shape[1]
    w = w / N ** 2
    Ez, Ey, Ex = _exp_factors(d, a, b, np.arange(-N, N, dtype=np.float64))
    M = 2 * N
    YX = (Ey[:, :, :, None] * Ex[:, :, None, :]).reshape(b - a, q, M * M)
    out = np.matmul((w[:, :, None] * Ez).transpose(0, 2, 1), YX).real
    return out.reshape(b - a, M ** 3)


def per_image_backprojections(d: HetData, a: int, b: int) -> np.ndarray:
    """``g_s = M_sᵀ z_s`` for each particle ``a:b`` separately: ``(b − a, N³)``."""
    N = d.N
    _, F = band_ctf2_and_spectra(d, a, b)
    F = F / (N * N)
    q = F.shape[1]
    Ez, Ey, Ex = _exp_factors(d, a, b, np.arange(N, dtype=np.float64) - N // 2)
    YX = (Ey[:, :, :, None] * Ex[:, :, None, :]).reshape(b - a, q, N * N)
    out = np.matmul((F[:, :, None] * Ez).transpose(0, 2, 1), YX).real
    return out.reshape(b - a, N ** 3)


def full_memory_bytes(N: int) -> int:
    """Peak memory of the dense estimator (kernel, its transform, one padded 6-D FFT), in bytes."""
    M = 2 * N
    return int(M ** 6 * 4 + M ** 5 * (N + 1) * 4 + 2 * M ** 5 * (M // 2 + 1) * 16)


@dataclass
class CovarianceKernel6:
    """Fourier transform (rfftn layout, real) of the 6-D Toeplitz kernel of ``L_n``."""

    N: int
    kernel_hat: np.ndarray  # (2N,)*5 + (N+1,)
    Abar: np.ndarray  # (p, p) dense Ā
    B: np.ndarray  # (p, p)

    def apply(self, S: np.ndarray) -> np.ndarray:
        N = self.N
        X = sfft.rfftn(S.reshape((N,) * 6), s=(2 * N,) * 6, workers=fft_workers())
        X *= self.kernel_hat
        y = sfft.irfftn(X, s=(2 * N,) * 6, workers=fft_workers())[(slice(0, N),) * 6]
        return y.reshape(N ** 3, N ** 3)

    def precondition(self, R: np.ndarray, eps: float) -> np.ndarray:
        N = self.N
        X = sfft.rfftn(R.reshape((N,) * 6), s=(2 * N,) * 6, workers=fft_workers())
        X /= np.abs(self.kernel_hat) + eps
        y = sfft.irfftn(X, s=(2 * N,) * 6, workers=fft_workers())[(slice(0, N),) * 6]
        y = y.reshape(N ** 3, N ** 3)
        return 0.5 * (y + y.T)


def build_kernel6(d: HetData, *, max_bytes: float = 2e9, n_workers: int | None = None,
                  progress: bool = True) -> CovarianceKernel6:
    """The 6-D kernel ``K(Δ, Δ') = (1/n) Σ_s k_s(Δ) k_s(Δ')``, dense ``Ā`` and ``B_n`` (one pass)."""
    N = d.N
    if full_memory_bytes(N) > max_bytes:
        raise MemoryError(f"the dense covariance at N_res={N} needs ~{full_memory_bytes(N) / 1e9:.1f} GB "
                          f"(limit {max_bytes / 1e9:.1f} GB); use the low-rank method")
    workers = n_workers or default_workers()
    M3 = (2 * N) ** 3
    p = N ** 3

    def job(r):
        a, b = r
        k = per_image_kernels(d, a, b).astype(np.float32)
        g = per_image_backprojections(d, a, b)
        return [k.T @ k, g.T @ g, k.sum(0, dtype=np.float64)]

    def add(acc, v):
        for x, y in zip(acc, v):
            x += y
        return acc

    K, GG, ksum = map_reduce(job, d.batches(256), add, n_workers=workers, desc="6-D kernel",
                             progress=progress)
    K /= d.n
    kh = sfft.rfftn(sfft.ifftshift(K.reshape((2 * N,) * 6)), workers=fft_workers()).real.astype(np.float32)
    del K
    kbar = (ksum / d.n).reshape((2 * N,) * 3)
    r = np.indices((N, N, N)).reshape(3, -1)
    diff = r[:, :, None] - r[:, None, :] + N
    Abar = kbar[diff[0], diff[1], diff[2]]
    B = GG / d.n - d.noise_var * Abar
    assert Abar.shape == (p, p) and M3 == kbar.size
    return CovarianceKernel6(N, kh, Abar, 0.5 * (B + B.T))


def kernel6_bytes(N: int) -> int:
    """Bytes of a :class:`CovarianceKernel6` as saved (float32 transform, float64 ``Ā`` and ``B``)."""
    return int((2 * N) ** 5 * (N + 1) * 4 + 2 * N ** 6 * 8)


def cached_kernel6(d: HetData, *, max_bytes: float = 2e9, n_workers: int | None = None,
                   progress: bool = True, checkpoints=None) -> CovarianceKernel6:
    """:func:`build_kernel6`, kept in ``checkpoints`` (``kernel6``) when at most
    :data:`CACHE_MAX_BYTES` (``N_res ≤ 13``; it would be 3.7 GB at ``N_res = 17``)."""
    got = checkpoints.load("kernel6") if checkpoints is not None else None
    if got is not None:
        a = got[0]
        return CovarianceKernel6(d.N, a["kernel_hat"], a["Abar"], a["B"])
    K6 = build_kernel6(d, max_bytes=max_bytes, n_workers=n_workers, progress=progress)
    if checkpoints is not None and kernel6_bytes(d.N) <= CACHE_MAX_BYTES:
        checkpoints.save("kernel6", {"kernel_hat": K6.kernel_hat, "Abar": K6.Abar, "B": K6.B})
    return K6


def covariance_full(d: HetData, *, maxiter: int = 10, precondition: bool = False, tol: float = 1e-6,
                    max_bytes: float = 2e9, n_workers: int | None = None, progress: bool = True,
                    kernel: CovarianceKernel6 | None = None, checkpoints=None,
                    support_radius: float | None = 1.0) -> CovarianceResult:
    """Dense ``Σ_n`` by (P)CG on ``L_n(Σ) = B_n`` from zero, stopped after ``maxiter`` iterations.

    ``support_radius``: ``Σ`` is sought as ``P Σ P`` with ``P`` the ball of :func:`support_ball`
    (the normal equations are restricted to it: ``P L_n(P Σ P) P = P B_n P``); None: the whole cube.
    ``checkpoints``: the 6-D kernel (see :func:`cached_kernel6`) and the CG state."""
    K6 = kernel or cached_kernel6(d, max_bytes=max_bytes, n_workers=n_workers, progress=progress,
                                  checkpoints=checkpoints)
    eps = 1e-2 * float(np.abs(K6.kernel_hat).max())
    ball = support_ball(d.N, support_radius)
    m = np.ones(d.N ** 3) if ball is None else ball.ravel()
    P = np.outer(m, m)  # restriction of both index sets of Σ (all ones without a support)
    pre = (lambda R: K6.precondition(R * P, eps) * P) if precondition else None
    S, info = conjugate_gradient(lambda S: K6.apply(S * P) * P, K6.B * P, tol=tol, maxiter=maxiter, precond=pre,
                                 progress=progress, checkpoint=cg_checkpoint(checkpoints, "covariance_cg"))
    S = 0.5 * (S + S.T)
    lam, U = np.linalg.eigh(S)
    order = np.argsort(lam)[::-1]
    lam, U = lam[order], U[:, order]
    N = d.N
    return CovarianceResult(lam, U.T.reshape((-1, N, N, N)), "cg", info.iterations, info.residuals,
                            {"sigma": S, "kernel": K6})
