"""Number of states from the spectral gap, per-particle coordinates, Gaussian-mixture classes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoprism.heterogeneity.covariance import SubspaceSystem

#: a gap λ_k / λ_{k+1} at least this large counts as a separation between heterogeneity and noise
GAP_THRESHOLD = 2.0


@dataclass
class StateCount:
    """Number of states ``C`` (= heterogeneity directions + 1) chosen from the eigenvalue gaps."""

    n_states: int
    gaps: np.ndarray  # λ_k / λ_{k+1}, k = 1..K
    confidence: float  # fraction of bootstrap replicates that choose the same C (nan if none)
    bootstrap_counts: dict


def spectral_gaps(eigenvalues: np.ndarray, max_states: int = 8) -> np.ndarray:
    """``λ_k / λ_{k+1}`` for ``k = 1 … max_states−1`` (eigenvalues descending; non-positive → floor)."""
    lam = np.asarray(eigenvalues, np.float64)
    K = min(max_states - 1, len(lam) - 1)
    floor = 1e-3 * max(lam[0], 1e-300)
    den = np.maximum(lam[1:K + 1], floor)
    num = np.maximum(lam[:K], floor)
    return num / den


def choose_states(eigenvalues: np.ndarray, max_states: int = 8, threshold: float = GAP_THRESHOLD) -> int:
    """``C = 1 + argmax_k λ_k/λ_{k+1}`` when that gap is at least ``threshold``, else 1."""
    g = spectral_gaps(eigenvalues, max_states)
    if g.size == 0 or g.max() < threshold:
        return 1
    return int(np.argmax(g)) + 2


def count_states(eigenvalues: np.ndarray, system: SubspaceSystem | None = None, *, max_states: int = 8,
                 threshold: float = GAP_THRESHOLD, n_boot: int = 30, maxiter: int = 10,
                 seed: int = 0) -> StateCount:
    """Choose ``C`` from the gap; confidence = agreement over bootstrap resamples of the particles.

    The bootstrap re-solves the normal equations restricted to the leading eigen-directions
    (``system``, built in that basis) with resampled particle weights, which costs ``O(n m³)`` per
    replicate and no pass over the images.
    """
    C = choose_states(eigenvalues, max_states, threshold)
    counts: dict = {}
    conf = float("nan")
    if system is not None and n_boot > 0:
        rng = np.random.default_rng(seed)
        n = system.G.shape[0]
        for _ in range(n_boot):
            w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
            S, _ = system.solve(maxiter=maxiter, w=w)
            lam = np.sort(np.linalg.eigvalsh(S))[::-1]
            c = choose_states(lam, max_states, threshold)
            counts[c] = counts.get(c, 0) + 1
        conf = counts.get(C, 0) / n_boot
    return StateCount(C, spectral_gaps(eigenvalues, max_states), conf, counts)


def coordinates(G: np.ndarray, c: np.ndarray, Q: np.ndarray, eigenvalues: np.ndarray,
                noise_var: float, wiener: bool = True) -> np.ndarray:
    """Per-particle coordinates ``α_s`` on the eigenvolumes ``U = Qᵀ V``: ``(n, r)``.

    Least squares ``α_s = (P_sᵀP_s)⁻¹ P_sᵀ z_s`` with ``P_s = M_s U`` (``P_sᵀP_s = Qᵀ G_s Q``), or
    the Wiener (posterior-mean) estimate ``(P_sᵀP_s + σ² Λ⁻¹)⁻¹ P_sᵀ z_s`` with prior ``N(0, Λ)``.
    """
    Q = np.asarray(Q, np.float64)
    r = Q.shape[1]
    H = np.einsum("ai,sab,bj->sij", Q, G, Q)
    h = c @ Q
    if wiener:
        lam = np.maximum(np.asarray(eigenvalues[:r], np.float64), 1e-12)
        H = H + noise_var * np.diag(1.0 / lam)[None]
    else:
        H = H + 1e-9 * np.trace(H, axis1=1, axis2=2)[:, None, None] / r * np.eye(r)[None]
    return np.linalg.solve(H, h[..., None])[..., 0]


def gmm_classes(alpha: np.ndarray, n_classes: int, seed: int = 0) -> tuple[np.ndarray, object]:
    """Gaussian mixture (EM, full covariances) on the coordinates: labels ``0..C−1`` ordered by the
    mean of the first coordinate, and the fitted model (None when ``C = 1``)."""
    n = alpha.shape[0]
    if n_classes <= 1:
        return np.zeros(n, np.int64), None
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(n_components=n_classes, covariance_type="full", n_init=5, random_state=seed,
                         reg_covar=1e-6 * float(np.var(alpha)) + 1e-12)
    lab = gm.fit_predict(alpha)
    order = np.argsort(np.argsort(gm.means_[:, 0]))
    return order[lab].astype(np.int64), gm


def matched_accuracy(true_labels, labels) -> float:
    """Fraction of particles whose label matches, under the best one-to-one relabelling."""
    from scipy.optimize import linear_sum_assignment

    t = np.asarray(true_labels)
    p = np.asarray(labels)
    tu, ti = np.unique(t, return_inverse=True)
    pu, pi = np.unique(p, return_inverse=True)
    M = np.zeros((len(pu), len(tu)))
    np.add.at(M, (pi, ti), 1)
    r, c = linear_sum_assignment(-M)
    return float(M[r, c].sum() / len(t))


def subspace_em(H: np.ndarray, h: np.ndarray, noise_var: float, labels: np.ndarray, n_classes: int,
                iterations: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine classes with each particle's own imaging operator (EM for a mixture of states).

    In the eigenvolume coordinates, state ``c`` is ``μ + U a_c``; particle ``s`` has
    ``‖z_s − P_s a_c‖² = const − 2 a_cᵀ h_s + a_cᵀ H_s a_c`` (``H_s = P_sᵀP_s``, ``h_s = P_sᵀz_s``), so the
    posterior of the state is ``∝ π_c exp(−(a_cᵀH_s a_c − 2 a_cᵀh_s) / 2σ²)`` — the CTF and view of
    each particle enter, unlike a Gaussian mixture on the coordinates. M-step:
    ``a_c = (Σ_s γ_sc H_s)⁻¹ Σ_s γ_sc h_s``. Started from ``labels``. Returns
    ``(labels, responsibilities (n, C), centres (C, r))``.
    """
    n, r = h.shape
    C = int(n_classes)
    gam = np.zeros((n, C))
    gam[np.arange(n), np.asarray(labels)] = 1.0
    a = np.zeros((C, r))
    for _ in range(iterations):
        pi = gam.mean(0) + 1e-12
        for c in range(C):
            Hc = np.tensordot(gam[:, c], H, axes=1)
            hc = gam[:, c] @ h
            a[c] = np.linalg.lstsq(Hc, hc, rcond=None)[0]
        quad = np.einsum("ci,sij,cj->sc", a, H, a)
        lin = h @ a.T
        logp = np.log(pi)[None] - (quad - 2 * lin) / (2 * noise_var)
        logp -= logp.max(1, keepdims=True)
        new = np.exp(logp)
        new /= new.sum(1, keepdims=True)
        if np.max(np.abs(new - gam)) < 1e-6:
            gam = new
            break
        gam = new
    order = np.argsort(a[:, 0])
    rank = np.argsort(order)
    return rank[np.argmax(gam, 1)].astype(np.int64), gam[:, order], a[order]
