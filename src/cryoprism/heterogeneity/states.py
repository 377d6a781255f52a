"""A calibrated number of states: a split-sample test on the covariance eigenvalues, with a p-value per
eigenvalue, and the BIC of a Gaussian mixture in the coordinate space as a second opinion.

The eigenvalues of the low-rank estimate cannot be compared with the spectrum of the noise directly:
the range finder picks the volume subspace ``V`` where the data's own noise is largest, and the noise
eigenvalues inside ``V`` are an order of magnitude above those of fresh noise in the same subspace
(measured: 120 against 12.6 on 50S data, docs/heterogeneity.md). Splitting the particles removes the
selection:

1. half ``A`` chooses the subspace ``V_A`` (the range finder of :func:`covariance.range_basis`);
2. half ``B`` gives the Galerkin estimate ``S_B`` of the covariance in ``V_A`` and its eigenvalues
   ``λ^B_1 ≥ λ^B_2 ≥ …``;
3. under no heterogeneity the residuals of ``B`` are noise independent of ``V_A``, so
   ``c_s = (M_s V_A)ᵀ z_s ~ N(0, σ² G_s)`` exactly (``G_s = (M_s V_A)ᵀ M_s V_A``, white Gaussian noise);
   the null distribution of the top eigenvalue of ``S_B`` is sampled by drawing
   ``c*_s = σ L_s ξ_s`` (``L_s L_sᵀ = G_s``, ``ξ_s`` standard normal) and solving the same Galerkin
   equations — no pass over the images, ``O(n m³)`` per replicate.

The first eigenvalue gets the upper tail probability of the top null eigenvalue at ``λ^B_1``, from a
normal fit to the ``R`` null replicates (``p_1 = 1 − Φ((λ^B_1 − m)/s)``; the Monte-Carlo rank
``(1 + #{r : λ*_{1,r} ≥ λ^B_1}) / (R + 1)`` is kept as ``p_rank``). Eigenvalue ``k + 1`` is tested
against the null of ``k + 1`` states (:func:`sequential_test`): the states fitted on ``B`` in its
leading ``k`` directions are added to the null data, ``c*_s = G_s x*_s + σ L_s ξ_s``, because the
cross terms between a strong state difference and the noise lift every later eigenvalue of the
estimate above the pure-noise null (docs/heterogeneity.md: the demo's two-state set gave 3
significant eigenvalues against a pure-noise null, 1 against this one). The number of states is
``C = 1 + #{k : p_1, …, p_k < α}`` (sequential). The false-positive rate of "more than one state" on
homogeneous data is ``α`` (for Gaussian noise, the right ``σ²`` and a normal null tail; ``α = 10⁻³`` by
default leaves room for a heavier tail).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cryoprism.heterogeneity.covariance import MeanOperator, SubspaceSystem, range_basis
from cryoprism.heterogeneity.data import HetData, subspace_statistics

#: default level of the test (false-positive rate of declaring heterogeneity in homogeneous data)
ALPHA = 1e-3
#: eigenvalue ``k ≥ 2`` must also reach this fraction of the first: the model error of a strong state
#: difference (band and grid, docs/heterogeneity.md) is real, reproducible structure at 2–4 % of ``λ_1``
#: that no noise null holds; the weakest true state difference measured sits at 8 %
LEAKAGE_FLOOR = 0.05


@dataclass
class StateTest:
    """Number of states: eigenvalues significant in the split-sample test bound the dimension, the BIC
    of the discrete-state mixture in those coordinates picks the count."""

    n_states: int  # the count used: the BIC's choice among 1 … n_states_eig (that many when no BIC)
    p_values: np.ndarray  # (K,) p-value of the k-th eigenvalue of the held-out half
    eigenvalues: np.ndarray  # (K,) eigenvalues λ^B of the held-out half
    null_top: np.ndarray  # (R,) top eigenvalue of each null replicate
    alpha: float
    n_states_eig: int = 1  # 1 + the number of significant eigenvalues
    n_states_bic: int | None = None
    bic: np.ndarray | None = None  # BIC of 1..len(bic) mixture components in the coordinate space
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        k = self.n_states_eig - 1
        nxt = self.p_values[k] if k < self.p_values.size else float("nan")
        if k:
            s = (f"{k} significant eigenvalue(s) (p = {self.p_values[k - 1]:.3g} for eigenvalue {k}, "
                 f"p = {nxt:.3g} for the next" + (", under the leakage floor)" if nxt < self.alpha else ")"))
        else:
            s = f"no significant eigenvalue (p = {nxt:.3g} for eigenvalue 1)"
        if self.n_states_bic is not None:
            s += f"; BIC of the state mixture: {self.n_states_bic} states"
        return f"{self.n_states} state(s): " + s


def null_eigenvalues(system: SubspaceSystem, replicates: int = 20, maxiter: int = 10, seed: int = 0,
                     top: int = 1, signal: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Top eigenvalues ``(replicates, top)`` of the Galerkin estimate when the residuals are noise, plus
    the heterogeneity of a hypothesis when ``signal`` is given.

    ``c*_s = G_s x*_s + σ L_s ξ_s`` with ``L_s`` the Cholesky factor of ``G_s`` (jittered by
    ``1e-10 tr G_s``) and ``x*_s`` drawn from ``signal = (centres (C, m), proportions (C,))``: the
    coefficients in the subspace of the ``C`` states of the hypothesis (None: ``x* = 0``, pure noise).
    """
    G = system.G
    n, m, _ = G.shape
    jit = 1e-10 * np.trace(G, axis1=1, axis2=2)[:, None, None] * np.eye(m)[None]
    Lc = np.linalg.cholesky(G + jit)
    rng = np.random.default_rng(seed)
    sd = np.sqrt(system.noise_var)
    out = np.empty((replicates, top))
    for r in range(replicates):
        cs = sd * np.einsum("sij,sj->si", Lc, rng.standard_normal((n, m)))
        if signal is not None:
            centres, prop = signal
            x = np.asarray(centres)[rng.choice(len(prop), size=n, p=np.asarray(prop) / np.sum(prop))]
            cs += np.einsum("sij,sj->si", G, x)
        S, _ = SubspaceSystem(G, cs, system.noise_var).solve(maxiter=maxiter)
        out[r] = np.sort(np.linalg.eigvalsh(S))[::-1][:top]
    return out


