"""End-to-end 2-D analysis: whiten + phase-flip → FB → sPCA → RID → VDM/MFVDM → denoise, averages.

Every pass over images goes through :mod:`cryoprism.parallel` in batches (a memory-mapped stack is
fine); coefficient matrices (n × n_coef complex64, 100 MB for 10 000 images of 64²) are held in memory.

Scale invariance: the images are whitened by the noise power spectrum estimated from their own
background, so multiplying the input by any constant leaves every coefficient, neighbour and angle
unchanged, and the denoised output (recoloured by the same spectrum) scales with the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cryoprism.basis.fb2d import FBBasis2D, fb_basis_2d
from cryoprism.classify2d.mfvdm import build_graph, graph_filter, mfvdm_neighbors
from cryoprism.classify2d.rid import Neighbors, rid_features, rid_neighbors
from cryoprism.ctf.model import CTFParams, ctf_on_grid
from cryoprism.denoise.spca import SteerablePCA, fit_spca
from cryoprism.image.transform import fourier_shift
from cryoprism.io.particles import ParticleSource
from cryoprism.parallel import batch_ranges, map_batches

#: sPCA components enter the rotation-invariant neighbour search weighted by their Wiener weights to
#: this power (docs/classify2d.md); part of every checkpoint fingerprint.
RID_WEIGHT_POWER = 0.5

#: Automatic FB band limit: the highest frequency whose whitened spectral SNR (3-shell running mean of
#: the image power over the noise power, minus 1) is at least this (docs/classify2d.md, "FB band limit").
BANDLIMIT_SSNR = 0.02

#: What ``prepare(centre=True)`` does with its defaults (part of every checkpoint fingerprint, so shifts
#: from another centring rule are never resumed).
CENTRING_RULE = ("rotational average; 4 rounds of MFVDM neighbour references x 3 local steps, "
                 "synchronised class-average search (> 1.5 px) after the first 3; "
                 "2 rounds of shift synchronisation over 20 tolerant matches; "
                 "translation-tolerant candidates and pair search 1 px / 0.5 px")

#: Joint rotation-translation pair search after centring (``prepare(centre=True)``): candidate pairs
#: are also scored with image j translated by every offset of a square grid of this step (px) within
#: this radius (px), tolerating the residual centring error (docs/classify2d.md, "Shifts").
SHIFT_SEARCH_PX = (1.0, 0.5)

#: Shift synchronisation after the refinement rounds (``prepare(centre=True)``): rounds of
#: translation-tolerant pair search + robust least squares over the graph (:func:`synchronise_shifts`),
#: using each image's best ``SYNC_EDGES`` matches (docs/classify2d.md, "Shift synchronisation").
SYNC_ROUNDS = 3
SYNC_EDGES = 20
SYNC_DAMP = 1.0

__all__ = ["Prepared", "shift_offsets", "shifted_projections", "synchronised_class_templates",
           "synchronise_shifts", "sync_centre_shifts",
           "prepare", "whitened_ssnr", "ssnr_bandlimit", "centre_shifts", "refine_centre_shifts",
           "neighbour_references", "class_templates", "neighbors", "effective_ctf_profiles", "coefficient_images",
           "mfvdm_denoise", "spca_denoise", "class_averages", "choose_class_centres", "run_pipeline",
           "classify_fingerprint", "run_neighbors"]


@dataclass(frozen=True, eq=False)
class Prepared:
    """Whitened, phase-flipped FB coefficients of a stack, with everything needed to invert them."""

    basis: FBBasis2D
    coefs: np.ndarray                  # (n, n_coef) complex64
    nps: np.ndarray                    # radial noise power spectrum by integer shell (input units²)
    H: np.ndarray                      # (n, n_r) |CTF| / sqrt(NPS) on the basis' radial nodes
    spca: SteerablePCA
    mask_radius_px: float
    extras: dict = field(default_factory=dict)
    #: sPCA projections (list over angular frequency, unweighted) of the images translated by each of
    #: ``shift_offsets_px``: the translation-tolerant neighbour search uses them (empty: none)
    shifted: tuple = ()
    shift_offsets_px: np.ndarray | None = None


def centre_shifts(white_flipped, n: int, L: int, max_shift_px: float, n_iter: int = 3, batch_size: int = 512,
                  progress: bool = False) -> np.ndarray:
    """Shifts (x, y) px centring each image on the rotationally averaged mean of the (centred) stack.

    ``white_flipped(a, b)`` returns whitened, phase-flipped images ``a:b``. Iteration: reference =
    rotational average of the mean of the images shifted by the current estimates (zeros first);
    each image's shift = peak of its cross-correlation with the reference within ``max_shift_px``
    (:func:`cryoprism.image.align.align_translation`). The rotational average is invariant to the
    in-plane rotations, so it converges to the radial profile of the centred particles; the argmax
    does not depend on the image scale. ``n_iter`` reference updates.
    """
    from cryoprism.fourier.resample import radial_average, shells_to_grid
    from cryoprism.image.align import align_translation

    shifts = np.zeros((n, 2))
    ranges = batch_ranges(n, batch_size)
    for it in range(int(n_iter)):
        def acc(rng, shifts=shifts):
            a, b = rng
            return fourier_shift(white_flipped(a, b), -shifts[a:b]).astype(np.float64).sum(axis=0)

        total = sum(map_batches(acc, ranges, progress=progress, desc=f"centring mean {it}"))
        ref = shells_to_grid(radial_average(total / n, n_bins=int(np.ceil(L / np.sqrt(2))) + 1), (L, L))

        def est(rng, ref=ref):
            a, b = rng
            return align_translation(white_flipped(a, b), ref, max_shift_px=max_shift_px, upsample=4).shifts_px

        new = np.concatenate(map_batches(est, ranges, progress=progress, desc=f"centring {it}"), axis=0)
        shifts = new - new.mean(axis=0)   # the reference's own centre is arbitrary: keep the mean shift 0
    return shifts


#: Automatic centring (``prepare(centre="auto")``): images in the sample, and the spread (px, rms
#: per image) of the true shifts above which the images count as not centred.
CENTRE_AUTO_SAMPLE = 400
CENTRE_AUTO_RMS_PX = 2.0


def off_centre_spread(white_flipped, n: int, L: int, max_shift_px: float, sample: int = CENTRE_AUTO_SAMPLE,
                      n_iter: int = 2, seed: int = 0) -> dict:
    """How far the particles sit from the box centre, from a sample of the stack.

    The shifts ``d`` that centre each image on the rotationally averaged mean (:func:`centre_shifts`)
    spread as ``E|d|² = E|t|² + E|e|²``: the true offsets ``t`` plus the estimator's error ``e``,
    which grows as the SNR falls. The error's share is measured on a null set made to look like the
    data with every particle centred: the sample's own rotationally averaged mean (at the centred
    images' mean amplitude) plus white noise of the whitened images' residual variance, run
    through the same estimator. Returns ``{"rms_px", "null_rms_px", "excess_rms_px" =
    √max(0, rms² − null²), "sample"}``. Cost: two :func:`centre_shifts` runs on ``sample`` images.
    """
    from cryoprism.fourier.resample import radial_average, shells_to_grid

    m = int(min(n, sample))
    idx = np.sort(np.random.default_rng(seed).choice(n, m, replace=False)) if m < n else np.arange(n)
    x = np.concatenate([white_flipped(int(i), int(i) + 1) for i in idx]).astype(np.float64)
    d = centre_shifts(lambda a, b: x[a:b], m, L, max_shift_px, n_iter=n_iter, batch_size=m)
    xc = fourier_shift(x, -d).astype(np.float64)
    ref = shells_to_grid(radial_average(xc.mean(axis=0), n_bins=int(np.ceil(L / np.sqrt(2))) + 1), (L, L))
    rr = float(np.sum(ref * ref)) or 1.0
    amp = np.einsum("nij,ij->n", xc, ref) / rr
    sigma = float(np.sqrt(np.mean((xc - amp[:, None, None] * ref) ** 2)))
    null = amp.mean() * ref[None] + sigma * np.random.default_rng(seed + 1).standard_normal(x.shape)
    d0 = centre_shifts(lambda a, b: null[a:b], m, L, max_shift_px, n_iter=n_iter, batch_size=m)
    rms = float(np.sqrt(np.mean(np.sum(d ** 2, axis=1))))
    rms0 = float(np.sqrt(np.mean(np.sum(d0 ** 2, axis=1))))
    return {"rms_px": rms, "null_rms_px": rms0, "excess_rms_px": float(np.sqrt(max(rms**2 - rms0**2, 0.0))),
            "sample": m}


def shift_offsets(radius_px: float, step_px: float) -> np.ndarray:
    """Nonzero offsets ``(G, 2)`` (x, y px) of a square grid of ``step_px`` within ``radius_px``."""
    if radius_px <= 0 or step_px <= 0:
        return np.zeros((0, 2))
    h = int(np.floor(radius_px / step_px + 1e-9))
    g = np.arange(-h, h + 1) * float(step_px)
    xy = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)
    r = np.hypot(xy[:, 0], xy[:, 1])
    return xy[(r > 0) & (r <= radius_px + 1e-9)]


def shifted_projections(basis: FBBasis2D, spca: SteerablePCA, images, n: int, offsets: np.ndarray,
                        batch_size: int = 512, progress: bool = False) -> tuple:
    """sPCA projections of the images translated by each offset: a tuple over offsets of lists over k.

    ``images(a, b)`` returns images ``a:b`` (read once per batch for all offsets); each translated copy
    is FB-expanded and projected on the sPCA components (unweighted, complex64).
    """
    offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
    K = len(spca.vectors)

    def one(rng):
        a, b = rng
        x = images(a, b)
        out = []
        for o in offsets:
            c = basis.expand(fourier_shift(x, np.broadcast_to(o, (b - a, 2))).astype(np.float32))
            out.append([spca.project(c, k).astype(np.complex64) for k in range(K)])
        return out

    parts = map_batches(one, batch_ranges(n, batch_size), progress=progress, desc="translated copies")
    return tuple([np.concatenate([p[g][k] for p in parts], axis=0) for k in range(K)]
                 for g in range(len(offsets)))


def _centred(white_flipped, shifts: np.ndarray):
    """``(a, b) -> images a:b`` of ``white_flipped`` translated by minus their centring shifts."""
    return lambda a, b: fourier_shift(white_flipped(a, b), -shifts[a:b])


def _expand(images, basis: FBBasis2D, n: int, batch_size: int, progress: bool, desc: str) -> np.ndarray:
    """FB coefficients ``(n, n_coef)`` complex64 of ``images(a, b)``, batch by batch."""
    def one(rng):
        return basis.expand(images(*rng).astype(np.float32)).astype(np.complex64)

    return np.concatenate(map_batches(one, batch_ranges(n, batch_size), progress=progress, desc=desc), axis=0)


def _weighted(spca: SteerablePCA, proj: list, weight_power: float) -> list:
    ww = spca.wiener_weights
    return [proj[k] * (np.asarray(ww[k]) ** float(weight_power))[None, :] for k in range(len(proj))]


def neighbour_references(basis: FBBasis2D, coefs: np.ndarray, nb: Neighbors, batch_size: int = 256) -> np.ndarray:
    """Per image, the mean of its neighbours' coefficients brought into its frame: ``(n, n_coef)``.

    Neighbour j of image i contributes ``R_angle J^reflected a_j`` (``I_i ≈ R_angle J^refl I_j``): the
    coefficients conjugated when reflected, then multiplied by ``e^{-ik·angle}``. Image i itself is
    not included, so the reference does not carry i's own noise.
    """
    n = coefs.shape[0]
    out = np.empty((n, coefs.shape[1]), dtype=np.complex128)
    for a in range(0, n, batch_size):
        b = min(n, a + batch_size)
        out[a:b] = _aligned_neighbour_sum(basis, coefs, nb, np.arange(a, b)) / nb.s
    return out


def _aligned_neighbour_sum(basis: FBBasis2D, coefs: np.ndarray, nb: Neighbors, rows) -> np.ndarray:
    """Σ over the neighbours of each image in ``rows`` of ``R_angle J^reflected a_j`` (its frame)."""
    A = coefs[nb.j[rows]].astype(np.complex128)                # (m, s, n_coef)
    A = np.where(nb.reflected[rows][..., None], basis.reflect(A), A)
    return basis.rotate(A, nb.angle[rows]).sum(axis=1)


def class_templates(basis: FBBasis2D, coefs: np.ndarray, nb: Neighbors, n_classes: int,
                    n_rotations: int = 36) -> np.ndarray:
    """Images of ``n_classes`` neighbour averages at ``n_rotations`` in-plane angles, unreflected and
    reflected: ``(2 · n_rotations · n_classes, L, L)``, ordered (reflection, rotation, class).

    Class centres from :func:`choose_class_centres`; each average is the centre's coefficients plus
    its neighbours' brought into its frame. Rotations and the reflection are exact in FB space."""
    _, avg = _class_means(basis, coefs, nb, n_classes)
    return _rotated_templates(basis, avg, n_rotations)


