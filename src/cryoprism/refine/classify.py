"""3-D classification (the task of RELION's Class3D): K maps, per-particle class posteriors and poses
searched per class, starting from the poses of a consensus refinement.

Three steps (derivations and measurements: docs/refine.md, "3-D classification"):

1. **Start.** ``init="covariance"`` (default): the classes of the covariance route at the consensus
   poses (:func:`cryoprism.heterogeneity.analyze` with K states, its full-resolution step left to
   step 2). ``init="random"``: K random subsets (RELION's start).
2. **Maximum-likelihood classification with the poses fixed**: expectation–maximisation over the K
   class maps with each particle's own projection, shift and CTF at the full box, soft class
   posteriors, a Wiener prior on each class's difference from the common mean — the one
   implementation, :func:`cryoprism.heterogeneity.refine_classes.refine_classes`, shared with the
   heterogeneity route.
3. **Pose searches per class** (``pose_rounds`` times): the first ``global_rounds`` search every
   particle against every class map (a global grid, then coarse-to-fine local stencils and shift
   grids, :mod:`cryoprism.refine.search`) and give it the pose and class of the best-scoring map; the
   later ones search locally against the particle's own class map, up to ``resolution_A``; after each,
   step 2 again from the current classes at the new poses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from cryoprism.parallel import map_batches
from cryoprism.refine import search
from cryoprism.refine.pipeline import _ctf_at, _data_at, _images_at, _shell_power, shell_index, working_box
from cryoprism.refine.symmetry import symmetrize, symmetry_group

#: coarse-to-fine local search stages: rotation stencil step (degrees) and shift step (pixels)
LOCAL_STEPS_DEG = (4.0, 2.0, 1.0, 0.5)
LOCAL_SHIFT_STEPS_PX = (1.0, 0.5, 0.25, 0.25)
#: background of the images for the white-noise variance: beyond this fraction of the box from the centre
BACKGROUND_RADIUS = 0.45


@dataclass
class ClassifyResult:
    labels: np.ndarray  # 0..K-1
    probability: np.ndarray  # posterior of the chosen class
    volumes: list  # K maps (full box)
    weights: np.ndarray  # π_c
    iterations: list = field(default_factory=list)  # one record per round
    rotations: np.ndarray | None = None  # (n, 3, 3) poses after the per-class local refinement
    origins_A: np.ndarray | None = None  # (n, 2)
    responsibilities: np.ndarray | None = None  # (n, K)
    info: dict = field(default_factory=dict)


def background_noise_variance(source, radius_fraction: float = BACKGROUND_RADIUS, n_max: int = 4000) -> float:
    """White-noise variance per pixel of the full-box images from their background (``r > radius``):
    the heterogeneity route's estimate (:func:`cryoprism.heterogeneity.data.source_noise_variance`)."""
    from cryoprism.heterogeneity.data import source_noise_variance

    return source_noise_variance(source, radius_fraction, n_max)


def _posed(source, images, rotations, origins_A):
    """The particles of ``source`` with the given poses (an in-memory :class:`ParticleStack`)."""
    from cryoprism.io.particles import ParticleStack

    return ParticleStack.from_arrays(images, pixel_size_A=float(source.pixel_size_A), rotations=rotations,
                                     origins_A=origins_A, ctf=source.ctf_params() if source.has_ctf else None)


def _full_box(volumes, L: int) -> list:
    """Class volumes at the full box ``L``: :func:`refine_classes` chooses its own working box from the
    data (Fourier-cropped, same physical extent), so smaller maps are Fourier-padded back."""
    from cryoprism.fourier.resample import upsample

    return [np.asarray(v, np.float32) if np.shape(v)[-1] == L else
            np.asarray(upsample(np.asarray(v, np.float64), L, ndim=3)[0], np.float32) for v in volumes]


def initial_labels(posed, K: int, init: str, seed: int, n_workers=None, progress: bool = False):
    """Starting classes ``(n,)``: the covariance route's (``covariance``) or random subsets (``random``)."""
    if init == "random":
        return np.random.default_rng(seed).integers(0, K, posed.n)
    if init != "covariance":
        raise ValueError(f"init must be covariance or random, got {init!r}")
    from cryoprism.heterogeneity.pipeline import analyze, resolve_nres

    het = analyze(posed, resolve_nres(posed.box, float(posed.pixel_size_A), None, None), classes=K,
                  refine_full=False, reconstruct=False, seed=seed, n_workers=n_workers, progress=progress)
    return np.asarray(het.labels, np.int64)


