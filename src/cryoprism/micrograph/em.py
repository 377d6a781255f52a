"""Approximate, incremental EM over micrograph patches (Kreymer, Singer & Bendory 2025).

Patch model (eqs. 17–19). The micrograph is cut into non-overlapping ``L × L`` patches. A patch
holds nothing, or part of one particle image: the (filtered) particle image lives in a box of side
``Lb = L + 2·margin`` (``margin = 0`` without CTF/whitening) whose top-left corner sits at offset
``t ∈ [−(Lb−1), L−1]²`` from the patch corner, so there are ``(L + Lb − 1)²`` shifts (``(2L−1)²``
for the paper's model) plus the empty state. Prior: ``ρ_empty`` for an empty patch, the rest spread
uniformly over the shifts; rotations uniform on a discrete grid.

E-step. For rotation ``ω`` with particle image ``I_ω`` the log-likelihood of shift ``t`` is
``(2⟨X, I_ω(·−t)⟩ − ‖I_ω(·−t)‖²_patch) / (2σ²)`` (dropping ``‖X‖²``). On a circular grid of side
``Nf ≥ L + Lb − 1`` both terms are circular correlations, computed for every shift at once by FFT:
``⟨X, I(·−t)⟩ = F⁻¹[X̂ · conj(Î)](t)`` and ``‖·‖² = F⁻¹[1̂_patch · conj(Î²)](t)``. With
``Nf = L + Lb − 1`` every entry of the circular map is exactly one admissible shift. Posteriors are
normalised per patch by log-sum-exp over (rotations × shifts) and the empty state.

M-step. Write ``I_ω = A_ω x`` (``A_ω`` = filtered basis projections rotated by the real Wigner-D
matrices). The weighted least squares ``Σ_p Σ_{ω,t} γ ‖X_p − C_t A_ω x‖²`` has normal equations
``(Σ_ω A_ωᵀ diag(W_ω) A_ω) x = Σ_ω A_ωᵀ b_ω`` (eqs. 28–30) where
``W_ω[v] = Σ_t Γ_ω[t] 1_patch[v + t]`` with ``Γ_ω = Σ_p γ_{p,ω}`` and
``b_ω[v] = Σ_p Σ_t γ_{p,ω,t} X_p[v + t]`` — again correlations, done by FFT. Solved by Cholesky.
``ρ_empty`` ← mean posterior of the empty state (eqs. 31–32).

Incremental EM (Neal & Hinton; Kreymer, Singer & Bendory 2025, §3.3): patches are split into
``1/batch_fraction`` random blocks; each iteration runs the E-step on one block, replaces that block's
sufficient statistics and solves the M-step with the sum over all blocks seen so far. Frequency marching
(§3.4): stages of increasing (ℓ_max, band limit), each initialised by re-expanding the previous estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import scipy.fft as sfft
from scipy.linalg import cho_factor, cho_solve

from cryoprism.geometry.grids import so3_grid
from cryoprism.micrograph.patches import ModelFilter, filter_images
from cryoprism.micrograph.sbasis import (
    SphericalBesselBasis,
    evaluate_volume,
    fit_volume,
    make_basis,
    projection_images,
    projection_operator,
)
from cryoprism.parallel.core import batch_ranges, map_reduce

_ELEM_BUDGET = 6_000_000  # float32 elements of one (patch batch × rotations × shifts) block


# --------------------------------------------------------------------------------------------------
# data containers


@dataclass
class MicrographPatches:
    """The patches of one micrograph (already whitened if whitening is used) and its model filter."""

    patches: np.ndarray  # (P, L, L) float32
    filt: ModelFilter = field(default_factory=ModelFilter)
    name: str = ""


@dataclass(frozen=True)
class Stage:
    """One frequency-marching stage."""

    ell_max: int
    bandlimit: float  # cycles/pixel (0.5 = Nyquist)
    n_rotations: int
    n_iterations: int
    batch_fraction: float = 1.0


def default_stages(ell_max: int = 5, n_rotations: int = 600, iterations: Sequence[int] = (4, 4, 6),
                   batch_fraction: float = 0.5) -> list[Stage]:
    """Frequency marching in ``len(iterations)`` stages: ℓ_max from ``⌈ℓ/2⌉`` to ``ℓ`` and the band
    limit from 0.3 to 0.5 cycles/pixel, linearly (one stage: the final values)."""
    n = len(iterations)
    if n == 1:
        ells, bls = [int(ell_max)], [0.5]
    else:
        ells = np.rint(np.linspace(max(1, np.ceil(ell_max / 2)), ell_max, n)).astype(int).tolist()
        bls = np.linspace(0.3, 0.5, n).tolist()
    return [Stage(int(e), float(b), int(n_rotations), int(k), float(batch_fraction))
            for e, b, k in zip(ells, bls, iterations)]


# --------------------------------------------------------------------------------------------------
# FFT geometry of the patch model


@dataclass(frozen=True)
class ShiftGrid:
    L: int
    Lb: int
    Nf: int

    @property
    def margin(self) -> int:
        return (self.Lb - self.L) // 2

    @property
    def n_shifts(self) -> int:
        return (self.L + self.Lb - 1) ** 2

    def valid(self) -> np.ndarray:
        """Mask ``(Nf, Nf)`` of circular indices that are admissible shifts."""
        t = np.arange(self.Nf)
        ok1 = (t <= self.L - 1) | (t >= self.Nf - self.Lb + 1)
        return ok1[:, None] & ok1[None, :]

    def shift_of_index(self) -> np.ndarray:
        """Signed top-left offset ``t`` of each circular index (``(Nf,)``)."""
        t = np.arange(self.Nf)
        return np.where(t <= self.L - 1, t, t - self.Nf)


def shift_grid(L: int, margin: int = 0) -> ShiftGrid:
    Lb = L + 2 * int(margin)
    return ShiftGrid(L=int(L), Lb=Lb, Nf=L + Lb - 1)


def patch_transforms(patches: np.ndarray, Nf: int) -> np.ndarray:
    """rfft2 of the patches zero-padded to ``Nf`` (patch at the top-left): ``(P, Nf, Nf//2+1)``."""
    return sfft.rfft2(np.asarray(patches, dtype=np.float32), s=(Nf, Nf), workers=1).astype(np.complex64)


# --------------------------------------------------------------------------------------------------
# E-step


@dataclass
class EStats:
    """Sufficient statistics of one E-step pass over a set of patches (one micrograph filter)."""

    gamma_rot_shift: np.ndarray  # (nrot, Nf, Nf) Σ_p γ
    bhat: np.ndarray  # (nrot, Nf, Nf//2+1) Σ_p conj(γ̂_p) X̂_p
    gamma_empty: float
    loglik: float
    n: int

    def __add__(self, o: "EStats") -> "EStats":
        return EStats(self.gamma_rot_shift + o.gamma_rot_shift, self.bhat + o.bhat,
                      self.gamma_empty + o.gamma_empty, self.loglik + o.loglik, self.n + o.n)


def log_likelihood_maps(Xhat: np.ndarray, images: np.ndarray, grid: ShiftGrid, sigma2: float) -> np.ndarray:
    """``(2⟨X, I_ω(·−t)⟩ − ‖I_ω(·−t)‖²_patch) / (2σ²)`` for every patch, rotation and circular
    shift index: ``(P, nrot, Nf, Nf)`` float32 (invalid indices are not masked here)."""
    Nf, L = grid.Nf, grid.L
    I = np.asarray(images, dtype=np.float32)
    Ihat = sfft.rfft2(I, s=(Nf, Nf), workers=1)
    I2hat = sfft.rfft2(I * I, s=(Nf, Nf), workers=1)
    ind = np.zeros((Nf, Nf), dtype=np.float32)
    ind[:L, :L] = 1
    norm2 = sfft.irfft2(sfft.rfft2(ind)[None] * np.conj(I2hat), s=(Nf, Nf), workers=1)  # (nrot, Nf, Nf)
    cross = sfft.irfft2(Xhat[:, None] * np.conj(Ihat)[None], s=(Nf, Nf), workers=1)
    return ((cross - 0.5 * norm2[None]) / sigma2).astype(np.float32)


def _estep_batch(Xhat, xnorm2, Ihat_s, offset, valid, grid: ShiftGrid, sigma2, log_prior_empty, L2):
    """E-step for one batch of patches against all rotations; returns EStats.

    ``Ihat_s = conj(Î)/σ²`` and ``offset = ‖I(·−t)‖²/(2σ²) − log prior(ω, t)`` are precomputed per
    rotation, so the log-posterior map is one inverse FFT and one subtraction. The per-patch
    normalisation ``1/Σ`` is folded into the reductions instead of rescaling the whole map.
    """
    B = Xhat.shape[0]
    nrot = Ihat_s.shape[0]
    Nf = grid.Nf
    ll = sfft.irfft2(Xhat[:, None] * Ihat_s[None], s=(Nf, Nf), workers=1)  # (B, nrot, Nf, Nf)
    ll -= offset[None]
    if valid is not None:
        ll[:, :, ~valid] = -np.inf
    flat = ll.reshape(B, -1)
    mx = np.maximum(flat.max(1), log_prior_empty)
    np.subtract(flat, mx[:, None].astype(np.float32), out=flat)
    np.exp(flat, out=flat)  # unnormalised posteriors e = γ · Σ
    ssum = flat.sum(1).astype(np.float64) + np.exp(log_prior_empty - mx)
    logz = mx + np.log(ssum)
    w = (1.0 / ssum).astype(np.float32)
    g_empty = np.exp(log_prior_empty - logz)
    G = (w @ flat).astype(np.float64).reshape(nrot, Nf, Nf)  # Σ_p γ_p
    ehat = sfft.rfft2(flat.reshape(B, nrot, Nf, Nf), workers=1)  # (B, nrot, Nf, Nfr)
    # Σ_p conj(γ̂_p) X̂_p = conj(Σ_p ê_p · conj(w_p X̂_p))
    xw = np.conj(Xhat.reshape(B, -1) * w[:, None])
    bhat = np.conj(np.einsum("brk,bk->rk", ehat.reshape(B, nrot, -1), xw)).reshape(nrot, Nf, -1)
    loglik = float(np.sum(logz - xnorm2 / (2 * sigma2) - 0.5 * L2 * np.log(2 * np.pi * sigma2)))
    return EStats(G, bhat.astype(np.complex128), float(g_empty.sum()), loglik, B)


def e_step(Xhat: np.ndarray, xnorm2: np.ndarray, images: np.ndarray, grid: ShiftGrid, sigma2: float,
           rho_empty: float, *, progress: bool = False) -> EStats:
    """E-step of a set of patches (transforms ``Xhat``, squared norms ``xnorm2``) against the particle
    images ``images`` ``(nrot, Lb, Lb)`` of every discrete rotation; batched through
    :func:`cryoprism.parallel.map_reduce`."""
    Nf, L = grid.Nf, grid.L
    I = np.asarray(images, dtype=np.float32)
    nrot = I.shape[0]
    Ihat_s = (np.conj(sfft.rfft2(I, s=(Nf, Nf), workers=1)) / sigma2).astype(np.complex64)
    ind = np.zeros((Nf, Nf), dtype=np.float32)
    ind[:L, :L] = 1
    norm2 = sfft.irfft2(sfft.rfft2(ind)[None] * np.conj(sfft.rfft2(I * I, s=(Nf, Nf))), s=(Nf, Nf))
    lp_shift = np.log((1 - rho_empty) / (grid.n_shifts * nrot))
    offset = (norm2 / (2 * sigma2) - lp_shift).astype(np.float32)
    valid = grid.valid()
    valid = None if valid.all() else valid
    lp_empty = np.log(rho_empty)
    bs = max(1, _ELEM_BUDGET // (nrot * Nf * Nf))
    ranges = batch_ranges(Xhat.shape[0], bs)

    def one(r):
        a, b = r
        return _estep_batch(Xhat[a:b], xnorm2[a:b], Ihat_s, offset, valid, grid, sigma2, lp_empty, L * L)

    return map_reduce(one, ranges, desc="E-step", progress=progress)


# --------------------------------------------------------------------------------------------------
# M-step


def normal_equations(stats: EStats, op: np.ndarray, grid: ShiftGrid) -> tuple[np.ndarray, np.ndarray]:
    """``(H, r)`` of eqs. 28–30 from E-step statistics and the operator ``op`` ``(nrot, Lb², n)``."""
    Nf, L, Lb = grid.Nf, grid.L, grid.Lb
    ind = np.zeros((Nf, Nf))
    ind[:L, :L] = 1
    Ghat = sfft.rfft2(stats.gamma_rot_shift)
    W = sfft.irfft2(np.conj(Ghat) * sfft.rfft2(ind)[None], s=(Nf, Nf))[:, :Lb, :Lb]
    b = sfft.irfft2(stats.bhat, s=(Nf, Nf))[:, :Lb, :Lb]
    nrot, npix, n = op.shape
    W = W.reshape(nrot, npix)
    b = b.reshape(nrot, npix)
    H = np.zeros((n, n))
    r = np.zeros(n)
    for a, e in batch_ranges(nrot, max(1, 4_000_000 // (npix * n))):
        A = op[a:e].astype(np.float64)
        H += (A * W[a:e, :, None]).reshape(-1, n).T @ A.reshape(-1, n)
        r += np.einsum("rpn,rp->n", A, b[a:e])
    return H, r


def solve_normal_equations(H: np.ndarray, r: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Cholesky solve of ``(H + λI) x = r`` with ``λ = ridge · tr(H)/n`` (a tiny Tikhonov term that
    keeps coefficients no patch informs at zero)."""
    n = H.shape[0]
    lam = ridge * max(np.trace(H) / n, 1e-300)
    c = cho_factor(0.5 * (H + H.T) + lam * np.eye(n))
    return cho_solve(c, r)


# --------------------------------------------------------------------------------------------------
# the driver


@dataclass
class _Prepared:
    Xhat: np.ndarray
    xnorm2: np.ndarray
    Phi: np.ndarray  # (Lb*Lb, n) filtered basis projections


@dataclass
class EMState:
    """Everything needed to resume: stage/iteration counters, coefficients, ρ_empty, the incremental
    sufficient statistics of each block and the history."""

    stage: int = 0
    iteration: int = 0
    coef: np.ndarray | None = None
    rho_empty: float = 0.5
    block_H: dict = field(default_factory=dict)
    block_r: dict = field(default_factory=dict)
    block_empty: dict = field(default_factory=dict)
    block_n: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    done: bool = False


@dataclass
class EMResult:
    coef: np.ndarray
    basis: SphericalBesselBasis
    rho_empty: float
    history: list
    volume: np.ndarray


def prepare(micrographs: Sequence[MicrographPatches], basis: SphericalBesselBasis, grid: ShiftGrid) -> list:
    """Per-micrograph patch transforms and filtered basis projections for one stage."""
    Phi0 = projection_images(basis, grid.L)
    out = []
    for mg in micrographs:
        Phi = filter_images(Phi0, mg.filt, grid.margin).reshape(grid.Lb * grid.Lb, basis.n)
        X = np.asarray(mg.patches, dtype=np.float32)
        out.append(_Prepared(patch_transforms(X, grid.Nf),
                             (X.astype(np.float64) ** 2).sum((1, 2)), Phi))
    return out


def _blocks(n_patches: Sequence[int], n_blocks: int, seed: int) -> list[list[np.ndarray]]:
    """Random partition of every micrograph's patches into ``n_blocks`` blocks: ``[block][mic]``."""
    rng = np.random.default_rng(seed)
    out = [[None] * len(n_patches) for _ in range(n_blocks)]
    for j, n in enumerate(n_patches):
        perm = rng.permutation(n)
        for b, part in enumerate(np.array_split(perm, n_blocks)):
            out[b][j] = np.sort(part)
    return out


def calibrate_scale(coef, basis, prepared, grid, sigma2, rho_empty=0.5, n_patches=96, n_rot=36,
                    factors=None, seed=0) -> float:
    """Scale ``α`` maximising the approximate log-likelihood of ``α · coef`` on a few patches
    (a log-spaced search over 10⁻²…10², used once on the initial volume whose amplitude is
    arbitrary)."""
    factors = np.logspace(-2, 2, 13) if factors is None else np.asarray(factors)
    rng = np.random.default_rng(seed)
    rots = so3_grid(n_rot)
    best, best_ll = 1.0, -np.inf
    for pr in prepared[:1]:
        idx = np.sort(rng.choice(pr.Xhat.shape[0], min(n_patches, pr.Xhat.shape[0]), replace=False))
        op = projection_operator(basis, rots, pr.Phi)
        I = (op @ coef.astype(np.float32)).reshape(-1, grid.Lb, grid.Lb)
        for f in factors:
            st = e_step(pr.Xhat[idx], pr.xnorm2[idx], f * I, grid, sigma2, rho_empty)
            if st.loglik > best_ll:
                best, best_ll = float(f), st.loglik
    return best


def run_em(micrographs: Sequence[MicrographPatches], L: int, stages: Sequence[Stage], *,
           init_coef: np.ndarray | None = None, init_basis: SphericalBesselBasis | None = None,
           init_volume: np.ndarray | None = None, sigma2: float, margin: int = 0,
           rho_empty: float = 0.5, seed: int = 0, state: EMState | None = None,
           calibrate: bool = True, callback: Callable | None = None, progress: bool = False) -> EMResult:
    """Stochastic approximate EM with frequency marching.

    Initial volume: ``init_coef`` in ``init_basis``, or a voxel map ``init_volume`` (box ``L``; it is
    low-passed by expansion in the first stage's basis), or random (seeded). ``callback(state,
    basis, record)`` runs after every iteration (checkpointing, progress). ``state`` resumes a run.
    """
    grid = shift_grid(L, margin)
    st = state if state is not None else EMState(rho_empty=rho_empty)
    prev_basis, prev_coef = None, None
    if st.coef is not None:
        prev_basis = _stage_basis(L, stages[min(st.stage, len(stages) - 1)])
        prev_coef = st.coef
    elif init_coef is not None:
        prev_basis, prev_coef = init_basis, np.asarray(init_coef, dtype=np.float64)
    elif init_volume is not None:
        b0 = _stage_basis(L, stages[0])
        prev_basis, prev_coef = b0, fit_volume(b0, init_volume)
    n_mic = [len(m.patches) for m in micrographs]
    fresh = st.coef is None and not st.history
    basis = None
    for si in range(st.stage, len(stages)):
        stage = stages[si]
        basis = _stage_basis(L, stage)
        if prev_coef is None:
            rng = np.random.default_rng(seed)
            coef = rng.standard_normal(basis.n) / (1.0 + basis.zeros)  # decaying random spectrum
        elif prev_basis is basis or (prev_basis is not None and prev_basis.n == basis.n
                                     and prev_basis.ell_max == basis.ell_max
                                     and prev_basis.bandlimit == basis.bandlimit):
            coef = prev_coef
        else:
            coef = fit_volume(basis, evaluate_volume(prev_basis, prev_coef, L))
        prepared = prepare(micrographs, basis, grid)
        rots = so3_grid(stage.n_rotations)
        if fresh and calibrate:
            fresh = False
            coef = coef * calibrate_scale(coef, basis, prepared, grid, sigma2, st.rho_empty, seed=seed)
        n_blocks = max(1, int(round(1.0 / stage.batch_fraction)))
        blocks = _blocks(n_mic, n_blocks, seed + 7919 * si)
        ops = [projection_operator(basis, rots, pr.Phi) for pr in prepared] if len(prepared) <= 4 else None
        if st.stage != si:
            st.stage, st.iteration = si, 0
            st.block_H, st.block_r, st.block_empty, st.block_n = {}, {}, {}, {}
        order_rng = np.random.default_rng(seed + 104729 * si)
        order = np.concatenate([order_rng.permutation(n_blocks) for _ in range(
            int(np.ceil(max(stage.n_iterations, 1) / n_blocks)) + 1)])
        while st.iteration < stage.n_iterations:
            t0, c0 = time.perf_counter(), time.process_time()
            blk = int(order[st.iteration])
            H = np.zeros((basis.n, basis.n))
            r = np.zeros(basis.n)
            g_empty, ll, npatch = 0.0, 0.0, 0
            for j, pr in enumerate(prepared):
                idx = blocks[blk][j]
                if idx.size == 0:
                    continue
                op = ops[j] if ops is not None else projection_operator(basis, rots, pr.Phi)
                I = (op @ coef.astype(np.float32)).reshape(-1, grid.Lb, grid.Lb)
                es = e_step(pr.Xhat[idx], pr.xnorm2[idx], I, grid, sigma2, st.rho_empty, progress=progress)
                Hj, rj = normal_equations(es, op, grid)
                H += Hj
                r += rj
                g_empty += es.gamma_empty
                ll += es.loglik
                npatch += es.n
            st.block_H[blk], st.block_r[blk] = H, r
            st.block_empty[blk], st.block_n[blk] = g_empty, npatch
            Ht = sum(st.block_H.values())
            rt = sum(st.block_r.values())
            coef = solve_normal_equations(Ht, rt)
            ntot = sum(st.block_n.values())
            st.rho_empty = float(np.clip(sum(st.block_empty.values()) / max(ntot, 1), 1e-3, 1 - 1e-3))
            st.iteration += 1
            st.coef = coef
            rec = {"stage": si, "iteration": len(st.history) + 1, "stage_iteration": st.iteration,
                   "ell_max": basis.ell_max, "bandlimit_cpp": basis.bandlimit, "n_coefficients": basis.n,
                   "n_rotations": stage.n_rotations, "n_patches": npatch,
                   "loglik_per_patch": ll / max(npatch, 1), "rho_empty": st.rho_empty,
                   "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
            st.history.append(rec)
            if callback is not None:
                callback(st, basis, rec)
        prev_basis, prev_coef = basis, coef
    st.done = True
    if basis is None:  # resumed a finished run
        basis = _stage_basis(L, stages[-1])
    return EMResult(coef=st.coef, basis=basis, rho_empty=st.rho_empty, history=st.history,
                    volume=evaluate_volume(basis, st.coef, L).astype(np.float32))


def _stage_basis(L: int, stage: Stage) -> SphericalBesselBasis:
    return _basis_cached(int(L), int(stage.ell_max), float(stage.bandlimit))


_BASES: dict = {}


def _basis_cached(L, ell_max, bandlimit):
    key = (L, ell_max, bandlimit)
    if key not in _BASES:
        _BASES[key] = make_basis(L, ell_max, bandlimit)
    return _BASES[key]