def _class_means(basis: FBBasis2D, coefs: np.ndarray, nb: Neighbors, n_classes: int):
    """``(centres, averages)``: greedy class centres and each one's mean with its aligned neighbours."""
    centres = choose_class_centres(nb, n_classes)
    return centres, (_aligned_neighbour_sum(basis, coefs, nb, centres) + coefs[centres]) / (nb.s + 1)


def _rotated_templates(basis: FBBasis2D, avg: np.ndarray, n_rotations: int) -> np.ndarray:
    th = 2 * np.pi * np.arange(int(n_rotations)) / int(n_rotations)
    T = np.stack([avg, basis.reflect(avg)])                                  # (2, C, n_coef)
    T = basis.rotate(T[:, None], th[None, :, None])                          # (2, R, C, n_coef)
    return basis.evaluate(T.reshape(-1, T.shape[-1]).astype(np.complex64))


def _rot_refl(theta, refl):
    """2×2 matrices of "reflect y → −y (if ``refl``), then rotate by ``theta`` counter-clockwise" (the
    action of :meth:`FBBasis2D.reflect` and :meth:`FBBasis2D.rotate` on image positions)."""
    c, s = np.cos(theta), np.sin(theta)
    M = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    return np.where(np.asarray(refl)[..., None, None], M * np.array([1.0, -1.0]), M)