def refine_poses(source, volumes, labels, rotations, origins_px, resolution_A: float, *, grid_size: int = 0,
                 images_w=None, batch_size: int = 128, n_workers=None):
    """Pose search of each particle against the class maps, up to ``resolution_A``.

    ``volumes``: K maps (full box ``L``); ``rotations`` ``(n, 3, 3)``, ``origins_px`` ``(n, 2)`` (full-box
    pixels): the starting poses. ``labels`` ``(n,)``: search each particle against its class's map only;
    ``None``: against every map, and keep the class whose best pose scores highest (the weighted
    normalised correlation of :mod:`cryoprism.refine.search`, whose square is the log-likelihood with the
    scale profiled out, so scores of different maps compare). ``grid_size`` > 0: first a global search on
    a grid of that many rotations at the current origins (a shortlist of 4 plus the current pose), then
    the local stages; 0: local stages only (:data:`LOCAL_STEPS_DEG` / :data:`LOCAL_SHIFT_STEPS_PX`, 27
    rotations × a shift grid each). Returns ``(rotations, origins_px, labels, scores (n, K))``.
    """
    from cryoprism.fourier.resample import downsample
    from cryoprism.geometry.grids import so3_grid_views, so3_grid_views_for
    from cryoprism.image.masks import spherical_mask

    L, px = int(source.box), float(source.pixel_size_A)
    k = min(shell_index(resolution_A, L, px), L / 2 - 1)
    Lw = working_box(k, L)
    px_w = px * L / Lw
    fs = search.fourier_set(Lw, k)
    imgs = images_w if images_w is not None else _images_at(source, Lw, batch_size, n_workers)
    ctf = source.ctf_params() if source.has_ctf else None
    inv_s2 = (1.0 / np.maximum(_shell_power(source, L), 1e-30))[fs.shell].astype(np.float32)
    sphere = spherical_mask(L, L / 2 - 2, 2.0)
    refs = [np.asarray(v, np.float32) * sphere for v in volumes]
    refs = [r if Lw == L else downsample(r, Lw, ndim=3)[0].astype(np.float32) for r in refs]
    K = len(refs)
    steps, shifts = list(LOCAL_STEPS_DEG), list(LOCAL_SHIFT_STEPS_PX)
    grid = P = None
    if grid_size > 0:
        n_dir, n_psi = so3_grid_views_for(grid_size)
        grid, _ = so3_grid_views(n_dir, n_psi)
        first = float(np.rad2deg(np.sqrt(4 * np.pi / n_dir))) / 2  # half the grid spacing
        while first > steps[0] * 1.01:
            steps.insert(0, first)
            shifts.insert(0, shifts[0])
            first /= 2
        P = [search.GridSlices.of(search.slices(r, grid, fs)) for r in refs]
    rot0 = np.asarray(rotations, np.float64)
    org0 = np.asarray(origins_px, np.float64)
    n = len(rot0)
    rot = np.repeat(rot0[:, None], K, axis=1)
    org = np.repeat(org0[:, None], K, axis=1)
    score = np.full((n, K), -np.inf)

    def job(r):
        idx = np.arange(*r)
        Y = _data_at(imgs, idx, L, fs)
        C = _ctf_at(ctf, idx, Lw, px_w, fs)
        out_r, out_o, out_s = rot[idx].copy(), org[idx].copy(), np.full((len(idx), K), -np.inf)
        for c, ref in enumerate(refs):
            m = np.arange(len(idx)) if labels is None else np.flatnonzero(labels[idx] == c)
            if m.size == 0:
                continue
            start, o = rot0[idx[m]][:, None], org0[idx[m]]
            if P is not None:
                A = (np.conj(Y[m]) * C[m] * inv_s2[None]).astype(np.complex64)
                sl = search.global_search(A, C[m] * C[m] * inv_s2[None], P[c], o, np.zeros((1, 2)), fs, L, 4)
                start = np.concatenate([start, grid[sl.index]], axis=1)
                o = np.concatenate([o[:, None], sl.origins_px], axis=1)
            for sd, ss in zip(steps, shifts):
                cand = (start[:, :, None] @ search.rotation_stencil(sd)[None, None]).reshape(m.size, -1, 3, 3)
                lr = search.local_search(Y[m], C[m], inv_s2, ref, cand, o, search.shift_grid(1.5 * ss, ss), fs, L)
                start, o = lr.rotations[:, None], lr.origins_px
            out_r[m, c], out_o[m, c], out_s[m, c] = lr.rotations, lr.origins_px, lr.score
        return idx, out_r, out_o, out_s

    ranges = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    for idx, r_, o_, s_ in map_batches(job, ranges, n_workers=n_workers, progress=False):
        rot[idx], org[idx], score[idx] = r_, o_, s_
    best = np.argmax(score, axis=1) if labels is None else np.asarray(labels, np.int64)
    rows = np.arange(n)
    return rot[rows, best], org[rows, best], best, score


