"""Covariance Wiener filtering (CWF) of CTF-affected images in the steerable FB basis (docs/classify2d.md).

Bhamre, Zhang & Singer (2016), "Denoising and covariance estimation of single particle cryo-EM images".

Images are whitened by the background noise power spectrum NPS (:mod:`cryoprism.image.whiten`), so
their FB coefficients (:mod:`cryoprism.basis.fb2d`) obey, per angular frequency k and particle i,

    a_i,k = H_g(i),k x_i,k + n_i,k,      E n n^H = I,

where x are the FB coefficients of the clean, CTF-free image (in units of √nps0, nps0 = mean of the
NPS) and H_g,k is the ``p_k × p_k`` real symmetric block of the radially symmetric filter
``h_g(ρ) = CTF_g(ρ) · √(nps0 / NPS(ρ))`` of defocus group g:

    H_g,k[q, q'] = ∫_0^c 2π ρ g_kq(ρ) h_g(ρ) g_kq'(ρ) dρ        (Gauss–Legendre nodes of the basis).

Astigmatism is ignored: the CTF is averaged over the angle φ (its k-preserving part; astigmatism
couples k to k ± 2, which this block-diagonal model drops). Particles are binned into at most
``max_groups`` defocus groups (quantiles of the mean defocus, each group using its mean parameters).

1. Mean (k = 0 only): μ = (Σ_g n_g M_g)^{-1} Σ_i H_i a_i,0 with M_g = H_g² (= H_g^T H_g).
2. Covariance per k: B_k = Σ_i H_i b_i b_i^H H_i − Σ_g n_g M_g, b_i = a_i − H_i μ. The RHS is shrunk
   in the whitened frame: with Ā = Σ_g n_g M_g / n, S = Ā^{-1/2} (Σ_i H_i b_i b_i^H H_i / n) Ā^{-1/2}
   has identity expectation under pure noise, so its eigenvalues are thresholded at the
   Marchenko–Pastur edge (plus three Tracy–Widom widths, as in sPCA) and de-biased with the spiked
   model (λ → ℓ); B_k ← n Ā^{1/2} U diag(ℓ) U^H Ā^{1/2}. Then the least-squares equation
   ``Σ_g n_g M_g C_k M_g = B_k`` is solved exactly (Kronecker form, p_k² unknowns) and C_k projected
   to the PSD cone of rank ≤ r_k (r_k = eigenvalues kept in the whitened frame; the other
   eigenvalues, and negative ones, set to zero).
3. Wiener filter per defocus group g and k: x̂ = μ + C H_g (H_g C H_g + I)^{-1} (a − H_g μ).
4. Images: evaluate x̂ in the FB basis and scale by √nps0 (input intensity units, CTF-corrected).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoprism.basis.fb2d import FBBasis2D, fb_basis_2d
from cryoprism.ctf.model import CTFParams, ctf_on_grid
from cryoprism.denoise.spca import _debias
from cryoprism.io.particles import ParticleSource
from cryoprism.parallel import batch_ranges, map_batches, map_reduce

__all__ = ["CWFModel", "ctf_blocks", "defocus_groups", "fit_cwf", "cwf_denoise"]


def _radial_filter_blocks(basis: FBBasis2D, h: np.ndarray) -> list:
    """Blocks ``H_k = 2π R_k^T diag(w ρ h) R_k`` of a radial filter sampled at the basis' radial nodes."""
    w = basis._grid["w_rho"] * 2 * np.pi
    return [R.T @ ((w * h)[:, None] * R) for R in basis._radial]


def ctf_blocks(basis: FBBasis2D, ctf: CTFParams | None, pixel_size_A: float | None, nps=None,
               n_angles: int = 32) -> list:
    """Per k, ``(G, p_k, p_k)`` real blocks of the angle-averaged CTF (× √(nps0/NPS) if ``nps``).

    ``ctf`` holds G parameter sets (one per defocus group) or is None (identity CTF, G = 1).
    """
    rho = basis.polar_rho
    if ctf is None:
        h = np.ones((1, len(rho)))
    else:
        s = rho / float(pixel_size_A)
        ang = (np.arange(n_angles) + 0.5) * 2 * np.pi / n_angles
        S = np.broadcast_to(s[:, None], (len(rho), n_angles))
        A = np.broadcast_to(ang[None, :], (len(rho), n_angles))
        h = np.atleast_2d(ctf_on_grid(S, A, ctf).mean(axis=-1))
    if nps is not None:
        nps = np.asarray(nps, dtype=np.float64)
        nps_r = np.interp(rho * basis.L, np.arange(len(nps)), nps)
        h = h * np.sqrt(float(np.mean(nps)) / np.maximum(nps_r, 1e-300))[None, :]
    blocks = [_radial_filter_blocks(basis, hg) for hg in h]
    return [np.stack([b[k] for b in blocks]) for k in range(len(basis.k_slices))]