def synchronised_class_templates(basis: FBBasis2D, coefs: np.ndarray, nb: Neighbors, n_classes: int,
                                 n_rotations: int = 36, edges_per_class: int = 4,
                                 max_shift_px: float | None = None):
    """Class-average templates whose centres agree with each other (class synchronisation).

    Class averages made of images that share a centring error are offset by that error, and an image
    aligned to them inherits it. Each class average ``A_c`` is aligned (rotation, reflection and
    translation, :func:`cryoprism.image.align.template_peaks`) to every other; its best
    ``edges_per_class`` matches ``d`` give ``t_cd ≈ o_c − M_cd o_d`` (``o_c``: offset of class c,
    ``M_cd``: the rotation/reflection taking d onto c). The offsets are the robust (Huber, 1 px)
    least-squares solution over these edges, determined up to the common translation, which is
    irrelevant. Returns ``(templates, offsets, centres)``: the templates of :func:`class_templates`
    each shifted by ``−M o_c``, the class offsets ``(C, 2)`` px and the centre images.
    """
    from cryoprism.image.align import template_peaks

    centres, avg = _class_means(basis, coefs, nb, n_classes)
    C, R, L = len(centres), int(n_rotations), basis.L
    th = 2 * np.pi * np.arange(R) / R
    T = _rotated_templates(basis, avg, R)
    k = min(int(edges_per_class), C - 1)
    if k < 1:
        return T, np.zeros((C, 2)), centres
    ms = 0.2 * L if max_shift_px is None else float(max_shift_px)
    score, shifts = template_peaks(basis.evaluate(avg.astype(np.complex64)), T, max_shift_px=ms)
    score = score.reshape(C, 2 * R, C)
    shifts = shifts.reshape(C, 2 * R, C, 2)
    best = score.argmax(axis=1)                                         # (C, C) over rotations × reflection
    S = np.take_along_axis(score, best[:, None, :], 1)[:, 0]
    t = shifts[np.arange(C)[:, None], best, np.arange(C)[None, :]]      # (C, C, 2)
    M = _rot_refl(th[best % R], best >= R)                              # (C, C, 2, 2)
    S[np.arange(C), np.arange(C)] = -np.inf
    ec = np.repeat(np.arange(C), k)                                    # edge e: (ec, ed)
    ed = np.argsort(-S, axis=1)[:, :k].ravel()
    E = ec.size
    G = np.zeros((E, 2, C, 2))                                          # rows (e, i), columns (class, j)
    G[np.arange(E), :, ec, :] = np.eye(2)
    G[np.arange(E), :, ed, :] -= M[ec, ed]
    G = G.reshape(2 * E, 2 * C)
    y = t[ec, ed].ravel()
    w = np.ones(E)
    for _ in range(4):                                                  # Huber IRLS
        sw = np.repeat(np.sqrt(w), 2)
        o = np.linalg.lstsq(G * sw[:, None], y * sw, rcond=None)[0]
        r = np.hypot(*(G @ o - y).reshape(E, 2).T)
        w = np.minimum(1.0, 1.0 / np.maximum(r, 1e-12))
    o = o.reshape(C, 2)
    # template (refl, rot, c) = R_θ J A_c: its offset is M(θ, refl) o_c
    Mt = _rot_refl(np.tile(np.repeat(th, C), 2), np.repeat([False, True], R * C))
    oc = np.einsum("tij,tj->ti", Mt, np.tile(o, (2 * R, 1)))
    return fourier_shift(T, -oc), o, centres


