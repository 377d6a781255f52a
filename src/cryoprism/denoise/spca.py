"""Steerable PCA of Fourier–Bessel coefficients with Wiener-type eigenvalue shrinkage (docs/classify2d.md).

Zhao, Shkolnisky & Singer (fast steerable PCA), as used by Fan & Zhao. For images whose in-plane
rotations are uniformly distributed, the covariance of the FB coefficients is block diagonal in the
angular frequency k. With coefficients of whitened images (noise variance σ² per real degree of
freedom, i.e. ``E|noise_{k,q}|² = σ²`` for every k), per k:

    C_k = (1/n) Σ_i (a_i,k − μ_k)(a_i,k − μ_k)^H,     μ_k = 0 for k ≠ 0,
    C_k = U diag(λ) U^H;  a population eigenvalue ℓ survives if λ > σ²(1 + √γ_k)²
    (Marchenko–Pastur edge, γ_k = p_k / n; the law is the same for circular complex samples; plus three
    Tracy–Widom widths σ²(1+√γ)(1+1/√γ)^{1/3} n^{-2/3} so pure-noise blocks are rejected), and is
    de-biased by inverting the spiked-model map λ = (ℓ + σ²)(1 + γσ²/ℓ):
        ℓ = ((λ − σ² − γσ²) + sqrt((λ − σ² − γσ²)² − 4γσ⁴)) / 2.
    Wiener filter of a coefficient vector: â = μ + U diag(ℓ / (ℓ + σ²)) U^H (a − μ).

The sPCA coefficients (``project``) are ``U^H (a − μ)`` for the kept eigenvectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SteerablePCA", "fit_spca"]


@dataclass(frozen=True, eq=False)
class SteerablePCA:
    """Per angular frequency: mean (k = 0 only), kept eigenvectors, de-biased eigenvalues."""

    k_slices: tuple          # slices of the flat FB coefficient vector, per k
    mean0: np.ndarray        # (p_0,) mean of the k = 0 block
    vectors: tuple           # vectors[k]: (p_k, r_k) complex
    eigenvalues: tuple       # ell[k]: (r_k,) de-biased signal eigenvalues
    sample_eigenvalues: tuple
    noise_var: float

    @property
    def ranks(self) -> np.ndarray:
        return np.array([v.shape[1] for v in self.vectors], dtype=np.int64)

    @property
    def k_kept(self) -> np.ndarray:
        """Angular frequencies with at least one kept component."""
        return np.nonzero(self.ranks > 0)[0]

    @property
    def wiener_weights(self) -> tuple:
        return tuple(ell / (ell + self.noise_var) for ell in self.eigenvalues)

    def _centered(self, coefs, k):
        x = coefs[:, self.k_slices[k]]
        return x - self.mean0[None, :] if k == 0 else x

    def project(self, coefs: np.ndarray, k: int, weighted: bool = False) -> np.ndarray:
        """sPCA coefficients of angular frequency k: ``(n, r_k)`` (Wiener-weighted if asked)."""
        c = self._centered(coefs, k) @ np.conj(self.vectors[k])
        if weighted:
            c = c * self.wiener_weights[k][None, :]
        return c

    def features(self, coefs: np.ndarray, weighted: bool = True) -> list:
        """List over k of sPCA coefficients (``(n, r_k)``), for the rotationally invariant search."""
        return [self.project(coefs, k, weighted) for k in range(len(self.vectors))]

    def denoise(self, coefs: np.ndarray) -> np.ndarray:
        """Wiener-filtered FB coefficients ``(n, n_coef)``."""
        out = np.zeros_like(coefs)
        for k, sl in enumerate(self.k_slices):
            U = self.vectors[k]
            if U.shape[1] == 0:
                if k == 0:
                    out[:, sl] = self.mean0[None, :]
                continue
            c = self.project(coefs, k, weighted=True)
            out[:, sl] = c @ U.T
            if k == 0:
                out[:, sl] += self.mean0[None, :]
        return out

    def subspace_projection(self, coefs: np.ndarray) -> np.ndarray:
        """Orthogonal projection of the coefficients onto the kept sPCA subspaces (no shrinkage)."""
        out = np.zeros_like(coefs)
        for k, sl in enumerate(self.k_slices):
            U = self.vectors[k]
            if k == 0:
                out[:, sl] = self.mean0[None, :]
            if U.shape[1]:
                out[:, sl] += self.project(coefs, k) @ U.T
        return out


def _debias(lam, sigma2, gamma):
    b = lam - sigma2 - gamma * sigma2
    disc = np.maximum(b * b - 4 * gamma * sigma2 * sigma2, 0.0)
    return np.maximum(0.5 * (b + np.sqrt(disc)), 0.0)


def fit_spca(coefs: np.ndarray, k_slices, noise_var: float = 1.0, max_rank: int | None = None,
             threshold_scale: float = 1.0) -> SteerablePCA:
    """Fit sPCA to FB coefficients ``(n, n_coef)`` of whitened images with noise variance ``noise_var``.

    ``threshold_scale`` multiplies the Marchenko–Pastur edge (1 = the edge itself).
    """
    coefs = np.asarray(coefs)
    n = coefs.shape[0]
    sigma2 = float(noise_var)
    vecs, ells, lams = [], [], []
    mean0 = np.zeros(0)
    for k, sl in enumerate(k_slices):
        x = coefs[:, sl].astype(np.complex128)
        p = x.shape[1]
        if k == 0:
            mean0 = x.real.mean(axis=0)
            x = x.real - mean0[None, :]
            C = (x.T @ x) / n
            gamma = p / n
        else:
            C = (x.conj().T @ x) / n
            C = 0.5 * (C + C.conj().T)
            gamma = p / n
        lam, U = np.linalg.eigh(C)
        lam, U = lam[::-1], U[:, ::-1]
        # x^H x / n is the conjugate of E[a a^H]; with its eigenvectors U, the component of a row a
        # along the covariance eigenvector conj(u) is a @ u.  Store V = conj(U): project = a @ conj(V).
        # Marchenko–Pastur edge plus 3 Tracy–Widom widths (finite-n fluctuation of the top noise eigenvalue)
        sg = np.sqrt(gamma)
        tw = (1 + sg) * (1 + 1 / sg) ** (1 / 3) * n ** (-2 / 3)
        edge = sigma2 * ((1 + sg) ** 2 + 3 * tw) * threshold_scale
        keep = lam > edge
        if max_rank is not None:
            keep[max_rank:] = False
        ell = _debias(lam[keep], sigma2, gamma)
        ok = ell > 0
        Uk = U[:, keep][:, ok]
        vecs.append(np.conj(Uk))
        ells.append(ell[ok])
        lams.append(lam)
    mean0 = mean0.astype(coefs.real.dtype)
    return SteerablePCA(k_slices=tuple(k_slices), mean0=mean0,
                        vectors=tuple(v.astype(coefs.dtype) for v in vecs),
                        eigenvalues=tuple(ells), sample_eigenvalues=tuple(lams), noise_var=sigma2)
