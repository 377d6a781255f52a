"""Vector diffusion maps and multi-frequency VDM (Fan & Zhao, Algorithms 1 and 2; docs/classify2d.md).

Reflections are handled on the doubled graph of 2n nodes: node ``i`` is image i and node ``i + n``
its mirror ``J I_i`` (``J``: y → −y), whose FB coefficients are ``conj(a_i)``. A neighbour pair
``I_i ≈ R_α I_j`` gives edges (i, j) and (i+n, j+n) (the mirrors are related by R_{−α}); a reflected
pair ``I_i ≈ R_α J I_j`` gives edges (i, j+n) and (i+n, j).

Our transport matrices carry ``T_k(i, j) = e^{−ikα_ij}`` — the complex conjugate of Fan & Zhao's (2019)
``W_k(i, j) = e^{ikα_ij}`` (eq. 2) — so that ``(D⁻¹ T_k X)(i)`` averages FB coefficient rows of the
neighbours rotated onto image i (``a_i ≈ e^{−ikα_ij} a_j``). Eigenvalues are the same and eigenvectors
the conjugates, so the embedding, the affinity (eq. 7) and the alignment (eq. 9, with the opposite sign
of the exponent) are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from cryoprism.classify2d.rid import Neighbors, _peak
from cryoprism.parallel import batch_ranges, map_batches

__all__ = ["NeighborGraph", "build_graph", "transport_matrix", "top_eigenpairs", "mfvdm_neighbors",
           "graph_filter", "spectral_filter"]


@dataclass(frozen=True)
class NeighborGraph:
    """Symmetrized edges of the doubled graph: ``rows, cols`` in [0, 2n), angle (radians) per edge."""

    n: int
    rows: np.ndarray
    cols: np.ndarray
    angle: np.ndarray        # T_k(rows, cols) = exp(-1j * k * angle)

    @property
    def degree(self) -> np.ndarray:
        return np.bincount(self.rows, minlength=2 * self.n).astype(np.float64)


def build_graph(nb: Neighbors) -> NeighborGraph:
    """Doubled, symmetrized graph from a neighbour list (an edge found from either end counts once)."""
    n = nb.n
    i, j, ang, refl, _ = nb.pairs()
    jj = j + n * refl                      # node of the (possibly mirrored) neighbour
    # edge (i -> jj) with angle a and its mirror edge (i+n -> (jj+n) mod 2n) with angle -a
    r = np.concatenate([i, i + n])
    c = np.concatenate([jj, (jj + n) % (2 * n)])
    a = np.concatenate([ang, -ang])
    # one angle per unordered pair (oriented from the smaller node), then the Hermitian completion
    swap = r > c
    r, c, a = np.where(swap, c, r), np.where(swap, r, c), np.where(swap, -a, a)
    key = r.astype(np.int64) * (2 * n) + c
    _, first = np.unique(key, return_index=True)
    first = first[r[first] != c[first]]
    r, c, a = r[first], c[first], a[first]
    r2, c2, a2 = np.concatenate([r, c]), np.concatenate([c, r]), np.concatenate([a, -a])
    keep = slice(None)
    return NeighborGraph(n=n, rows=r2[keep], cols=c2[keep], angle=a2[keep])


def transport_matrix(g: NeighborGraph, k: int, normalized: bool = True, dtype=np.complex128):
    """``D^{-1/2} T_k D^{-1/2}`` (normalized) or ``T_k`` as a sparse ``(2n, 2n)`` Hermitian matrix."""
    vals = np.exp(-1j * k * g.angle)
    if normalized:
        d = g.degree
        vals = vals / np.sqrt(d[g.rows] * d[g.cols])
    N = 2 * g.n
    return sp.csr_matrix((vals.astype(dtype), (g.rows, g.cols)), shape=(N, N))


def top_eigenpairs(M, m: int, seed: int = 0, tol: float = 1e-3):
    """Largest ``m`` eigenvalues (descending) and eigenvectors of a sparse Hermitian matrix."""
    N = M.shape[0]
    m = min(int(m), N - 2)
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(N) + 1j * rng.standard_normal(N)
    lam, U = spla.eigsh(M, k=m, which="LA", v0=v0.astype(M.dtype), tol=tol, ncv=min(N - 1, max(2 * m + 1, 20)))
    order = np.argsort(-lam)
    return lam[order], U[:, order]


def _embedding(g, k, m, t):
    lam, U = top_eigenpairs(transport_matrix(g, k, dtype=np.complex128), m, seed=k)
    phi = U * (np.abs(lam) ** t)[None, :]
    nrm = np.linalg.norm(phi, axis=1, keepdims=True)
    return (phi / np.maximum(nrm, 1e-300)).astype(np.complex64), lam


def mfvdm_neighbors(nb: Neighbors, n_neighbors: int, k_max: int = 10, m: int = 50, t: float = 1.0,
                    n_angles: int = 256, batch_size: int = 512, progress: bool = False,
                    return_spectrum: bool = False):
    """MFVDM Algorithm 1 (k_max = k̃; VDM is k_max = 1): new neighbours and alignments.

    Affinity (eq. 7): ``A(i, j) = Σ_{k=1}^{k̃} |⟨φ_k(i), φ_k(j)⟩|²`` with ``φ_k(i) = (λ_l^t u_l(i))_l``
    normalized (this is ⟨V_t^{(k)}(i)/‖·‖, V_t^{(k)}(j)/‖·‖⟩ of the m²-dimensional embedding eq. 6).
    For each image i the s nodes of largest affinity among the 2n (its own two nodes excluded, and
    for every j the better of j and its mirror) are kept. Alignment (eq. 9): the peak over α of
    ``Re Σ_k z_k e^{ikα}`` with ``z_k = ⟨φ_k(i), φ_k(j)⟩`` (zero-padded FFT, parabola refinement).
    """
    g = build_graph(nb)
    n = g.n
    s = min(int(n_neighbors), n - 1)
    embs, spectra = [], []
    for k in range(1, k_max + 1):
        phi, lam = _embedding(g, k, m, t)
        embs.append(phi)
        spectra.append(lam)
    Phi = np.stack(embs)                  # (K, 2n, m)

    def one(rng):
        a, b = rng
        A = np.zeros((b - a, 2 * n), dtype=np.float32)
        for k in range(len(embs)):
            Z = Phi[k, a:b] @ Phi[k].conj().T
            A += Z.real ** 2 + Z.imag ** 2
        rows = np.arange(b - a)
        A[rows, np.arange(a, b)] = -np.inf
        A[rows, np.arange(a, b) + n] = -np.inf
        refl = A[:, n:] > A[:, :n]
        best = np.where(refl, A[:, n:], A[:, :n])
        idx = np.argpartition(-best, s - 1, axis=1)[:, :s]
        sc = np.take_along_axis(best, idx, axis=1)
        order = np.argsort(-sc, axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        return idx, np.take_along_axis(refl, idx, axis=1), np.take_along_axis(sc, order, axis=1)

    res = map_batches(one, batch_ranges(n, batch_size), progress=progress, desc="MFVDM affinity")
    J = np.concatenate([r[0] for r in res])
    R = np.concatenate([r[1] for r in res])
    S = np.concatenate([r[2] for r in res]) / len(embs)
    ang = _eigen_alignment(Phi, np.repeat(np.arange(n), s), (J + n * R).ravel(), n_angles).reshape(n, s)
    out = Neighbors(j=J, angle=ang, reflected=R, score=S)
    return (out, spectra) if return_spectrum else out


def _eigen_alignment(Phi, i, node_j, n_angles):
    """Eq. 9: α̂ = argmax_α Re Σ_k z_k e^{ikα}, z_k = ⟨φ_k(i), φ_k(j)⟩ (our conjugate convention)."""
    K = Phi.shape[0]
    n_angles = max(int(n_angles), 2 * K + 2)
    out = np.empty(len(i))
    for a, b in batch_ranges(len(i), 65536):
        Z = np.zeros((b - a, n_angles), dtype=np.complex128)
        for k in range(K):
            Z[:, k + 1] = (Phi[k, i[a:b]] * np.conj(Phi[k, node_j[a:b]])).sum(axis=1)
        corr = np.fft.ifft(Z, axis=1).real * n_angles
        _, ang = _peak(corr, n_angles)
        out[a:b] = ang
    return np.mod(out + np.pi, 2 * np.pi) - np.pi


def spectral_filter(name: str):
    """``h(λ)``: ``"2l-l2"`` → 2λ − λ² (forward–backward diffusion, Fan & Zhao's (2019) default), ``"l"`` → λ."""
    if name in ("2l-l2", "2λ-λ²", "sharpen"):
        return lambda lam: 2 * lam - lam * lam
    if name in ("l", "λ", "average"):
        return lambda lam: lam
    raise ValueError(f"unknown spectral filter {name!r}: use '2l-l2' or 'l'")


@dataclass(frozen=True)
class GraphFilter:
    """``D^{-1/2} U h(Λ) U^H D^{1/2}`` (rank m, eq. 11) or the exact polynomial ``h(D^{-1} T_k)``."""

    k: int
    U: np.ndarray | None
    h_lam: np.ndarray | None
    dsqrt: np.ndarray
    S: object = None          # sparse D^{-1} T_k for the polynomial variant
    poly: str | None = None

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Filter node signals ``X`` ``(2n, p)``."""
        if self.U is not None:
            Y = X * self.dsqrt[:, None]
            Y = self.U @ (self.h_lam[:, None] * (self.U.conj().T @ Y))
            return Y / self.dsqrt[:, None]
        SX = self.S @ X
        if self.poly == "l":
            return SX
        return 2 * SX - self.S @ SX


def graph_filter(g: NeighborGraph, k: int, m: int | None = 50, h: str = "2l-l2") -> GraphFilter:
    """Graph filter of angular frequency k (Fan & Zhao 2019, eq. 11 with the top-m eigenpairs; m=None: exact h(S_k))."""
    d = g.degree
    dsqrt = np.sqrt(np.maximum(d, 1e-300))
    if m is None:
        T = transport_matrix(g, k, normalized=False)
        S = sp.diags(1.0 / np.maximum(d, 1e-300)) @ T
        return GraphFilter(k=k, U=None, h_lam=None, dsqrt=dsqrt, S=S.tocsr(), poly=h)
    lam, U = top_eigenpairs(transport_matrix(g, k), m, seed=1000 + k)
    return GraphFilter(k=k, U=U, h_lam=spectral_filter(h)(lam), dsqrt=dsqrt)
