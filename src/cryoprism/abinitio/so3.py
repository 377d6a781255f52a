"""Sampling on SO(3) for the ab-initio samplers: matrix-Fisher draws, exponential map, alignment.

The matrix-Fisher distribution ``p(R) ∝ exp(tr(Fᵀ R))`` (Haar base measure) is the conditional of an
image rotation in the Gibbs sampler (the Gaussian-mixture thesis, digest §2 step 6). With the unit quaternion ``q`` of
``R`` (scalar first, docs of ``cryoprism.geometry.rotations``) every entry of ``R`` is a quadratic
form in ``q``, so ``tr(Fᵀ R(q)) = qᵀ M(F) q`` and ``q`` follows a Bingham distribution on S³ (the
Haar measure on SO(3) is the uniform measure on S³ pushed through the double cover). Bingham draws
use the angular-central-Gaussian envelope rejection sampler (Kent, Ganeiber & Mardia 2013), batched
over many independent matrices.
"""

from __future__ import annotations

import numpy as np

from cryoprism.geometry.rotations import quaternion_to_matrix, rotvec_to_matrix


def _homogeneous_R(q):
    """Rotation-matrix entries as homogeneous quadratics in an (unnormalised) quaternion."""
    w, x, y, z = q
    return np.array([
        [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
    ])


def _quadratic_tensor() -> np.ndarray:
    """``Q[a, b]`` (3, 3, 4, 4) symmetric with ``R_ab(q) = qᵀ Q[a, b] q`` (polarisation identity)."""
    E = np.eye(4)
    Q = np.zeros((3, 3, 4, 4))
    for i in range(4):
        Q[:, :, i, i] = _homogeneous_R(E[i])
        for j in range(i + 1, 4):
            v = 0.5 * (_homogeneous_R(E[i] + E[j]) - _homogeneous_R(E[i]) - _homogeneous_R(E[j]))
            Q[:, :, i, j] = Q[:, :, j, i] = v
    return Q


_Q = _quadratic_tensor()


def fisher_to_bingham(F) -> np.ndarray:
    """``M`` (n, 4, 4) with ``tr(Fᵀ R(q)) = qᵀ M q`` for matrices ``F`` (n, 3, 3)."""
    return np.einsum("nab,abij->nij", np.asarray(F, dtype=np.float64).reshape(-1, 3, 3), _Q)


def _acg_b(lam: np.ndarray) -> np.ndarray:
    """Solve Σ_i 1/(b + 2λ_i) = 1 for b ∈ (0, 4] (λ ≥ 0, one row per distribution).

    The left side decreases in b; vectorised bisection in log b (b = 4 when all λ = 0).
    """
    lam = np.asarray(lam, dtype=np.float64)
    lo = np.full(lam.shape[0], np.log(1e-12))
    hi = np.full(lam.shape[0], np.log(4.0))
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        f = np.sum(1.0 / (np.exp(mid)[:, None] + 2 * lam), axis=1) - 1.0
        lo = np.where(f > 0, mid, lo)
        hi = np.where(f > 0, hi, mid)
    return np.exp(0.5 * (lo + hi))


def sample_bingham(M, rng=None, max_rounds: int = 1000) -> np.ndarray:
    """Unit quaternions (n, 4) with density ∝ exp(qᵀ M q) on S³, one per matrix ``M`` (n, 4, 4)."""
    rng = np.random.default_rng(rng)
    M = np.asarray(M, dtype=np.float64).reshape(-1, 4, 4)
    M = 0.5 * (M + np.swapaxes(M, 1, 2))
    n = M.shape[0]
    ev, V = np.linalg.eigh(M)
    lam = ev[:, -1:] - ev                      # Bingham form exp(−xᵀ Λ x), Λ ≥ 0 in the eigenbasis
    b = _acg_b(lam)
    omega = 1.0 + 2.0 * lam / b[:, None]       # ACG envelope precision (diagonal in the eigenbasis)
    logM = -(4 - b) / 2 + 2.0 * np.log(4.0 / b)
    out = np.empty((n, 4))
    todo = np.arange(n)
    for _ in range(max_rounds):
        if todo.size == 0:
            break
        m = todo.size
        y = rng.standard_normal((m, 4)) / np.sqrt(omega[todo])
        x = y / np.linalg.norm(y, axis=1, keepdims=True)
        u = np.einsum("mi,mi->m", x * x, lam[todo])
        w = np.einsum("mi,mi->m", x * x, omega[todo])
        log_acc = -u + 2.0 * np.log(w) - logM[todo]
        ok = np.log(rng.random(m)) < log_acc
        out[todo[ok]] = x[ok]
        todo = todo[~ok]
    if todo.size:  # pragma: no cover - acceptance is ≥ ~50 % per round
        raise RuntimeError("Bingham rejection sampler did not finish")
    return np.einsum("nij,nj->ni", V, out)


def sample_matrix_fisher(F, rng=None) -> np.ndarray:
    """Rotations (n, 3, 3) drawn from ``p(R) ∝ exp(tr(Fᵀ R))`` for matrices ``F`` (n, 3, 3)."""
    return quaternion_to_matrix(sample_bingham(fisher_to_bingham(F), rng))


def hat(v) -> np.ndarray:
    """Skew matrices ``[v]×`` (…, 3, 3) with ``[v]× u = v × u``."""
    v = np.asarray(v, dtype=np.float64)
    z = np.zeros(v.shape[:-1])
    return np.stack([np.stack([z, -v[..., 2], v[..., 1]], -1),
                     np.stack([v[..., 2], z, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def expmap(v) -> np.ndarray:
    """``exp([v]×)`` (…, 3, 3) for rotation vectors ``v`` in radians."""
    return rotvec_to_matrix(v)


def project_to_rotation(M) -> np.ndarray:
    """Nearest rotation matrix (Frobenius) to ``M`` (…, 3, 3) via the SVD."""
    U, _, Vt = np.linalg.svd(np.asarray(M, dtype=np.float64))
    d = np.sign(np.linalg.det(U @ Vt))
    U = U.copy()
    U[..., :, -1] *= d[..., None]
    return U @ Vt


#: mirror of the volume (handedness): z → −z
MIRROR = np.diag([1.0, 1.0, -1.0])


def align_rotation_sets(R_true, R_est, mirror: bool = False):
    """Global alignment between two sets of image rotations, modulo the posterior's invariances.

    With ``mirror=False`` the estimate is modelled as ``R̂_i = R_i Gᵀ`` (volume rotated by ``G``);
    with ``mirror=True`` as ``R̂_i = J R_i J Gᵀ`` with ``J = diag(1, 1, −1)`` (volume mirrored, then
    rotated). Returns ``(T, errors_deg)``: the matrix ``T`` that maps the estimated volume back onto
    the true one (``μ_true ≈ T μ̂``) and the per-image angular errors after alignment.
    """
    from cryoprism.geometry.rotations import angular_distance_deg

    R = np.asarray(R_true, dtype=np.float64)
    Rh = np.asarray(R_est, dtype=np.float64)
    B = MIRROR @ R @ MIRROR if mirror else R
    # R̂_i = B_i Gᵀ → Gᵀ = B_iᵀ R̂_i; robust start: try every image's estimate, keep the best median
    cands = np.swapaxes(B, 1, 2) @ Rh
    best = None
    for Gt in cands[: min(len(cands), 50)]:
        e = angular_distance_deg(B @ Gt, Rh)
        if best is None or np.median(e) < best[0]:
            best = (np.median(e), Gt)
    Gt = best[1]
    for _ in range(3):  # refine on the images within 20° of the current alignment
        e = angular_distance_deg(B @ Gt, Rh)
        sel = e < max(20.0, np.median(e))
        Gt = project_to_rotation(np.sum(cands[sel], axis=0))
    err = angular_distance_deg(B @ Gt, Rh)
    # with G = Gtᵀ: μ̂ = G μ (or G J μ when mirrored): μ = Gᵀ μ̂ (or J Gᵀ μ̂)
    T = (MIRROR @ Gt) if mirror else Gt
    return T, err


def best_alignment(R_true, R_est):
    """:func:`align_rotation_sets` for both hands; returns ``(T, errors_deg, mirrored)`` of the better."""
    a = align_rotation_sets(R_true, R_est, mirror=False)
    b = align_rotation_sets(R_true, R_est, mirror=True)
    if np.median(b[1]) < np.median(a[1]):
        return b[0], b[1], True
    return a[0], a[1], False