def classify3d(source, K: int, rotations, origins_A, *, init: str = "covariance", pose_rounds: int = 2,
               global_rounds: int = 1, grid_size: int = 4608,
               resolution_A: float = 20.0, iterations: int = 15, box: int | None = None, symmetry: str = "C1",
               seed: int = 0, batch_size: int = 128, n_workers: int | None = None, progress: bool = True,
               log=None) -> ClassifyResult:
    """Classify the particles of ``source`` (``io.ParticleSource``) into ``K`` maps, starting from the
    poses ``rotations`` ``(n, 3, 3)`` and ``origins_A`` ``(n, 2)`` (e.g. of :func:`cryoprism.refine.refine`).

    ``init``: ``covariance`` or ``random`` (module docstring). ``iterations``: at most this many E-steps
    of each maximum-likelihood classification (it stops earlier when the log-likelihood stalls).
    ``pose_rounds``: rounds of pose refinement per class, each followed by a classification (0: poses
    fixed, RELION's ``--skip_align``); the first ``global_rounds`` of them search every particle against
    every class map globally (``grid_size`` rotations, then local stages) and keep the best-scoring
    class's pose, the others search locally against the particle's own class map. ``resolution_A``: the
    pose searches compare up to this
    resolution. ``box``: classify on images Fourier-cropped to ``box`` (default: the full box).
    """
    from cryoprism.heterogeneity.refine_classes import refine_classes

    t0, c0 = time.perf_counter(), time.process_time()
    n, L, px = int(source.n), int(source.box), float(source.pixel_size_A)
    group = symmetry_group(symmetry)
    images = np.asarray(source.images(), np.float32)
    rot = np.asarray(rotations, np.float64).reshape(n, 3, 3)
    org = np.asarray(origins_A, np.float64).reshape(n, 2) / px
    noise_var = background_noise_variance(source)
    posed = _posed(source, images, rot, org * px)
    labels = initial_labels(posed, K, init, seed, n_workers, progress=False)
    hist = [{"round": 0, "step": "start", "init": init, "sizes": np.bincount(labels, minlength=K).tolist(),
             "time_s": round(time.perf_counter() - t0, 1)}]
    if log:
        log.info("3-D classification: %s start, class sizes %s", init, hist[0]["sizes"])
    imgs_w = None
    cr = None
    per_round = [labels.copy()]
    for rnd in range(pose_rounds + 1):
        t1 = time.perf_counter()
        if rnd > 0:
            vols = [symmetrize(v, group) for v in _full_box(cr.volumes, L)] if len(group) > 1 \
                else _full_box(cr.volumes, L)
            if imgs_w is None:
                k = min(shell_index(resolution_A, L, px), L / 2 - 1)
                imgs_w = _images_at(source, working_box(k, L), batch_size, n_workers)
            old = rot
            glob = rnd <= global_rounds
            rot, org, lab_p, _ = refine_poses(source, vols, None if glob else labels, rot, org, resolution_A,
                                              grid_size=grid_size if glob else 0, images_w=imgs_w,
                                              batch_size=batch_size, n_workers=n_workers)
            labels = lab_p
            from cryoprism.geometry.rotations import angular_distance_deg

            change = float(np.median(angular_distance_deg(old, rot)))
            posed = _posed(source, images, rot, org * px)
        cr = refine_classes(posed, labels, K, noise_var, box=box, max_iterations=iterations, seed=seed,
                            n_workers=n_workers, progress=progress)
        changed = float(np.mean(cr.labels != labels))
        labels = np.asarray(cr.labels, np.int64)
        rec = {"round": rnd, "step": "classify" if rnd == 0 else
               ("global poses + classify" if rnd <= global_rounds else "local poses + classify"),
               "e_steps": int(cr.iterations),
               "log_likelihood": float(cr.log_likelihood[-1]) if cr.log_likelihood else None,
               "changed": changed, "sizes": np.bincount(labels, minlength=K).tolist(),
               "time_s": round(time.perf_counter() - t1, 1)}
        if rnd > 0:
            rec["median_angle_change_deg"] = change
        hist.append(rec)
        per_round.append(labels.copy())
        if log:
            log.info("3-D classification round %d: %s", rnd, rec)
    vols = [symmetrize(v, group).astype(np.float32) for v in _full_box(cr.volumes, L)]
    gamma = np.asarray(cr.responsibilities)
    info = {"time_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
            "noise_var": noise_var, "init": init, "pose_rounds": pose_rounds,
            "global_rounds": global_rounds, "labels_per_round": per_round}
    return ClassifyResult(labels, gamma.max(1), vols, np.asarray(cr.proportions), hist, rot, org * px, gamma, info)
