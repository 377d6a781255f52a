"""3-D classification (RELION Class3D-style, at fixed consensus poses): K maps refined together.

Each particle's log-likelihood under class ``c`` at its pose, with the scale ``a`` profiled out
(docs/refine.md), is ``ℓ_c = X_c² / N_c`` for ``X_c > 0`` (half-plane sums, ``σ²`` per shell), so the
class posterior is ``p(c | Y) ∝ π_c exp(ℓ_c)``. Expectation–maximisation with hard reconstructions:
posteriors → each particle reconstructed into its most probable class (least squares with a Wiener
prior) → class weights ``π_c`` = mean posterior. The K starting maps are reconstructions of K random
disjoint subsets at the consensus poses (RELION's random-subset initialisation), compared up to a
fixed resolution (default 20 Å). To keep a particle from voting for the map it helped build (with few
particles per class that bias freezes a random start), the particles are split in two halves and each
half is scored against the class maps of the other half. Poses are not re-searched (``--skip_align`` in RELION's terms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cryoprism.parallel import map_batches
from cryoprism.refine import search
from cryoprism.refine.pipeline import (
    _ctf_at,
    _data_at,
    _images_at,
    _reconstruct,
    _shell_power,
    shell_index,
    working_box,
)
from cryoprism.refine.symmetry import symmetry_group


@dataclass
class ClassifyResult:
    labels: np.ndarray  # 0..K-1
    probability: np.ndarray  # posterior of the chosen class
    volumes: list  # K maps (full box)
    weights: np.ndarray  # π_c
    iterations: list = field(default_factory=list)


def _loglik(Y, C, inv_s2, P):
    """``ℓ_c = max(X_c, 0)² / N_c`` for slices ``P`` ``(b, K, k)`` of K classes at each particle's pose."""
    X = np.einsum("bk,bck->bc", (np.conj(Y) * C * inv_s2[None]), P).real
    N = np.einsum("bk,bck->bc", (C * C * inv_s2[None]), (P.real ** 2 + P.imag ** 2))
    return np.maximum(X, 0.0) ** 2 / np.maximum(N, 1e-30)


def _matched(ref_maps, maps):
    """``maps`` reordered to best match ``ref_maps`` (largest summed correlation, one-to-one)."""
    from scipy.optimize import linear_sum_assignment

    a = np.array([np.ravel(m - np.mean(m)) for m in ref_maps])
    b = np.array([np.ravel(m - np.mean(m)) for m in maps])
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    _, col = linear_sum_assignment(-(a @ b.T))
    return [maps[j] for j in col]


def _class_map(imgs, rotations, org_px, ctf, px, member, group, n_workers):
    idx = np.flatnonzero(member)
    if len(idx) < 2:
        return np.zeros((imgs.shape[-1],) * 3, np.float32)
    return _reconstruct(imgs, rotations, org_px, ctf, px, idx, group, n_workers)


def classify3d(source, K: int, rotations, origins_A, *, resolution_A: float = 20.0, iterations: int = 12,
               symmetry: str = "C1", seed: int = 0, batch_size: int = 256, n_workers: int | None = None,
               progress: bool = True, log=None) -> ClassifyResult:
    """Classify the particles of ``source`` (a ParticleStack) into ``K`` maps at fixed poses
    (``rotations`` ``(n, 3, 3)``, ``origins_A`` ``(n, 2)``, e.g. from :func:`cryoprism.refine.refine`)."""
    from tqdm.auto import tqdm

    n, L, px = int(source.n), int(source.box), float(source.pixel_size_A)
    try:
        ctf = source.ctf_params()
    except Exception:
        ctf = None
    group = symmetry_group(symmetry)
    k_c = min(shell_index(resolution_A, L, px), L / 2 - 1)
    Lw = working_box(k_c, L)
    px_w = px * L / Lw
    fs = search.fourier_set(Lw, k_c)
    imgs = _images_at(source, Lw, batch_size, n_workers)
    org_w = np.asarray(origins_A, np.float64) / px  # full-box pixels
    inv_s2 = (1.0 / np.maximum(_shell_power(source, L), 1e-30))[fs.shell].astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    pi = np.full(K, 1.0 / K)
    hist = []
    prob = np.ones(n)
    bar = tqdm(total=iterations, desc="classify", disable=not progress)
    halves = rng.permutation(n) % 2  # cross-scoring: particles of one half against the other half's maps
    for it in range(iterations):
        vols = [[_class_map(imgs, rotations, org_w * Lw / L, ctf, px_w, (labels == c) & (halves == h), group, n_workers)
                 for c in range(K)] for h in range(2)]
        vols[1] = _matched(vols[0], vols[1])

        def job(r):
            idx = np.arange(*r)
            Y = _data_at(imgs, idx, L, fs) * search.shift_phases(fs, org_w[idx], L)
            C = _ctf_at(ctf, idx, Lw, px_w, fs)
            out = np.empty((len(idx), K))
            for h in range(2):
                m = halves[idx] == h
                if np.any(m):
                    P = np.stack([search.slices(v, rotations[idx[m]], fs) for v in vols[1 - h]], axis=1)
                    out[m] = _loglik(Y[m], C[m], inv_s2, P)
            return out

        ll = np.concatenate(map_batches(job, [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)],
                                        n_workers=n_workers, progress=False))
        lp = ll + np.log(np.maximum(pi, 1e-12))[None]
        post = np.exp(lp - lp.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        new = np.argmax(post, 1)
        changed = float(np.mean(new != labels))
        labels, pi, prob = new, post.mean(0), post.max(1)
        hist.append({"iteration": it + 1, "changed": changed, "weights": pi.round(4).tolist()})
        if log:
            log.info("classification iteration %d: %.2f %% changed, weights %s", it + 1, 100 * changed, pi.round(3))
        bar.update()
        if it >= 2 and changed < 0.005:
            break
    bar.close()
    imgs = _images_at(source, L, batch_size, n_workers)
    vols = [_class_map(imgs, rotations, org_w, ctf, px, labels == c, group, n_workers) for c in range(K)]
    return ClassifyResult(labels, prob, vols, pi, hist)