def defocus_groups(ctf: CTFParams | None, n: int, max_groups: int = 100):
    """Group labels ``(n,)`` and the group CTFs: exact groups when there are ≤ max_groups distinct
    parameter sets, else quantile bins of the mean defocus (the group's mean parameters)."""
    if ctf is None:
        return np.zeros(n, np.int64), None
    fields = list(ctf.__dataclass_fields__)
    cols = np.stack([np.broadcast_to(np.asarray(getattr(ctf, f), np.float64), (n,)) for f in fields], axis=1)
    uniq, labels = np.unique(np.round(cols, 6), axis=0, return_inverse=True)
    labels = labels.ravel()
    if len(uniq) > max_groups:
        df = 0.5 * (cols[:, 0] + cols[:, 1])
        edges = np.quantile(df, np.linspace(0, 1, max_groups + 1)[1:-1])
        labels = np.unique(np.searchsorted(edges, df, side="right"), return_inverse=True)[1].ravel()
    G = int(labels.max()) + 1
    cnt = np.bincount(labels, minlength=G)
    means = np.stack([np.bincount(labels, weights=cols[:, j], minlength=G) / cnt for j in range(len(fields))], 1)
    return labels.astype(np.int64), CTFParams(*(means[:, j] for j in range(len(fields))))


@dataclass(frozen=True, eq=False)
class CWFModel:
    """Fitted CWF statistics (coefficients in units of √nps0, whitened noise of unit variance)."""

    basis: FBBasis2D
    H: list                 # H[k]: (G, p_k, p_k) CTF blocks
    mean0: np.ndarray       # (p_0,) mean of the k = 0 coefficients (CTF-free)
    cov: list               # cov[k]: (p_k, p_k) Hermitian PSD covariance of the CTF-free coefficients
    counts: np.ndarray      # (G,) particles per group
    scale: float            # √nps0: multiply evaluated images by this to get input units

    @property
    def ranks(self) -> np.ndarray:
        return np.array([int(np.sum(np.linalg.eigvalsh(C) > 1e-12 * max(np.trace(C).real, 1e-300)))
                         if np.trace(C).real > 0 else 0 for C in self.cov])

    def filters(self) -> list:
        """Per k, ``(G, p_k, p_k)`` Wiener matrices F with x̂ − μ = F (a − H μ) (column vectors)."""
        out = []
        for k, C in enumerate(self.cov):
            Hk = self.H[k]
            p = C.shape[0]
            F = np.empty(Hk.shape, dtype=np.complex128)
            for g in range(Hk.shape[0]):
                Hg = Hk[g]
                S = Hg @ C @ Hg + np.eye(p)
                F[g] = np.linalg.solve(S.T, (C @ Hg).T).T        # C H S^{-1}
            out.append(F)
        return out

    def denoise_coefs(self, coefs: np.ndarray, labels: np.ndarray, filters=None) -> np.ndarray:
        """CTF-corrected Wiener estimates ``(b, n_coef)`` of the clean coefficients (row vectors)."""
        F = self.filters() if filters is None else filters
        coefs = np.asarray(coefs)
        out = np.zeros(coefs.shape, dtype=np.complex128)
        for k, sl in enumerate(self.basis.k_slices):
            a = coefs[:, sl].astype(np.complex128)
            if k == 0:
                a = a - (self.H[0][labels] @ self.mean0)           # (b, p0)
            # row form: x̂_row = b_row @ F^T
            out[:, sl] = np.einsum("bq,brq->br", a, F[k][labels])
            if k == 0:
                out[:, sl] = out[:, sl].real + self.mean0[None, :]
        return out


def _solve_kron(M: np.ndarray, w: np.ndarray, B: np.ndarray, ridge: float = 1e-10) -> np.ndarray:
    """Solve ``Σ_g w_g M_g C M_g = B`` for C (M_g real symmetric ``(G, p, p)``)."""
    p = B.shape[0]
    K = np.einsum("g,gij,gkl->ikjl", w, M, M).reshape(p * p, p * p)   # vec row-major: C[j,l] -> (j,l)
    K += ridge * np.trace(K) / (p * p) * np.eye(p * p)
    c = np.linalg.solve(K, B.reshape(p * p))
    return c.reshape(p, p)


def _sqrt_inv(A):
    lam, U = np.linalg.eigh(A)
    lam = np.maximum(lam, 1e-12 * lam.max())
    return (U * np.sqrt(lam)) @ U.T, (U / np.sqrt(lam)) @ U.T