def hypothesis_states(system: SubspaceSystem, S: np.ndarray, k: int, seed: int = 0,
                      wiener: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``k + 1`` discrete states that best explain the held-out half in the leading ``k``
    eigen-directions of its estimate ``S``: ``(centres (k+1, m) in the subspace's coefficients,
    relative to their weighted mean; proportions (k+1,))``.

    Coordinates (:func:`classify.coordinates`) → Gaussian mixture → the per-particle EM over states
    (:func:`classify.subspace_em`), whose centres are not shrunk by the Wiener prior."""
    from cryoprism.heterogeneity.classify import coordinates, gmm_classes, subspace_em

    lam, Q = np.linalg.eigh(S)
    order = np.argsort(lam)[::-1]
    lam, Qk = lam[order][:k], Q[:, order][:, :k]
    co = coordinates(system.G, system.c, Qk, lam, system.noise_var, wiener=wiener)
    lab, _ = gmm_classes(co, k + 1, seed)
    H = np.einsum("ai,sab,bj->sij", Qk, system.G, Qk)
    _, gam, a = subspace_em(H, system.c @ Qk, system.noise_var, lab, k + 1)
    prop = gam.mean(0)
    prop = prop / prop.sum()
    a = a - prop @ a
    return a @ Qk.T, prop


def null_p_values(eigenvalues: np.ndarray, null_top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper-tail p-values of ``eigenvalues`` under the null top eigenvalue: a normal fit to
    ``null_top`` and the Monte-Carlo rank ``(1 + #{null ≥ λ}) / (R + 1)``."""
    from scipy.stats import norm

    lam = np.asarray(eigenvalues, np.float64)
    nt = np.asarray(null_top, np.float64).ravel()
    m, s = float(nt.mean()), float(nt.std(ddof=1)) if nt.size > 1 else 0.0
    s = max(s, 1e-12 * max(abs(m), 1e-300))
    return norm.sf((lam - m) / s), (1.0 + np.sum(nt[None, :] >= lam[:, None], axis=1)) / (nt.size + 1.0)


def sequential_count(eigenvalues: np.ndarray, null_top: np.ndarray, alpha: float = ALPHA,
                     max_states: int = 8) -> tuple[int, np.ndarray]:
    """``(C, p)``: p-values of each eigenvalue against the null top eigenvalues (normal tail, see
    :func:`null_p_values`) and ``C = 1 +`` the leading run with ``p < alpha`` (≤ ``max_states − 1``).
    One null for every eigenvalue (the pure-noise comparison; :func:`sequential_test` conditions the
    null of eigenvalue ``k + 1`` on the ``k`` before it)."""
    lam = np.asarray(eigenvalues, np.float64)
    p, _ = null_p_values(lam, null_top)
    k = 0
    while k < min(lam.size, max_states - 1) and p[k] < alpha:
        k += 1
    return k + 1, p


def sequential_test(system: SubspaceSystem, S: np.ndarray, *, alpha: float = ALPHA, replicates: int = 20,
                    maxiter: int = 10, max_states: int = 8, seed: int = 0, wiener: bool = True,
                    leakage_floor: float = LEAKAGE_FLOOR) -> tuple[int, np.ndarray, np.ndarray, list]:
    """Eigenvalue ``k + 1`` of ``S`` (the held-out estimate of ``system``) against the null of exactly
    ``k + 1`` states (docs/heterogeneity.md): ``k = 0`` is pure noise; for ``k ≥ 1`` the null data are
    the ``k + 1`` states fitted in the leading ``k`` directions (:func:`hypothesis_states`) plus noise,
    so the null carries the cross terms ``G_s x_s ξ_sᵀ L_sᵀ`` between the heterogeneity already found and
    the noise, which lift the later eigenvalues of the estimate. Eigenvalue ``k + 1 ≥ 2`` counts only if
    also ``λ_{k+1} ≥ leakage_floor · λ_1`` (:data:`LEAKAGE_FLOOR`). Stops at the first eigenvalue that
    does not count.

    Returns ``(C, p, p_rank, nulls)``: the p-values and Monte-Carlo ranks of the eigenvalues tested
    (``C`` of them unless ``max_states`` stopped the run) and the ``(replicates,)`` null samples of
    each."""
    lam = np.sort(np.linalg.eigvalsh(S))[::-1]
    K = min(lam.size, max_states)
    p = np.full(K, np.nan)
    pr = np.full(K, np.nan)
    nulls = []

    def counts(j):
        return bool(p[j] < alpha and (j == 0 or lam[j] >= leakage_floor * lam[0]))

    k = 0
    while k < K:
        sig = None if k == 0 else hypothesis_states(system, S, k, seed, wiener)
        nk = null_eigenvalues(system, replicates, maxiter, seed + 101 * k, top=k + 1, signal=sig)[:, k]
        nulls.append(nk)
        p[k:k + 1], pr[k:k + 1] = null_p_values(lam[k:k + 1], nk)
        if not counts(k) or k + 1 >= max_states:
            break
        k += 1
    t = len(nulls)
    C = 1 + int(np.sum(np.cumprod([counts(j) for j in range(t)])))
    return min(C, max_states), p[:t], pr[:t], nulls


def split_test(d: HetData, A: MeanOperator, *, alpha: float = ALPHA, replicates: int = 20, block: int = 8,
               steps: int = 3, maxiter: int = 10, max_states: int = 8, seed: int = 0,
               support_radius: float | None = 1.0, range_regularization: float = 0.05,
               n_workers: int | None = None, progress: bool = True, conditional: bool = True) -> StateTest:
    """The split-sample test (module docstring) on prepared data with residuals.

    ``conditional``: the null of eigenvalue ``k + 1`` holds the ``k + 1`` states found so far
    (:func:`sequential_test`, the default); False: one pure-noise null for every eigenvalue.

    Cost: the range finder on half the particles (``steps`` passes over ``n/2``), one Galerkin pass
    over the other half (``block·steps`` slices per particle) and ``replicates`` null solves
    (``O(n m³)`` each, no images).
    """
    if d.residuals is None:
        raise ValueError("compute_residuals first")
    perm = np.random.default_rng(seed + 7919).permutation(d.n)
    ia, ib = np.sort(perm[: d.n // 2]), np.sort(perm[d.n // 2:])
    dA, dB = d.subset(ia), d.subset(ib)
    Ar = MeanOperator(A.N, A.kernel_hat, A.mean, range_regularization * float(np.abs(A.kernel_hat).max()))
    V = range_basis(dA, Ar, block, steps, seed, n_workers, progress, support_radius=support_radius)
    G, c = subspace_statistics(dB, V, n_workers, progress, desc="held-out projections")
    system = SubspaceSystem(G, c, d.noise_var)
    S, _ = system.solve(maxiter=maxiter)
    lam = np.sort(np.linalg.eigvalsh(S))[::-1]
    K = min(lam.size, max_states)
    if conditional:
        C, p, p_rank, nulls = sequential_test(system, S, alpha=alpha, replicates=replicates, maxiter=maxiter,
                                              max_states=max_states, seed=seed)
        null = nulls[0]
        extra = {"null_mean_sd": [[float(x.mean()), float(x.std(ddof=1))] for x in nulls]}
    else:
        null = null_eigenvalues(system, replicates, maxiter, seed)[:, 0]
        C, p = sequential_count(lam, null, alpha, max_states)
        p = p[:K]
        _, p_rank = null_p_values(lam[:K], null)
        extra = {}
    return StateTest(C, p, lam[:K], null, alpha, n_states_eig=C,
                     info={"subspace_dim": int(V.shape[0]), "half_sizes": [int(ia.size), int(ib.size)],
                           "p_rank": p_rank, "conditional": bool(conditional), **extra})


def state_log_likelihood(H: np.ndarray, h: np.ndarray, noise_var: float, centres: np.ndarray,
                         proportions: np.ndarray) -> float:
    """``Σ_s log Σ_c π_c exp(−(a_cᵀH_s a_c − 2 a_cᵀh_s) / 2σ²)``: the log-likelihood of the discrete-state
    model ``z_s = P_s a_{c_s} + e_s`` up to the constant ``−Σ_s ‖z_s‖²/2σ² + …`` that no state changes."""
    quad = np.einsum("ci,sij,cj->sc", centres, H, centres)
    z = np.log(np.maximum(proportions, 1e-300))[None] - (quad - 2 * h @ centres.T) / (2 * noise_var)
    mx = z.max(1, keepdims=True)
    return float(np.sum(mx[:, 0] + np.log(np.exp(z - mx).sum(1))))


def state_bic(H: np.ndarray, h: np.ndarray, noise_var: float, coords: np.ndarray, max_states: int,
              seed: int = 0) -> np.ndarray:
    """BIC ``−2 log L + (C r + C − 1) log n`` of the discrete-state mixture for ``C = 1 … max_states``
    in the ``r``-dimensional eigen-coordinates (``H (n, r, r)``, ``h (n, r)``: each particle's own
    ``P_sᵀP_s``, ``P_sᵀz_s``). Each ``C`` is fitted by :func:`classify.subspace_em` started from a
    Gaussian mixture on ``coords``."""
    from cryoprism.heterogeneity.classify import gmm_classes, subspace_em

    n, r = h.shape
    out = []
    for C in range(1, max_states + 1):
        lab, _ = gmm_classes(coords, C, seed)
        _, gam, a = subspace_em(H, h, noise_var, lab, C)
        ll = state_log_likelihood(H, h, noise_var, a, gam.mean(0))
        out.append(-2 * ll + (C * r + C - 1) * np.log(n))
    return np.asarray(out)


def choose_by_bic(test: StateTest, system: SubspaceSystem, Q: np.ndarray, eigenvalues: np.ndarray,
                  noise_var: float, *, wiener: bool = True, seed: int = 0) -> StateTest:
    """Set ``test.n_states`` to the BIC's choice among ``1 … test.n_states_eig`` states, in the
    coordinates of the ``max(n_states_eig − 1, 1)`` leading eigen-directions of the full estimate
    (``system``: its Galerkin statistics in the basis ``Q``)."""
    from cryoprism.heterogeneity.classify import coordinates

    Cmax = test.n_states_eig
    if Cmax <= 1:
        test.n_states = 1
        return test
    r = Cmax - 1
    Qr = np.asarray(Q)[:, :r]
    coords = coordinates(system.G, system.c, Qr, eigenvalues[:r], noise_var, wiener=wiener)
    H = np.einsum("ai,sab,bj->sij", Qr, system.G, Qr)
    test.bic = state_bic(H, system.c @ Qr, noise_var, coords, Cmax, seed)
    test.n_states_bic = int(np.argmin(test.bic)) + 1
    test.n_states = test.n_states_bic
    return test


def split_class(d: HetData, A: MeanOperator, *, alpha: float = ALPHA, replicates: int = 20, seed: int = 0,
                support_radius: float | None = 1.0, n_workers: int | None = None,
                progress: bool = False) -> tuple[StateTest, np.ndarray | None]:
    """Does one class hold a further state? The split-sample test (:func:`split_test`, the first
    eigenvalue against the pure-noise null) on the class's own particles ``d``, whose residuals are
    taken from the class's own mean ``A``; when its first eigenvalue is significant (``p < alpha``),
    the two sub-classes: the class's covariance (:func:`covariance.covariance_lowrank`), the Wiener
    coordinate on its first eigenvolume, a two-component Gaussian mixture and the per-particle EM over
    the two states (:func:`classify.subspace_em`). Returns ``(test, labels (n,) in {0, 1} or None)``."""
    from cryoprism.heterogeneity.classify import coordinates, gmm_classes, subspace_em
    from cryoprism.heterogeneity.covariance import covariance_lowrank

    test = split_test(d, A, alpha=alpha, replicates=replicates, max_states=1, seed=seed,
                      support_radius=support_radius, n_workers=n_workers, progress=progress)
    if not test.p_values[0] < alpha:
        return test, None
    cov = covariance_lowrank(d, A, seed=seed, n_workers=n_workers, support_radius=support_radius,
                             progress=progress)
    system, Q = cov.info["system"], cov.info["Q"][:, :1]
    co = coordinates(system.G, system.c, Q, cov.eigenvalues[:1], d.noise_var)
    lab, _ = gmm_classes(co, 2, seed)
    H = np.einsum("ai,sab,bj->sij", Q, system.G, Q)
    lab, _, _ = subspace_em(H, system.c @ Q, d.noise_var, lab, 2)
    return test, lab