def refine_centre_shifts(white_flipped, n: int, basis: FBBasis2D, shifts: np.ndarray, rounds: int = 4,
                         max_step_px: float = 4.0, n_neighbors: int = 50, k_max: int = 10, m: int = 50,
                         spca_threshold: float = 1.0, batch_size: int = 512, progress: bool = False,
                         weight_power: float = RID_WEIGHT_POWER, inner_iterations: int = 3,
                         rescue: bool = True, rescue_classes: int = 40, rescue_rotations: int = 36,
                         rescue_threshold_px: float = 1.5, max_shift_px: float | None = None,
                         synchronise: bool = True, first_round: int = 0, on_round=None) -> np.ndarray:
    """Refine centring shifts against each image's own neighbour average (one MFVDM pass per round).

    Each round: FB-expand the images shifted by the current estimates, fit sPCA, find MFVDM
    neighbours (on the RID list); then ``inner_iterations`` times: build each image's reference as the
    mean of its neighbours' sPCA-filtered coefficients aligned onto it (:func:`neighbour_references`,
    image itself excluded) and add the cross-correlation peak of the image against that reference
    (within ``max_step_px``; the steps of one round together move an image by at most that much). The
    mean shift is removed after each step (the particle's centre is defined only up to a common
    translation).

    ``rescue`` (every round but the last): images whose centring failed have wrong neighbours and
    cannot recover by local steps. Every image is searched against ``rescue_classes`` class averages
    at ``rescue_rotations`` angles × reflection over all shifts within ``max_shift_px`` (default
    0.2 L; on the central half of the spectrum, :func:`cryoprism.image.align.align_templates`). With
    ``synchronise`` (default) the class averages are first put on a common centre
    (:func:`synchronised_class_templates`). The match is refined at full resolution against the
    chosen template; a match more than ``rescue_threshold_px`` away replaces the image's shift.

    ``first_round`` / ``on_round(round, shifts)``: resume after ``first_round`` finished rounds (with
    their ``shifts``); ``on_round`` is called after every finished round (checkpointing).
    """
    from cryoprism.image.align import align_templates, align_translation

    shifts = np.array(shifts, dtype=np.float64)
    ranges = batch_ranges(n, batch_size)
    s = min(int(n_neighbors), n - 1)
    m = min(int(m), 2 * n - 3)
    L = basis.L
    max_shift = 0.2 * L if max_shift_px is None else float(max_shift_px)

    def centred(rng, shifts):
        return _centred(white_flipped, shifts)(*rng)

    def expand_all(shifts, desc):
        return _expand(_centred(white_flipped, shifts), basis, n, batch_size, progress, desc)

    for it in range(int(first_round), int(rounds)):
        coefs = expand_all(shifts, f"re-centring {it}: FB")
        spca = fit_spca(coefs, basis.k_slices, noise_var=1.0, threshold_scale=spca_threshold)
        nb = _neighbor_list(spca, coefs, "mfvdm", s, k_max=k_max, m=m, weight_power=weight_power)
        start = shifts.copy()
        for inner in range(max(1, int(inner_iterations))):
            if inner > 0:
                coefs = expand_all(shifts, f"re-centring {it}.{inner}: FB")
            refs = neighbour_references(basis, spca.denoise(coefs), nb)

            def step(rng, shifts=shifts, refs=refs):
                r = basis.evaluate(refs[rng[0]:rng[1]].astype(np.complex64))
                return align_translation(centred(rng, shifts), r, max_shift_px=max_step_px, upsample=4).shifts_px

            inc = np.concatenate(map_batches(step, ranges, progress=progress,
                                             desc=f"re-centring {it}.{inner}: align"), axis=0)
            # the local steps of one round move an image by at most max_step_px in all: an image
            # with a wrong reference must not wander out of the class search's reach
            d = shifts + inc - start
            norm = np.hypot(d[:, 0], d[:, 1])
            shifts = start + d * np.minimum(1.0, max_step_px / np.maximum(norm, 1e-12))[:, None]
            shifts -= shifts.mean(axis=0)
        if rescue and it < int(rounds) - 1 and rescue_classes > 0:
            coefs = expand_all(shifts, f"re-centring {it}: FB")
            if synchronise:
                T, _, _ = synchronised_class_templates(basis, spca.denoise(coefs), nb, rescue_classes,
                                                    rescue_rotations, max_shift_px=max_shift)
            else:
                T = class_templates(basis, spca.denoise(coefs), nb, rescue_classes, rescue_rotations)

            def search(rng, shifts=shifts, T=T):
                x = centred(rng, shifts)
                mt = align_templates(x, T, max_shift_px=max_shift, size=max(8, L // 2))
                # the coarse search runs on half the spectrum: refine at full resolution on the chosen template
                fine = align_translation(fourier_shift(x, -mt.shifts_px), T[mt.template],
                                         max_shift_px=2.0, upsample=4).shifts_px
                return mt.shifts_px + fine

            t = np.concatenate(map_batches(search, ranges, progress=progress,
                                           desc=f"re-centring {it}: class search"), axis=0)
            far = np.hypot(t[:, 0], t[:, 1]) > rescue_threshold_px
            shifts[far] += t[far]
            shifts -= shifts.mean(axis=0)
        if on_round is not None:
            on_round(it, shifts)
    return shifts


def synchronise_shifts(nb: Neighbors, edges_per_image: int = SYNC_EDGES, huber_px: float = 0.5,
                       damp: float = SYNC_DAMP, reweight: int = 5, anchor: np.ndarray | None = None) -> np.ndarray:
    """Corrections ``(n, 2)`` (x, y px) that make the translation-tolerant matches of ``nb`` consistent.

    ``nb`` comes from the translation-tolerant pair search (``nb.shift_px``): image i matches image j
    rotated and reflected by ``M_ij`` (:func:`_rot_refl`) after translating j by ``δ_ij``. If image i's
    content is displaced by ``d_i`` from a common centre of the views, a match of the same view needs
    ``d_i = M_ij (δ_ij + d_j)``. The best ``edges_per_image`` matches of every image give
    ``d_i − M_ij d_j = M_ij δ_ij``, solved in least squares (LSQR with Tikhonov ``damp``: the system
    fixes the displacements only up to a common translation projected into every view and determines
    smooth variations over the views poorly; those are left at the smallest correction) with
    ``reweight`` Huber reweightings (scale ``huber_px``) against wrong matches. ``anchor``: the
    corrections of earlier rounds (n, 2); the damping then applies to the total correction, so
    repeated rounds cannot drift along the poorly determined directions. Adding the result to the
    centring shifts (``shifts += d``) removes it from the images (docs/classify2d.md, "Shift
    synchronisation").
    """
    import scipy.sparse as sps
    from scipy.sparse.linalg import lsqr

    if nb.shift_px is None:
        raise ValueError("synchronise_shifts needs neighbours from the translation-tolerant search (shift_px)")
    n = nb.n
    k = min(int(edges_per_image), nb.s)
    i = np.repeat(np.arange(n), k)
    j = nb.j[:, :k].ravel()
    M = _rot_refl(nb.angle[:, :k].ravel(), nb.reflected[:, :k].ravel())
    b = np.einsum("eab,eb->ea", M, nb.shift_px[:, :k].reshape(-1, 2))
    E = len(i)
    row = np.arange(2 * E).reshape(E, 2)
    # row (e, a): d_i[a] − Σ_c M_e[a, c] d_j[c]
    rows = np.concatenate([row[:, 0], row[:, 1]] + [row[:, a] for a in range(2) for _ in range(2)])
    cols = np.concatenate([2 * i, 2 * i + 1] + [2 * j + c for _ in range(2) for c in range(2)])
    vals = np.concatenate([np.ones(2 * E)] + [-M[:, a, c] for a in range(2) for c in range(2)])
    A = sps.csr_matrix((vals, (rows, cols)), shape=(2 * E, 2 * n))
    c0 = np.zeros(2 * n) if anchor is None else np.asarray(anchor, dtype=np.float64).reshape(2 * n)
    rhs = b.ravel() + A @ c0                 # in the total correction y = c0 + d: A y ≈ b + A c0, |y| damped
    w = np.ones(E)
    d = np.zeros((n, 2))
    for _ in range(max(1, int(reweight))):
        W = sps.diags(np.repeat(w, 2))
        y = lsqr(W @ A, W @ rhs, damp=float(damp), atol=1e-8, btol=1e-8, iter_lim=4 * n)[0]
        d = (y - c0).reshape(n, 2)
        r = np.hypot(*(A @ d.ravel() - b.ravel()).reshape(E, 2).T)
        w = np.sqrt(np.minimum(1.0, float(huber_px) / np.maximum(r, 1e-12)))
    return d - d.mean(axis=0)


def sync_centre_shifts(white_flipped, n: int, basis: FBBasis2D, shifts: np.ndarray, rounds: int = SYNC_ROUNDS,
                       shift_search_px: tuple = SHIFT_SEARCH_PX, n_neighbors: int = 50,
                       edges_per_image: int = SYNC_EDGES, spca_threshold: float = 1.0,
                       weight_power: float = RID_WEIGHT_POWER, batch_size: int = 512, progress: bool = False,
                       first_round: int = 0, on_round=None, start_shifts: np.ndarray | None = None) -> np.ndarray:
    """Rounds of translation-tolerant pair search and shift synchronisation (:func:`synchronise_shifts`).

    Each round: FB-expand the images at the current shifts, refit sPCA, expand the copies translated
    by the offsets of ``shift_search_px`` (:func:`shifted_projections`), find the RID neighbours with
    the joint rotation-translation search, add the synchronised corrections to the shifts. The
    damping applies to the total correction since ``start_shifts`` (the shifts before the first round;
    default ``shifts``), so the rounds converge instead of drifting.
    ``first_round`` / ``on_round(round, shifts)`` as in :func:`refine_centre_shifts`.
    """
    shifts = np.array(shifts, dtype=np.float64)
    start = shifts.copy() if start_shifts is None else np.asarray(start_shifts, dtype=np.float64)
    offsets = shift_offsets(*shift_search_px)
    if not len(offsets):
        raise ValueError("shift synchronisation needs a translation grid (shift_search_px)")
    s = min(int(n_neighbors), n - 1)
    for it in range(int(first_round), int(rounds)):
        centred = _centred(white_flipped, shifts)
        coefs = _expand(centred, basis, n, batch_size, progress, f"shift sync {it}: FB")
        spca = fit_spca(coefs, basis.k_slices, noise_var=1.0, threshold_scale=spca_threshold)
        shifted = shifted_projections(basis, spca, centred, n, offsets, batch_size=batch_size, progress=progress)
        nb = rid_neighbors(rid_features(spca, coefs, weight_power), s, progress=progress,
                           shifted=[_weighted(spca, P, weight_power) for P in shifted], shift_offsets_px=offsets)
        total = (shifts - shifts.mean(axis=0)) - (start - start.mean(axis=0))
        shifts = shifts + synchronise_shifts(nb, edges_per_image=edges_per_image, anchor=total)
        shifts -= shifts.mean(axis=0)
        if on_round is not None:
            on_round(it, shifts)
    return shifts


def whitened_ssnr(source: ParticleSource, nps: np.ndarray, batch_size: int = 512,
                  progress: bool = False) -> np.ndarray:
    """Spectral SNR of the whitened images by integer shell ``0 … L//2``: ``mean |F|²/L² − 1``.

    Each image has its mean removed and is whitened by ``nps`` (:func:`cryoprism.image.whiten.whiten`),
    so pure noise has unit power per Fourier pixel and the excess is the signal power over the noise
    power at that frequency (averaged over images and angles). Shell 0 (the removed mean) is 0.
    """
    from cryoprism.fourier.resample import power_spectrum, radial_average
    from cryoprism.image.whiten import whiten
    from cryoprism.parallel import map_reduce

    n, L = source.n, source.box

    def one(rng):
        x = _take(source, *rng)
        x = whiten(x - x.mean(axis=(1, 2), keepdims=True), nps)
        return power_spectrum(x.astype(np.float64)).sum(axis=0)

    total = map_reduce(one, batch_ranges(n, batch_size), progress=progress, desc="spectral SNR")
    ssnr = radial_average(total / n, 2, L // 2 + 1) - 1.0
    ssnr[0] = 0.0
    return ssnr


def ssnr_bandlimit(ssnr: np.ndarray, L: int, threshold: float = BANDLIMIT_SSNR,
                   min_bandlimit: float = 0.1) -> float:
    """FB band limit (cycles/px) = (r* + 1)/L, r* the last shell whose 3-shell mean SSNR ≥ ``threshold``.

    Frequencies beyond r* carry (almost) only noise; their FB coefficients enlarge every sPCA block
    (``γ_k = p_k/n``) and so the error of the estimated eigenvectors, which costs neighbour accuracy
    (docs/classify2d.md). Clipped to ``[min_bandlimit, 0.5]``.
    """
    e = np.asarray(ssnr, dtype=np.float64)
    sm = np.convolve(e, np.ones(3) / 3.0, mode="same")
    sm[0] = e[0]
    ok = np.nonzero(sm[1:] >= float(threshold))[0]
    if ok.size == 0:
        return float(min_bandlimit)
    r = int(ok[-1]) + 1
    return float(np.clip((r + 1) / float(L), min_bandlimit, 0.5))


def _take(source: ParticleSource, a, b):
    return np.asarray(source.images(np.arange(a, b)), dtype=np.float32)


def source_ctf(source: ParticleSource, use_ctf: bool = True) -> CTFParams | None:
    """The CTF parameters of ``source`` (None without them or with ``use_ctf=False``)."""
    return source.ctf_params() if use_ctf and source.has_ctf else None


def _ctf_take(ctf, a, b):
    if ctf is None:
        return None
    idx = np.arange(a, b)
    return ctf.take(idx) if len(ctf) > 1 else ctf


def _profiles(basis: FBBasis2D, ctf: CTFParams | None, pixel_size_A, nps, n, n_angles=16):
    """``|CTF| / sqrt(NPS)`` averaged over angle, at the basis' radial nodes: ``(n, n_r)``."""
    rho = basis.polar_rho                                  # cycles / pixel
    shells = np.arange(len(nps))
    nps_r = np.interp(rho * basis.L, shells, nps)
    if ctf is None:
        C = np.ones((n, len(rho)))
    else:
        s = rho / float(pixel_size_A)
        ang = (np.arange(n_angles) + 0.5) * np.pi / n_angles
        S = np.broadcast_to(s[:, None], (len(rho), n_angles))
        A = np.broadcast_to(ang[None, :], (len(rho), n_angles))
        C = np.abs(ctf_on_grid(S, A, ctf)).mean(axis=-1)
        C = np.broadcast_to(np.atleast_2d(C), (n, len(rho)))
    return (C / np.sqrt(np.maximum(nps_r, 1e-300))[None, :]).astype(np.float32)


def prepare(source: ParticleSource, use_ctf: bool = True,
            mask_radius_px: float | None = None, basis: FBBasis2D | None = None,
            bandlimit: float | str = "auto",
            batch_size: int = 512, progress: bool = False, spca_threshold: float = 1.0,
            centre: bool | str = False, centre_iterations: int = 3, centre_max_shift_frac: float = 0.2,
            centre_refine_rounds: int = 4, centre_options: dict | None = None, checkpoints=None,
            shift_search_px: tuple | None = None, centre_sync_rounds: int = SYNC_ROUNDS) -> Prepared:
    """Noise spectrum from the background, then per batch: whiten, phase-flip, (centre,) FB-expand; fit sPCA.

    ``centre``: translate each whitened, phase-flipped image onto the rotationally averaged mean of
    the stack (:func:`centre_shifts`), then refine the shifts ``centre_refine_rounds`` times against
    each image's neighbour average (:func:`refine_centre_shifts`, further settings in
    ``centre_options``), then synchronise them ``centre_sync_rounds`` times over the graph of
    translation-tolerant matches (:func:`sync_centre_shifts`, on the grid of ``shift_search_px``); the
    shifts are in ``extras["centre_shifts_px"]``. With ``checkpoints`` (a
    :class:`cryoprism.io.checkpoint.Checkpoints`) the centring shifts are saved after stage 1 and after
    every refinement and synchronisation round (``centring``), and a resumed run continues from the
    last saved round. ``centre="auto"``: centre only when a sample shows the particles are not
    centred — the spread of the shifts that centre a sample on its rotational average exceeds, by
    more than :data:`CENTRE_AUTO_RMS_PX` rms, the spread the same estimator gives on a centred null set
    at the data's SNR (:func:`off_centre_spread`), and that null spread is itself below it (at lower
    SNR the estimate cannot tell, and the images are left as they are); the figures are in
    ``extras["centring_auto"]``.

    ``source``: the particles (``io.ParticleSource``, read in batches); their CTF is corrected (phase
    flip) unless ``use_ctf=False`` or they have none. ``mask_radius_px``: particle radius; the
    background outside it gives the noise spectrum.
    ``bandlimit``: FB band limit in cycles/px, or ``"auto"`` (default): from the whitened spectral SNR
    (:func:`ssnr_bandlimit`; the SSNR per shell is in ``extras["ssnr"]``). Ignored when ``basis`` is given.
    ``shift_search_px``: ``(radius, step)`` of the translation grid of the final pair search
    (:func:`shifted_projections`, kept in ``Prepared.shifted``); default :data:`SHIFT_SEARCH_PX` with
    ``centre``, none without; ``(0, 0)`` switches it off.
    """
    from cryoprism.ctf.correct import phase_flip
    from cryoprism.image.whiten import noise_power_spectrum, whiten

    n, L = source.n, source.box
    R = float(mask_radius_px if mask_radius_px is not None else 0.4 * L)
    ctf, pixel_size_A = source_ctf(source, use_ctf), source.pixel_size_A
    nps = noise_power_spectrum(source, R, batch_size=batch_size, progress=progress)
    extras = {}
    if basis is None:
        if isinstance(bandlimit, str):
            if bandlimit != "auto":
                raise ValueError(f"bandlimit must be a number or 'auto', got {bandlimit!r}")
            ssnr = whitened_ssnr(source, nps, batch_size=batch_size, progress=progress)
            extras["ssnr"] = ssnr
            bandlimit = ssnr_bandlimit(ssnr, L)
        basis = fb_basis_2d(L, radius_px=L // 2, bandlimit=float(bandlimit))

    def white_flipped(a, b):
        x = _take(source, a, b)
        x = x - x.mean(axis=(1, 2), keepdims=True)
        x = whiten(x, nps)
        c = _ctf_take(ctf, a, b)
        if c is not None:
            x = phase_flip(x, c, pixel_size_A)
        return x

    if isinstance(centre, str):
        if centre != "auto":
            raise ValueError(f"centre must be True, False or 'auto', got {centre!r}")
        spread = off_centre_spread(white_flipped, n, L, centre_max_shift_frac * L)
        centre = bool(spread["null_rms_px"] <= CENTRE_AUTO_RMS_PX < spread["excess_rms_px"])
        extras["centring_auto"] = {**spread, "centre": centre}
    shifts = None
    if centre:
        ck = checkpoints
        got = ck.load("centring") if ck is not None else None
        sync_start = None
        if got is not None:
            shifts, done = np.asarray(got[0]["shifts_px"], dtype=np.float64), int(got[1]["rounds_done"])
            if "sync_start_px" in got[0]:
                sync_start = np.asarray(got[0]["sync_start_px"], dtype=np.float64)
        else:
            shifts = centre_shifts(white_flipped, n, L, max_shift_px=centre_max_shift_frac * L,
                                   n_iter=centre_iterations, batch_size=batch_size, progress=progress)
            done = 0
            if ck is not None:
                ck.save("centring", {"shifts_px": shifts}, rounds_done=0)

        def saved(it, sh):
            arrays = {"shifts_px": sh}
            if sync_start is not None:
                arrays["sync_start_px"] = sync_start
            ck.save("centring", arrays, rounds_done=it + 1)

        if centre_refine_rounds > done and n > 2:
            shifts = refine_centre_shifts(white_flipped, n, basis, shifts, rounds=centre_refine_rounds,
                                          spca_threshold=spca_threshold, batch_size=batch_size,
                                          progress=progress, first_round=done,
                                          on_round=saved if ck is not None else None,
                                          **(centre_options or {}))
        R0 = int(centre_refine_rounds)
        # the synchronisation needs a translation grid even where the final search has none
        grid = shift_search_px if shift_search_px is not None and len(shift_offsets(*shift_search_px)) \
            else SHIFT_SEARCH_PX
        if centre_sync_rounds > 0 and R0 + centre_sync_rounds > done and n > 2:
            if sync_start is None:
                sync_start = shifts.copy()
            shifts = sync_centre_shifts(white_flipped, n, basis, shifts, rounds=centre_sync_rounds,
                                        shift_search_px=grid, spca_threshold=spca_threshold,
                                        batch_size=batch_size, progress=progress, first_round=max(0, done - R0),
                                        on_round=(lambda it, sh: saved(R0 + it, sh)) if ck is not None else None,
                                        start_shifts=sync_start)

    centred = white_flipped if shifts is None else _centred(white_flipped, shifts)
    coefs = _expand(centred, basis, n, batch_size, progress, "FB expansion")
    spca = fit_spca(coefs, basis.k_slices, noise_var=1.0, threshold_scale=spca_threshold)
    H = _profiles(basis, ctf, pixel_size_A, nps, n)
    if shifts is not None:
        extras["centre_shifts_px"] = shifts
    if shift_search_px is None:
        shift_search_px = SHIFT_SEARCH_PX if centre else (0.0, 0.0)
    offsets = shift_offsets(*shift_search_px)
    shifted = (shifted_projections(basis, spca, centred, n, offsets, batch_size=batch_size, progress=progress)
               if len(offsets) else ())
    return Prepared(basis=basis, coefs=coefs, nps=nps, H=H, spca=spca, mask_radius_px=R, extras=extras,
                    shifted=shifted, shift_offsets_px=offsets if len(offsets) else None)


def neighbors(prep: Prepared, method: str = "mfvdm", n_neighbors: int = 50, k_max: int = 10, m: int = 50,
              n_candidates: int | None = None, progress: bool = False, initial: Neighbors | None = None,
              weight_power: float = RID_WEIGHT_POWER):
    """Neighbour list by ``rir`` (rotation-invariant representation + exact RID), ``vdm`` or ``mfvdm``.

    ``weight_power``: sPCA components weighted by the Wiener weights to this power for the RID search
    (:func:`cryoprism.classify2d.rid.rid_features`; 1 = Wiener-filtered coefficients).
    """
    return _neighbor_list(prep.spca, prep.coefs, method, n_neighbors, k_max=k_max, m=m,
                          n_candidates=n_candidates, progress=progress, initial=initial,
                          weight_power=weight_power, shifted=prep.shifted, shift_offsets_px=prep.shift_offsets_px)


def _neighbor_list(spca: SteerablePCA, coefs: np.ndarray, method: str, n_neighbors: int, k_max: int = 10,
                   m: int = 50, n_candidates: int | None = None, progress: bool = False,
                   initial: Neighbors | None = None, weight_power: float = RID_WEIGHT_POWER,
                   shifted: tuple = (), shift_offsets_px: np.ndarray | None = None) -> Neighbors:
    """RID list from the weighted sPCA features (unless ``initial`` is given), then VDM / MFVDM on it.

    ``shifted``: sPCA projections of translated copies (:func:`shifted_projections`) for the joint
    rotation-translation pair search."""
    if method not in ("rir", "vdm", "mfvdm"):
        raise ValueError(f"unknown method {method!r}: use rir, vdm or mfvdm")
    nb0 = initial
    if nb0 is None:
        nb0 = rid_neighbors(rid_features(spca, coefs, weight_power), n_neighbors, n_candidates=n_candidates,
                            progress=progress, shifted=[_weighted(spca, P, weight_power) for P in shifted],
                            shift_offsets_px=shift_offsets_px)
    if method == "rir":
        return nb0
    return mfvdm_neighbors(nb0, n_neighbors, k_max=1 if method == "vdm" else k_max, m=m, progress=progress)


def coefficient_images(prep: Prepared, coefs: np.ndarray, H_eff: np.ndarray, wiener_eps: float = 0.1,
                       batch_size: int = 512, progress: bool = False) -> np.ndarray:
    """Images in input units from filtered whitened coefficients and their effective ``|C|/√NPS``.

    In the Fourier plane, per radial node: ``X̂ = G H̃ / (H̃² + ε mean(H̃²))`` — Wiener CTF correction
    (Fan & Zhao 2019, eq. 13, regularized) that also recolours (H̃ carries 1/√NPS).
    """
    basis = prep.basis
    n = coefs.shape[0]
    out = np.empty((n, basis.L, basis.L), dtype=np.float32)

    def one(rng):
        a, b = rng
        G = basis.polar_spectrum(coefs[a:b])                # (b, n_r, K)
        Hb = H_eff[a:b].astype(np.float64)
        eps = wiener_eps * np.mean(Hb * Hb, axis=1, keepdims=True)
        filt = Hb / (Hb * Hb + eps)
        G = G * filt[:, :, None].astype(G.real.dtype)
        out[a:b] = basis.evaluate_polar_spectrum(G)
        return None

    map_batches(one, batch_ranges(n, batch_size), progress=progress, desc="images")
    return out


def effective_ctf_profiles(prep: Prepared, filt0) -> np.ndarray:
    """Effective ``|C|/√NPS`` after the k = 0 graph filter (Fan & Zhao 2019: filtering the CTF coefficients)."""
    X = np.concatenate([prep.H, prep.H], axis=0).astype(np.complex128)
    return np.abs(filt0.apply(X)[: prep.coefs.shape[0]].real)


def mfvdm_denoise(prep: Prepared, nb: Neighbors, m: int | None = None, h: str = "2l-l2",
                  signal: str = "spca", wiener_eps: float = 0.1, k_list=None, progress: bool = False,
                  return_coefs: bool = False):
    """MFVDM Algorithm 2: graph-filter the FB coefficients per angular frequency, CTF-correct, recolour.

    ``signal``: ``"spca"`` filters the coefficients projected on the kept sPCA subspace of each k,
    ``"raw"`` the full coefficients (of the angular frequencies sPCA keeps). ``m``: eigenpairs per k
    (Fan & Zhao 2019: 50); ``None`` applies the exact polynomial h(S_k).
    """
    g = build_graph(nb)
    n = prep.coefs.shape[0]
    basis = prep.basis
    X_all = prep.spca.subspace_projection(prep.coefs) if signal == "spca" else prep.coefs
    out = np.zeros_like(prep.coefs)
    ks = prep.spca.k_kept if k_list is None else np.asarray(k_list)
    filt0 = None
    for k in ks:
        sl = basis.k_slices[int(k)]
        f = graph_filter(g, int(k), m=m, h=h)
        if int(k) == 0:
            filt0 = f
        X = X_all[:, sl].astype(np.complex128)
        Y = f.apply(np.concatenate([X, np.conj(X)], axis=0))[:n]
        out[:, sl] = Y.real if int(k) == 0 else Y
    if filt0 is None:
        filt0 = graph_filter(g, 0, m=m, h=h)
    H_eff = effective_ctf_profiles(prep, filt0)
    imgs = coefficient_images(prep, out, H_eff, wiener_eps=wiener_eps, progress=progress)
    return (imgs, out, H_eff) if return_coefs else imgs


def spca_denoise(prep: Prepared, wiener_eps: float = 0.1, progress: bool = False) -> np.ndarray:
    """sPCA Wiener-filtered images (CTF-corrected with each image's own |C|/√NPS, recoloured)."""
    return coefficient_images(prep, prep.spca.denoise(prep.coefs), prep.H, wiener_eps=wiener_eps,
                              progress=progress)


def choose_class_centres(nb: Neighbors, n_classes: int) -> np.ndarray:
    """Greedy centres: highest mean neighbour score first, skipping images already in a chosen class."""
    order = np.argsort(-nb.score.mean(axis=1))
    covered = np.zeros(nb.n, dtype=bool)
    centres = []
    for i in order:
        if covered[i]:
            continue
        centres.append(i)
        covered[i] = True
        covered[nb.j[i]] = True
        if len(centres) >= n_classes:
            break
    return np.array(centres, dtype=np.int64)


def class_averages(prep: Prepared, nb: Neighbors, centres, wiener_eps: float = 0.1) -> np.ndarray:
    """Average of each centre and its neighbours aligned onto it (in FB space: no interpolation)."""
    centres = np.asarray(centres, dtype=np.int64)
    C = (prep.coefs[centres] + _aligned_neighbour_sum(prep.basis, prep.coefs, nb, centres)) / (nb.s + 1)
    Hc = (prep.H[centres] + prep.H[nb.j[centres]].sum(axis=1)) / (nb.s + 1)
    return coefficient_images(prep, C, Hc, wiener_eps=wiener_eps)


def run_pipeline(source: ParticleSource, use_ctf: bool = True, method="mfvdm", n_neighbors=50, mask_radius_px=None,
                 k_max=10, m=50, denoise=True, progress=False, timings=None):
    """Convenience: prepare → neighbours (→ MFVDM denoising). Returns (prep, neighbours, denoised|None)."""
    import time

    t = timings if timings is not None else {}
    t0 = time.perf_counter()
    prep = prepare(source, use_ctf, mask_radius_px=mask_radius_px, progress=progress)
    t["prepare_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    nb = neighbors(prep, method, n_neighbors, k_max=k_max, m=m, progress=progress)
    t["neighbors_s"] = time.perf_counter() - t0
    den = None
    if denoise:
        t0 = time.perf_counter()
        den = mfvdm_denoise(prep, nb, progress=progress)
        t["denoise_s"] = time.perf_counter() - t0
    return prep, nb, den


def classify_fingerprint(source: ParticleSource, use_ctf: bool = True, **settings) -> dict:
    """Fingerprint of a 2-D run for :class:`cryoprism.io.checkpoint.Checkpoints`.

    Particle count, box, a digest of the first and last 256 images, of the CTF table and pixel size,
    the RID feature weighting (:data:`RID_WEIGHT_POWER`), the band-limit rule (:data:`BANDLIMIT_SSNR`),
    the centring rule when centring (:data:`CENTRING_RULE`) and the settings (method, neighbours, k̃,
    m, radius, centring, …), so checkpoints written with other
    features are not reused.
    """
    from cryoprism.io.checkpoint import digest

    n = source.n
    head, tail = _take(source, 0, min(n, 256)), _take(source, max(0, n - 256), n)
    ctf, pixel_size_A = source_ctf(source, use_ctf), source.pixel_size_A
    fp = {"n": int(n), "box": int(source.box), "images": digest(head, tail),
          "ctf": digest(ctf, None if pixel_size_A is None else float(pixel_size_A)),
          "rid_weight_power": RID_WEIGHT_POWER, "bandlimit_ssnr": BANDLIMIT_SSNR}
    if settings.get("centre"):
        fp["centring_rule"] = CENTRING_RULE
    fp.update(settings)
    return fp


def _neighbors_arrays(nb: Neighbors) -> dict:
    out = {"j": nb.j, "angle": nb.angle, "reflected": nb.reflected, "score": nb.score}
    if nb.shift_px is not None:
        out["shift_px"] = nb.shift_px
    return out


def _neighbors_from(arrays: dict) -> Neighbors:
    return Neighbors(j=arrays["j"], angle=arrays["angle"], reflected=arrays["reflected"], score=arrays["score"],
                     shift_px=arrays["shift_px"] if "shift_px" in arrays else None)


def run_neighbors(source: ParticleSource, use_ctf: bool = True, method: str = "mfvdm", n_neighbors: int = 50,
                  k_max: int = 10, m: int = 50, mask_radius_px=None, centre: bool | str = False,
                  checkpoints=None, progress: bool = False):
    """prepare → RID neighbours → VDM/MFVDM neighbours, each stage checkpointed. Returns ``(prep, nb)``.

    ``checkpoints``: a :class:`cryoprism.io.checkpoint.Checkpoints` (fingerprint from
    :func:`classify_fingerprint`) or None. Stages saved atomically once finished: ``centring`` (the
    shifts after each centring round, with ``centre``), ``prepare`` (the
    whitened FB coefficients, noise spectrum, CTF profiles, centring shifts; the sPCA is refitted from
    the coefficients, deterministic and seconds), ``rid`` (the initial neighbour list the graph is
    built from) and ``neighbors`` (the VDM/MFVDM result). When resuming, finished stages are loaded.
    """
    ck = checkpoints
    got = ck.load("prepare") if ck is not None else None
    if got is not None:
        arr, meta = got
        coefs = arr["coefs"]
        L = int(meta["L"])
        basis = fb_basis_2d(L, radius_px=L // 2, bandlimit=float(meta["bandlimit"]))
        spca = fit_spca(coefs, basis.k_slices, noise_var=1.0, threshold_scale=float(meta["spca_threshold"]))
        extras = {"centre_shifts_px": arr["centre_shifts_px"]} if "centre_shifts_px" in arr else {}
        if meta.get("centring_auto") is not None:
            extras["centring_auto"] = meta["centring_auto"]
        offsets = arr["shift_offsets_px"] if "shift_offsets_px" in arr else None
        shifted = () if offsets is None else tuple(
            [arr[f"shifted_k{k}"][g] for k in range(len(spca.vectors))] for g in range(len(offsets)))
        prep = Prepared(basis=basis, coefs=coefs, nps=arr["nps"], H=arr["H"], spca=spca,
                        mask_radius_px=float(meta["mask_radius_px"]), extras=extras,
                        shifted=shifted, shift_offsets_px=offsets)
    else:
        prep = prepare(source, use_ctf, mask_radius_px=mask_radius_px, centre=centre, progress=progress,
                       checkpoints=ck)
        if ck is not None:
            sh = {}
            if prep.shifted:
                sh = {f"shifted_k{k}": np.stack([P[k] for P in prep.shifted]) for k in range(len(prep.shifted[0]))}
                sh["shift_offsets_px"] = prep.shift_offsets_px
            arrays = {k: v for k, v in prep.extras.items() if isinstance(v, np.ndarray)}
            ck.save("prepare", {"coefs": prep.coefs, "nps": prep.nps, "H": prep.H, **arrays, **sh},
                    L=prep.basis.L, bandlimit=prep.basis.bandlimit, spca_threshold=1.0,
                    mask_radius_px=prep.mask_radius_px, centring_auto=prep.extras.get("centring_auto"))
    got = ck.load("rid") if ck is not None else None
    if got is not None:
        nb0 = _neighbors_from(got[0])
    else:
        nb0 = neighbors(prep, "rir", n_neighbors, progress=progress)
        if ck is not None:
            ck.save("rid", _neighbors_arrays(nb0))
    if method == "rir":
        return prep, nb0
    got = ck.load("neighbors") if ck is not None else None
    if got is not None:
        return prep, _neighbors_from(got[0])
    nb = neighbors(prep, method, n_neighbors, k_max=k_max, m=m, initial=nb0, progress=progress)
    if ck is not None:
        ck.save("neighbors", _neighbors_arrays(nb), method=method)
    return prep, nb


@dataclass
class ClassifyResult:
    """Neighbours and class averages of a 2-D run (:func:`classify`)."""

    prep: Prepared
    nb: Neighbors
    centres: np.ndarray       # rows of the input at the centre of each class
    averages: np.ndarray      # (n_classes, L, L) CTF-corrected class averages


def classify(source: ParticleSource, use_ctf: bool = True, *, method: str = "mfvdm", n_neighbors: int = 50,
             k_max: int = 10, m: int = 50, mask_radius_px=None, centre: bool = False, n_classes: int = 100,
             job=None, progress: bool = False) -> ClassifyResult:
    """Rotation-invariant neighbours (:func:`run_neighbors`) and class averages of the particles of
    ``source`` (``io.ParticleSource``; ``use_ctf=False`` ignores their CTF).

    With ``job`` (:class:`cryoprism.io.job.Job`): the finished stages are checkpointed in the job
    (fingerprint: :func:`classify_fingerprint`; ``job.resume`` skips them) and the outputs are written
    through it (:func:`write_classes`)."""
    ck = None
    if job is not None:
        job.add_inputs(**classify_fingerprint(source, use_ctf, method=method, neighbors=n_neighbors,
                                              k_max=k_max, m=m, radius_px=mask_radius_px, centre=centre))
        ck = job.checkpoints
    prep, nb = run_neighbors(source, use_ctf, method, n_neighbors, k_max=k_max, m=m,
                             mask_radius_px=mask_radius_px, centre=centre, checkpoints=ck, progress=progress)
    centres = choose_class_centres(nb, n_classes)
    res = ClassifyResult(prep, nb, centres, class_averages(prep, nb, centres))
    if job is not None:
        write_classes(job, res, source.pixel_size_A)
    return res


def write_classes(job, res: ClassifyResult, pixel_size_A) -> None:
    """Write a 2-D run through ``job``: neighbors.csv (i, j = 0-based rows, angle_deg counter-clockwise
    taking image j — mirrored first when reflected = 1 — onto image i, score), class_averages.mrcs with
    its class_averages.star (RELION 3.1, the input to ``abinitio``),
    class_centres.csv and gallery.png; records the figures in the job's summary."""
    import pandas as pd

    from cryoprism.report.plots import gallery_figure

    i, j, ang, refl, score = res.nb.pairs()
    job.write_csv("neighbors.csv", pd.DataFrame({"i": i, "j": j, "angle_deg": np.round(np.rad2deg(ang), 4),
                                                 "reflected": refl.astype(int), "score": score}))
    from cryoprism.io.particles import ParticleStack

    avg = ParticleStack.from_arrays(np.asarray(res.averages, np.float32), pixel_size_A=float(pixel_size_A))
    job.write_particles("class_averages.star", "class_averages.mrcs", avg, None)  # abinitio reads it
    job.write_csv("class_centres.csv", {"class": np.arange(len(res.centres)), "centre_row": res.centres,
                                        "n_members": np.full(len(res.centres), res.nb.s + 1)})
    job.save_figure("gallery.png", gallery_figure(res.averages, ncols=10), dpi=80)
    job.record(neighbors=int(res.nb.s), classes=len(res.centres),
               spca_components=int(res.prep.spca.ranks.sum()))


def denoise(source: ParticleSource, use_ctf: bool = True, *, method: str = "mfvdm", n_neighbors: int = 50,
            k_max: int = 10, m: int = 50, mask_radius_px=None, progress: bool = False) -> np.ndarray:
    """Denoised images ``(n, L, L)``: sPCA Wiener filter (``spca``), covariance Wiener filter (``cwf``,
    :func:`cryoprism.denoise.cwf.cwf_denoise`) or MFVDM (``mfvdm``), in the input's intensity units."""
    if method == "cwf":
        from cryoprism.denoise.cwf import cwf_denoise

        return cwf_denoise(source, use_ctf, mask_radius_px=mask_radius_px, progress=progress)
    prep = prepare(source, use_ctf, mask_radius_px=mask_radius_px, progress=progress)
    if method == "spca":
        return spca_denoise(prep, progress=progress)
    if method != "mfvdm":
        raise ValueError(f"method must be spca, cwf or mfvdm, got {method!r}")
    n = prep.coefs.shape[0]
    nb = neighbors(prep, "mfvdm", min(n_neighbors, n - 1), k_max=k_max, m=min(m, 2 * n - 3), progress=progress)
    return mfvdm_denoise(prep, nb, progress=progress)