def fit_cwf(coefs: np.ndarray, labels: np.ndarray, basis: FBBasis2D, H: list, scale: float = 1.0,
            batch_size: int = 2048, progress: bool = False, threshold_scale: float = 1.0) -> CWFModel:
    """Mean and covariance of the CTF-free coefficients from whitened coefficients ``(n, n_coef)``."""
    n = coefs.shape[0]
    labels = np.asarray(labels)
    G = H[0].shape[0]
    cnt = np.bincount(labels, minlength=G).astype(np.float64)
    ranges = batch_ranges(n, batch_size)
    sl0 = basis.k_slices[0]

    # (1) mean of k = 0
    def mean_part(r):
        a, b = r
        x = coefs[a:b, sl0].real.astype(np.float64)
        return np.einsum("bij,bj->i", H[0][labels[a:b]], x)

    rhs0 = map_reduce(mean_part, ranges, progress=progress, desc="CWF mean")
    A0 = np.einsum("g,gij,gjk->ik", cnt, H[0], H[0])
    mean0 = np.linalg.solve(A0 + 1e-10 * np.trace(A0) / len(A0) * np.eye(len(A0)), rhs0)

    # (2) Σ_i H_i b_i b_i^H H_i per k (column-vector convention)
    def second(r):
        a, b = r
        lab = labels[a:b]
        out = []
        for k, sl in enumerate(basis.k_slices):
            x = coefs[a:b, sl].astype(np.complex128)
            if k == 0:
                x = x.real - H[0][lab] @ mean0
            c = np.einsum("bij,bj->bi", H[k][lab], x)
            out.append(c.T @ c.conj())
        return out

    def add(u, v):
        return [p + q for p, q in zip(u, v)]

    parts = map_batches(second, ranges, progress=progress, desc="CWF covariance")
    S_all = parts[0]
    for p_ in parts[1:]:
        S_all = add(S_all, p_)
    cov = []
    for k, sl in enumerate(basis.k_slices):
        M = np.einsum("gij,gjk->gik", H[k], H[k])
        p = M.shape[1]
        Abar = np.einsum("g,gij->ij", cnt, M) / n
        Ah, Aih = _sqrt_inv(Abar)
        S = Aih @ (S_all[k] / n) @ Aih
        S = 0.5 * (S + S.conj().T)
        lam, U = np.linalg.eigh(S)
        gamma = p / n
        sg = np.sqrt(gamma)
        tw = (1 + sg) * (1 + 1 / sg) ** (1 / 3) * n ** (-2 / 3)
        keep = lam > ((1 + sg) ** 2 + 3 * tw) * threshold_scale
        ell = _debias(lam[keep], 1.0, gamma)
        if not np.any(ell > 0):
            cov.append(np.zeros((p, p), np.float64 if k == 0 else np.complex128))
            continue
        Uk = U[:, keep]
        Bw = (Uk * ell) @ Uk.conj().T
        B = n * (Ah @ Bw @ Ah)
        C = _solve_kron(M, cnt, B)
        C = 0.5 * (C + C.conj().T)
        lc, V = np.linalg.eigh(C)
        lc = np.maximum(lc, 0.0)
        lc[: max(p - int(np.sum(ell > 0)), 0)] = 0.0         # rank detected in the whitened frame
        C = (V * lc) @ V.conj().T
        cov.append(C.real if k == 0 else C)
    return CWFModel(basis=basis, H=H, mean0=mean0, cov=cov, counts=cnt.astype(np.int64), scale=float(scale))


def cwf_denoise(source: ParticleSource, use_ctf: bool = True, mask_radius_px: float | None = None,
                basis: FBBasis2D | None = None, bandlimit: float = 0.5,
                max_groups: int = 100, batch_size: int = 512, progress: bool = False,
                return_model: bool = False):
    """CWF-denoised, CTF-corrected images ``(n, L, L)`` float32 in input intensity units.

    ``source``: the particles (``io.ParticleSource``, read in batches); their CTF is corrected unless
    ``use_ctf=False`` or they have none.
    The noise power spectrum is estimated from the background outside ``mask_radius_px`` (default
    0.4 L); each image's background mean is subtracted before whitening.
    """
    from cryoprism.image.normalize import background_stats
    from cryoprism.image.whiten import noise_power_spectrum, whiten

    n, L = source.n, source.box
    R = float(mask_radius_px if mask_radius_px is not None else 0.4 * L)
    if basis is None:
        basis = fb_basis_2d(L, radius_px=L // 2, bandlimit=bandlimit)
    ctf = source.ctf_params() if use_ctf and source.has_ctf else None
    pixel_size_A = source.pixel_size_A
    nps = noise_power_spectrum(source, R, batch_size=batch_size, progress=progress)
    scale = float(np.sqrt(np.mean(nps)))
    labels, gctf = defocus_groups(ctf, n, max_groups)
    H = ctf_blocks(basis, gctf, pixel_size_A, nps)

    def expand(r):
        a, b = r
        x = np.asarray(source.images(np.arange(a, b)), dtype=np.float64)
        mu, _ = background_stats(x, R)
        x = whiten(x - np.asarray(mu).reshape(-1, 1, 1), nps)
        return basis.expand(x.astype(np.float32)).astype(np.complex64)

    coefs = np.concatenate(map_batches(expand, batch_ranges(n, batch_size), progress=progress,
                                       desc="FB expansion"), axis=0)
    model = fit_cwf(coefs, labels, basis, H, scale=scale, progress=progress)
    F = model.filters()
    out = np.empty((n, L, L), np.float32)

    def one(r):
        a, b = r
        x = model.denoise_coefs(coefs[a:b], labels[a:b], F)
        out[a:b] = basis.evaluate(x) * scale
        return None

    map_batches(one, batch_ranges(n, batch_size), progress=progress, desc="CWF images")
    return (out, model) if return_model else out
