"""Gold-standard auto-refinement: two half-sets, each aligned to its own map, frequency marching.

One iteration (docs/refine.md):

1. working box ``Lw = 2 (k_lim + pad)`` (frequency marching: images and maps Fourier-cropped, so every
   cost scales with the current resolution, not the box);
2. pose search of every particle against its half-set's map (first iteration: global grid search with
   a shortlist; later: local stencil around the current pose with the step halved each iteration);
3. reconstruction of each half-set from its own poses (least squares with a Wiener prior estimated
   from that half alone: ``cryoprism.reconstruct.reconstruct_mean(regularization="auto")``);
4. FSC between the half-maps → next frequency limit and the maps' per-shell weights; per-shell noise
   spectrum from the residuals at the chosen poses.

The halves never meet before the end, where the full map is reconstructed from all particles.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from cryoprism.fourier import fft2c
from cryoprism.fourier.resample import downsample
from cryoprism.geometry import matrix_to_euler
from cryoprism.geometry.grids import so3_grid_views, so3_grid_views_for
from cryoprism.geometry.rotations import angular_distance_deg
from cryoprism.image.filters import lowpass
from cryoprism.image.masks import spherical_mask
from cryoprism.metrics.fsc import fsc as _fsc
from cryoprism.metrics.fsc import resolution_at
from cryoprism.metrics.postprocess import fsc_weight
from cryoprism.parallel import map_batches
from cryoprism.reconstruct import half_set_labels, reconstruct_mean
from cryoprism.reconstruct.mean import particle_radius_px
from cryoprism.refine import search
from cryoprism.refine.masks import auto_solvent_mask
from cryoprism.refine.symmetry import symmetrize, symmetry_group


@dataclass
class RefineSettings:
    """Settings of :func:`refine` (defaults are what the benchmark uses)."""

    initial_lowpass_A: float | None = None  # low-pass of the starting map and first frequency limit
    # (default from the box: :func:`initial_lowpass_A`, 40 Å or finer so that ≥ 6 shells are compared)
    max_iterations: int = 14
    grid_size: int = 4608  # rotations of the global grid (~12° covering)
    shortlist: int = 4  # best grid rotations refined locally in the global iterations
    global_iterations: int = 2  # iterations that search the whole grid (the second at fixed shifts)
    regrid_size: int = 4608  # rotations of the later global passes (scored at fixed shifts)
    local_shift_step_px: float = 1.0  # first local shift step (halved each iteration)
    min_step_deg: float | None = None  # finest angular step (default from the box: ~0.5 px at Nyquist)
    min_shift_step_px: float = 0.25
    shift_range_px: float | None = None  # translational search radius of the first iteration (default L/4)
    coarse_grid_size: int = 576  # rotations of the first iteration's translational search (~30° spacing)
    origin_candidates: int = 5  # origins kept by that search, each searched with the whole grid
    rescue_ratio: float = 0.8  # later global passes: particles whose fitted scale at their best grid pose is
    # below this fraction of the batch's median are searched over all shifts again (0: off)
    noise: str = "shell"  # "shell" (per-shell spectrum from residuals) or "white"
    margin_shells: int = 3  # shells beyond the FSC=0.143 shell that the next iteration compares
    symmetry: str = "C1"
    solvent_mask: bool = True  # automatic soft solvent mask on the references after the first iteration
    independent_starts: bool = True  # each half from its own copy of the start, phases randomised beyond
    # the start's limit (docs/refine.md, "The gold standard and the shared start")
    batch_size: int = 128
    seed: int = 0


@dataclass
class RefineResult:
    volume: np.ndarray
    half_maps: tuple
    fsc: object  # FSCResult between the half-maps (unmasked)
    fsc_masked: object | None
    mask: np.ndarray | None
    rotations: np.ndarray
    origins_A: np.ndarray
    subsets: np.ndarray  # 1 / 2
    iterations: list
    resolution_A: float
    resolution_masked_A: float | None
    pixel_size_A: float
    table: pd.DataFrame = field(repr=False, default=None)
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# building blocks


def match_reference(volume, ref_pixel_size_A: float | None, L: int, pixel_size_A: float, path=None, warn=None):
    """The reference on the particles' box and pixel size: Fourier-resampled when its pixel size
    differs, centre-cropped/padded when its box differs; refused (InputError) when the result would
    cover less than half the particle box or the pixel sizes are too far apart to resample. Every
    change (and an unknown pixel size, taken as the particles') is reported through ``warn(message)``
    (e.g. a logger's ``warning``), never made silently."""
    from cryoprism.errors import InputError
    from cryoprism.fourier.resample import crop_or_pad, fourier_resize

    warn = warn or (lambda msg: None)
    v = np.asarray(volume, np.float32)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise InputError(f"reference must be a cubic volume, got shape {v.shape}", path)
    if not ref_pixel_size_A:
        warn(f"reference pixel size unknown (0 in the header): taken as the particles' {pixel_size_A:g} Å")
    px = float(ref_pixel_size_A) if ref_pixel_size_A else float(pixel_size_A)
    if abs(px - pixel_size_A) > 1e-3 * pixel_size_A:
        n_new = int(round(v.shape[0] * px / pixel_size_A))
        if n_new < 8 or n_new > 4 * L:
            raise InputError(f"reference pixel size {px:g} Å cannot be resampled to the particles' "
                             f"{pixel_size_A:g} Å (box {v.shape[0]} → {n_new})", path)
        warn(f"reference pixel size {px:g} Å differs from the particles' {pixel_size_A:g} Å: Fourier-resampled, "
             f"box {v.shape[0]} → {n_new}")
        v = fourier_resize(v, n_new, ndim=3)[0]
    if v.shape[0] != L:
        if v.shape[0] * 2 < L:
            raise InputError(f"reference box {v.shape[0]} (at {pixel_size_A:g} Å) covers less than half the "
                             f"particle box {L}", path)
        warn(f"reference box {v.shape[0]} differs from the particle box {L}: centre-"
             f"{'cropped' if v.shape[0] > L else 'padded'}")
        v = crop_or_pad(v, L, ndim=3)
    return v.astype(np.float32)


def working_box(k_lim: float, L: int, pad: int = 3) -> int:
    """Even box holding frequencies up to ``k_lim + pad`` (at most ``L``)."""
    Lw = 2 * int(np.ceil(k_lim + pad)) + 2
    return int(min(L, Lw + (Lw % 2)))


#: the initial low-pass never compares fewer Fourier shells than this (small boxes)
MIN_INITIAL_SHELLS = 6


def initial_lowpass_A(L: int, pixel_size_A: float, ceiling_A: float = 40.0,
                      min_shells: int = MIN_INITIAL_SHELLS) -> float:
    """Default low-pass of the starting map (Å): ``min(ceiling_A, L · pixel_size_A / min_shells)``.

    40 Å (RELION's usual ``--ini_high``) keeps the start from biasing the poses with details it may not
    have; in a small box (80 Å: 32 px at 2.5 Å) 40 Å is shell 2, too few coefficients to tell
    orientations apart, so the limit moves out until ``min_shells`` shells are compared
    (docs/refine.md, "Small particles and small boxes")."""
    return float(min(ceiling_A, L * pixel_size_A / min_shells))


def independent_from_shell(lowpass_A: float, L: int, pixel_size_A: float) -> int:
    """First Fourier shell where the two halves' starts carry nothing in common: the one after the start's
    low-pass shell ``k₀ = L Δ / lowpass_A`` (integer shells ``0 … ⌊k₀⌋`` hold the shared start)."""
    return int(np.floor(shell_index(lowpass_A, L, pixel_size_A) + 1e-9)) + 1


def half_starts(start: np.ndarray, from_shell: int, seed: int = 0) -> list[np.ndarray]:
    """Two copies of the low-passed ``start``, one per half-set, each with the phases of shells
    ``k ≥ from_shell`` randomised independently (:func:`cryoprism.metrics.postprocess.randomize_phases`,
    amplitudes kept): the halves share the start only below ``from_shell``, so that their FSC beyond
    it owes nothing to a common origin (RELION starts both halves from one map low-passed to 40–60 Å
    for the same reason, docs/refine.md "The gold standard and the shared start")."""
    from cryoprism.metrics.postprocess import randomize_phases

    rng = np.random.default_rng([seed, 18])
    return [randomize_phases(start, from_shell, rng).astype(np.float32) for _ in range(2)]


@dataclass
class GoldFSC:
    """The half-maps' FSC with what their shared start explains removed (:func:`start_corrected_fsc`)."""

    raw: object  # FSCResult of the half-maps
    start_only: object  # FSCResult of the null: the halves' shared band alone, through the support
    corrected: object  # FSCResult: (raw − start_only) / (1 − start_only) from ``from_shell`` on
    from_shell: int
    resolution_A: float  # FSC 0.143 of ``corrected``
    validated: bool  # the corrected FSC stays ≥ 0.143 beyond the shared band


def start_corrected_fsc(raw, half_maps, pixel_size_A: float, from_shell: int, support_px: float) -> GoldFSC:
    """Gold-standard FSC that counts only what the halves found independently of their shared start.

    The halves share the start's shells ``k < from_shell`` (:func:`half_starts`). Reconstruction inside a
    hard ball (the support, ``support_px``) spreads that shared band into every shell (the sharp edge
    has power at all frequencies), so pure-noise particles refined from one start agree beyond it.
    As Chen et al. (2013) do for a mask, the null is measured: both half-maps with the phases of shells
    ``k ≥ from_shell`` randomised independently, cut by the same ball, give the FSC ``F_s`` that the
    shared band alone produces — taken in expectation over the phases
    (:func:`~cryoprism.metrics.postprocess.expected_randomized_masked_fsc`, as post-processing does);
    ``F = (F_raw − F_s) / (1 − F_s)`` for ``k ≥ from_shell``
    (:func:`~cryoprism.metrics.postprocess.correct_fsc`). The resolution (FSC 0.143 of ``F``) is
    *validated* only when ``F`` is still ≥ 0.143 at ``from_shell``: otherwise the halves agree only
    as far as the start they were given."""
    from cryoprism.metrics.fsc import FSCResult
    from cryoprism.metrics.postprocess import correct_fsc, expected_randomized_masked_fsc
    from cryoprism.reconstruct.mean import sphere_mask

    ball = sphere_mask(half_maps[0].shape[0], support_px).astype(np.float32)
    null = expected_randomized_masked_fsc(half_maps[0], half_maps[1], ball, pixel_size_A, from_shell)
    curve = correct_fsc(raw.curve, null.curve, from_shell)
    corr = FSCResult(freq_invA=raw.freq_invA, curve=curve, n_voxels=raw.n_voxels, pixel_size_A=raw.pixel_size_A,
                     box=raw.box)
    validated = bool(from_shell < len(curve) and curve[from_shell] >= 0.143
                     and np.all(np.asarray(raw.curve[1:from_shell]) >= 0.143))
    return GoldFSC(raw, null, corr, from_shell, resolution_at(corr, 0.143), validated)


def shell_index(res_A: float, L: int, pixel_size_A: float) -> float:
    return float(L * pixel_size_A / res_A) if np.isfinite(res_A) and res_A > 0 else 0.0


def _images_at(stack, Lw: int, batch_size: int, n_workers=None) -> np.ndarray:
    """All particle images Fourier-cropped to ``Lw`` (float32 ``(n, Lw, Lw)``), read in batches."""
    L = stack.box
    ranges = [(a, min(a + 512, stack.n)) for a in range(0, stack.n, 512)]

    src = stack if Lw == L else stack.cropped(Lw)   # Fourier-cropped view of the one particle source

    def job(r):
        return src.images(np.arange(*r)).astype(np.float32)

    return np.concatenate(map_batches(job, ranges, n_workers=n_workers, progress=False), 0)


def _ctf_at(ctf, idx, Lw: int, px_w: float, fs) -> np.ndarray:
    from cryoprism.ctf.model import ctf_2d

    if ctf is None:
        return np.ones((len(idx), fs.n), np.float32)
    c = ctf_2d(Lw, px_w, ctf.take(idx), dtype=np.float32)
    c = np.broadcast_to(c, (len(idx), Lw, Lw)) if c.ndim == 2 else c
    return np.ascontiguousarray(c[:, fs.iy, fs.ix])


def _data_at(imgs_w, idx, L: int, fs) -> np.ndarray:
    """Half-plane coefficients of the cropped images, in full-box units (× (L/Lw)²)."""
    Lw = imgs_w.shape[-1]
    F = fft2c(imgs_w[idx].astype(np.float32))[:, fs.iy, fs.ix]
    return (F * (L / Lw) ** 2).astype(np.complex64)


def _shell_power(stack, L: int, n_max: int = 2000) -> np.ndarray:
    """Mean ``|Y(k)|²`` per integer shell ``0 … L//2`` over up to ``n_max`` particles (the initial noise
    spectrum: at low SNR the images are mostly noise)."""
    from cryoprism.fourier.resample import power_spectrum, radial_average

    idx = np.linspace(0, stack.n - 1, min(stack.n, n_max)).astype(np.int64)
    acc = np.zeros((L, L))
    for a in range(0, len(idx), 500):  # |F|² = N · power_spectrum (N = L² pixels)
        acc += power_spectrum(stack.images(idx[a:a + 500]).astype(np.float64)).sum(0) * (L * L)
    return radial_average(acc / len(idx), n_bins=L // 2 + 1)


# ------------------------------------------------------------------------------------------------
# the refinement


def refine(source, reference, pixel_size_A: float | None = None, *, job=None, mask=None,
           settings: RefineSettings | None = None, progress: bool = True, n_workers: int | None = None,
           **overrides) -> RefineResult:
    """Gold-standard refinement of poses and map from particles and a starting map.

    ``source``: a ``cryoprism.io.ParticleStack`` (``read_particles``); poses in it are ignored (a
    global search starts the run); ``rlnRandomSubset`` (1/2) is used as the half-set split when
    present, else a seeded random split. ``reference``: ``(L, L, L)`` starting map, on the particles'
    pixel size (``pixel_size_A``: the reference's pixel size when it differs; resampled then).
    ``mask``: optional ``(L, L, L)`` soft mask applied to the references (else a sphere plus, after
    the first iteration, an automatic solvent mask). ``settings`` / keyword overrides: see
    :class:`RefineSettings`. ``job``: a ``cryoprism.io.job.Job`` — checkpoints after every iteration
    (resumed when the job was opened with ``resume=True``), the log and the per-iteration record.
    """
    st = settings or RefineSettings()
    if overrides:
        st = RefineSettings(**{**asdict(st), **overrides})
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    log = job.log if job is not None else None
    if log is not None and log.level == 0:  # the job's log file records the iterations
        import logging

        log.setLevel(logging.INFO)
    stack = source
    n, L, px = int(stack.n), int(stack.box), float(stack.pixel_size_A)
    ref = match_reference(reference, pixel_size_A, L, px, warn=log.warning if log else None)
    ctf = stack.ctf_params() if stack.has_ctf else None
    if ctf is None and log:
        log.warning("no CTF parameters in the particle table: refining without CTF")
    group = symmetry_group(st.symmetry)
    halves = half_set_labels(n, getattr(stack, "table", None), st.seed)
    sel = [np.flatnonzero(halves == h) for h in range(2)]
    sphere = spherical_mask(L, L / 2 - 2, 2.0)
    user_mask = None if mask is None else np.asarray(mask, np.float32)
    lp_A = st.initial_lowpass_A or initial_lowpass_A(L, px)
    if log:
        log.info("initial low-pass %.1f Å (shell %.1f of %d)", lp_A, shell_index(lp_A, L, px), L // 2)
    k_lim = min(shell_index(lp_A, L, px), L / 2 - 1)
    start = lowpass(ref, px, resolution_A=lp_A, ndim=3).astype(np.float32)
    shared_shells = independent_from_shell(lp_A, L, px)
    starts = half_starts(start, shared_shells, st.seed) if st.independent_starts else [start, start]
    refs = [s * (sphere if user_mask is None else user_mask) for s in starts]
    weights = [None, None]
    noise = _shell_power(stack, L)
    rot = np.tile(np.eye(3), (n, 1, 1))
    org = np.zeros((n, 2))
    support_px = L / 2 - 2  # support radius of the half-map reconstructions (full-box px)
    step_deg = None
    shift_step = st.local_shift_step_px
    min_step = st.min_step_deg or float(np.rad2deg(0.5 / (L / 2)))
    history: list[dict] = []
    rescued_idx = np.zeros(0, np.int64)  # particles searched over all shifts again (last rescue pass)
    it0 = 0
    ck = job.checkpoints if job is not None else None
    if ck is not None:
        got = ck.load("refine")
        if got is not None:
            a, meta = got
            rot, org, noise = a["rotations"], a["origins_px"], a["noise"]
            refs = [a["ref1"], a["ref2"]]
            weights = [a["w1"] if a["w1"].size else None, a["w2"] if a["w2"].size else None]
            k_lim, step_deg, shift_step = float(meta["k_lim"]), meta["step_deg"], float(meta["shift_step"])
            history, it0 = list(meta["history"]), int(meta["iteration"]) + 1
            support_px = float(meta.get("support_px", support_px))
            if log:
                log.info("resuming after iteration %d", it0)

    from tqdm.auto import tqdm

    bar = tqdm(total=st.max_iterations, initial=it0, desc="refine", disable=not progress, leave=True)
    stale = 0
    converged = bool(history and history[-1].get("converged"))
    it = it0
    for it in range(it0, st.max_iterations):
        if converged:
            break
        t_it = time.perf_counter()
        Lw = working_box(k_lim, L)
        px_w = px * L / Lw
        fs = search.fourier_set(Lw, k_lim)
        imgs_w = _images_at(stack, Lw, st.batch_size, n_workers)
        inv_s2 = (1.0 / np.maximum(noise if st.noise == "shell" else np.full_like(noise, noise[1:].mean()),
                                   1e-30))[fs.shell].astype(np.float32)
        refs_w = [r if Lw == L else downsample(r, Lw, ndim=3)[0].astype(np.float32) for r in refs]
        wk = [None if w is None else np.asarray(w)[np.minimum(fs.shell, len(w) - 1)] for w in weights]
        old_rot = rot.copy()
        res_acc = np.zeros(int(fs.shell.max()) + 1)
        cnt_acc = np.zeros_like(res_acc)
        rescued = []
        first = it == 0
        regrid = it < st.global_iterations
        if regrid:
            n_dir, n_psi = so3_grid_views_for(st.grid_size if first else st.regrid_size)
            grid, _ = so3_grid_views(n_dir, n_psi)
            grid_step = float(np.rad2deg(np.sqrt(4 * np.pi / n_dir)))
        rescue = regrid and not first and st.rescue_ratio > 0
        if first or rescue:
            g_step = max(1.0, L / (4 * max(k_lim, 1)))
            offsets_all = search.shift_grid(st.shift_range_px or L / 4, g_step)  # the whole shift range
            offsets0 = search.shift_grid(g_step, g_step)  # around each candidate origin
            coarse, _ = so3_grid_views(*so3_grid_views_for(st.coarse_grid_size))
        if first:
            shift_step = g_step / 2
            step_deg = grid_step / 2
        # coarse-to-fine stages: the stencil step halves from the grid's half-spacing (global
        # iterations) down to this iteration's step; shift steps halve alongside
        steps = [step_deg]
        if regrid:
            steps = [grid_step / 2]
            while steps[-1] / 2 >= step_deg * 0.99:
                steps.append(steps[-1] / 2)
        shifts = [max(st.min_shift_step_px, shift_step / 2 ** j) for j in range(len(steps))]
        for h in range(2):
            idx_h = sel[h]
            P = search.GridSlices.of(search.slices(refs_w[h], grid, fs, wk[h])) if regrid else None
            Pc = search.GridSlices.of(search.slices(refs_w[h], coarse, fs, wk[h])) if first or rescue else None

            def job_s(r, idx_h=idx_h, h=h, P=P, Pc=Pc):
                idx = idx_h[r[0]:r[1]]
                Y = _data_at(imgs_w, idx, L, fs)
                C = _ctf_at(ctf, idx, Lw, px_w, fs)
                o_start = org[idx]
                start = rot[idx][:, None]
                flagged = idx[:0]
                if P is not None:  # the whole grid: a shortlist of rotations (and origins)
                    A = (np.conj(Y) * C * inv_s2[None]).astype(np.complex64)
                    if first:  # all shifts against a coarse grid → candidate origins → the whole grid
                        o0 = search.origin_candidates(A, C * C * inv_s2[None], Pc, offsets_all, fs, L,
                                                      st.origin_candidates, 2.0 * g_step)
                        sl = search.global_search(A, C * C * inv_s2[None], P, o0, offsets0, fs, L, st.shortlist)
                        start, o_start = grid[sl.index], sl.origins_px
                    else:
                        w2 = C * C * inv_s2[None]
                        sl = search.global_search(A, w2, P, o_start, np.zeros((1, 2)), fs, L, st.shortlist)
                        start = np.concatenate([start, grid[sl.index]], axis=1)
                        if rescue:  # low fitted scale: all shifts again, against the better map
                            low = search.low_scale(sl, w2, P, st.rescue_ratio)
                            o_start = np.repeat(o_start[:, None], start.shape[1], axis=1)
                            if low.any():
                                o0 = search.origin_candidates(A[low], w2[low], Pc, offsets_all, fs, L,
                                                              st.origin_candidates, 2.0 * g_step)
                                s2 = search.global_search(A[low], w2[low], P, o0, offsets0, fs, L, st.shortlist)
                                start[low, 1:], o_start[low, 1:] = grid[s2.index], s2.origins_px
                            flagged = idx[low]
                lr = None
                for j, (sd, ss) in enumerate(zip(steps, shifts)):
                    stencil = search.rotation_stencil(sd)
                    cand = (start[:, :, None] @ stencil[None, None]).reshape(len(idx), -1, 3, 3)
                    lr = search.local_search(Y, C, inv_s2, refs_w[h], cand, o_start,
                                             search.shift_grid(1.5 * ss, ss), fs, L, wk[h])
                    start, o_start = lr.rotations[:, None], lr.origins_px
                return idx, lr, flagged

            ranges = [(a, min(a + st.batch_size, len(idx_h))) for a in range(0, len(idx_h), st.batch_size)]
            for idx, lr, flagged in map_batches(job_s, ranges, n_workers=n_workers, progress=False):
                rot[idx], org[idx] = lr.rotations, lr.origins_px
                rescued.append(flagged)
                res_acc += lr.residual_shell
                cnt_acc += lr.count_shell
        step_deg = max(min_step, steps[-1] / 2)
        shift_step = max(st.min_shift_step_px, shifts[-1] / 2)
        # noise spectrum inside the compared band (full-box units)
        ok = cnt_acc > 0
        noise = noise.copy()
        noise[:len(res_acc)][ok] = res_acc[ok] / cnt_acc[ok]
        # half-maps at the working box
        maps = _reconstruct_halves(imgs_w, rot, org * Lw / L, ctf, px_w, sel, group, n_workers,
                                   support_px * Lw / L)
        support_px = _support_radius(maps, L)
        f = _fsc(maps[0], maps[1], px_w)
        res143 = resolution_at(f, 0.143)
        k143 = shell_index(res143, L, px)
        new_k = float(min(L / 2 - 1, max(k_lim, k143 + st.margin_shells)))
        stale = stale + 1 if new_k <= k_lim + 0.5 else 0
        k_lim = new_k
        up = [m if Lw == L else _pad_to(m, L) for m in maps]
        masks = [_reference_mask(u, px, sphere, user_mask, st.solvent_mask and it >= 1) for u in up]
        refs = [(u * m).astype(np.float32) for u, m in zip(up, masks)]
        w = fsc_weight(f.curve)
        weights = [w, w]
        dang = float(np.median(angular_distance_deg(old_rot, rot))) if it > 0 else float("nan")
        rec = {"iteration": it + 1, "box": Lw, "k_max": round(float(fs.k_max), 2),
               "compared_resolution_A": round(L * px / max(fs.k_max, 1e-9), 2),
               "resolution_A": round(res143, 3), "step_deg": round(float(step_deg), 3),
               "shift_step_px": round(float(shift_step), 3), "median_angle_change_deg": dang,
               "time_s": round(time.perf_counter() - t_it, 2), "rescued": int(sum(len(r) for r in rescued))}
        if rescue:
            rescued_idx = np.sort(np.concatenate(rescued))
        converged = bool(it >= 3 and stale >= 2 and step_deg <= min_step + 1e-9
                         and (np.isnan(dang) or dang <= 2 * min_step))
        rec["converged"] = converged
        history.append(rec)
        if log:
            log.info("iteration %d: box %d, compared to %.1f Å, FSC 0.143 %.2f Å, median Δangle %.2f°, %.1f s",
                     it + 1, Lw, rec["compared_resolution_A"], res143, dang, rec["time_s"])
        bar.set_postfix(res=f"{res143:.1f}Å", box=Lw)
        bar.update()
        if ck is not None:
            ck.save("refine", {"rotations": rot, "origins_px": org, "noise": noise, "ref1": refs[0],
                               "ref2": refs[1], "w1": _arr(weights[0]), "w2": _arr(weights[1])},
                    k_lim=k_lim, step_deg=step_deg, shift_step=shift_step, history=history, iteration=it,
                    support_px=support_px)
    bar.close()
    # final maps at full box, full map from all particles (the step the benchmark's oracle repeats)
    gs = reconstruct_gold_standard(stack, rot, org * px, halves, support_px=support_px, symmetry=st.symmetry,
                                   n_workers=n_workers, batch_size=st.batch_size)
    maps, full, f_raw = list(gs.half_maps), gs.volume, gs.fsc
    gold = start_corrected_fsc(f_raw, maps, px, shared_shells, support_px)
    f, res = gold.corrected, gold.resolution_A
    if log and not gold.validated:
        log.warning("the half-maps agree only as far as their shared start (FSC 0.143 at %.1f Å, the start "
                    "low-passed to %.1f Å): the resolution is not validated", res, lp_A)
    sol = user_mask if user_mask is not None else auto_solvent_mask(full, px)
    fm = _fsc(maps[0], maps[1], px, mask=sol) if sol is not None else None
    res_m = resolution_at(fm, 0.143) if fm is not None else None
    origins_A = org * px
    table = _output_table(stack, rot, origins_A, halves)
    info = {"iterations": len(history), "time_s": round(time.perf_counter() - t_start, 2),
            "cpu_s": round(time.process_time() - cpu_start, 2), "symmetry": st.symmetry,
            "ctf": ctf is not None, "start_resolution_A": round(float(lp_A), 3),
            "independent_from_shell": shared_shells, "resolution_validated": gold.validated,
            "resolution_uncorrected_A": resolution_at(f_raw, 0.143),
            "fsc_uncorrected": [float(c) for c in f_raw.curve],
            "support_px": round(float(support_px), 2), "rescued_indices": rescued_idx}
    return RefineResult(full, tuple(maps), f, fm, sol, rot, origins_A, halves + 1, history, res, res_m, px,
                        table, info)


def _arr(w):
    return np.zeros(0) if w is None else np.asarray(w)


def _pad_to(vol, L):
    from cryoprism.fourier.resample import upsample

    return upsample(vol, L, ndim=3)[0].astype(np.float32)


def _reference_mask(vol, px, sphere, user_mask, solvent):
    if user_mask is not None:
        return user_mask
    if solvent:
        m = auto_solvent_mask(vol, px)
        if m is not None:
            return m * sphere
    return sphere


SUPPORT_MARGIN_PX = 0.0


def _support_radius(maps, L: int) -> float:
    """Support radius (full-box px) for the next reconstructions: the particle's radius from both
    half-maps (:func:`particle_radius_px`, the last shell where their cross power exceeds their noise)
    plus ``SUPPORT_MARGIN_PX`` (0: a 2 px margin cost 3 shells of FSC against the truth at n = 2 000
    and changed nothing at n = 5 000), at most the references' sphere ``L/2 − 2``. One number shared by the
    halves, as the frequency limit is; a support that cuts into the particle multiplies its density by
    a sharp edge that both half-maps share and inflates their FSC at every high frequency
    (docs/refine.md, "Gold standard: independence of the halves")."""
    Lw = maps[0].shape[0]
    r = particle_radius_px(maps[0], maps[1])
    cap = L / 2 - 2
    return cap if r is None else float(min(cap, r * L / Lw + SUPPORT_MARGIN_PX))


@dataclass
class GoldStandardMaps:
    """Result of :func:`reconstruct_gold_standard`: the two half-maps, the map from all particles,
    the half-maps' FSC and the support radius (full-box px) they were reconstructed in."""

    half_maps: tuple
    volume: np.ndarray
    fsc: object
    support_px: float


def reconstruct_gold_standard(source, rotations, origins_A, halves=None, *, support_px: float | None = None,
                              symmetry: str = "C1", seed: int = 0, n_workers=None,
                              batch_size: int = 128) -> GoldStandardMaps:
    """The final reconstruction step of :func:`refine` at given poses (no search).

    Each half-set (``halves``: labels 0/1; default the split :func:`refine` makes,
    :func:`half_set_labels` with ``seed``) is reconstructed at full box from its own particles with its
    own Wiener prior (:func:`_reconstruct`) inside one support radius ``support_px`` (full-box px) for
    both; the full map from all particles inside the same radius; the FSC of the half-maps.
    ``support_px=None`` applies :func:`refine`'s rule at these poses: half-maps inside the references'
    sphere ``L/2 − 2`` (the first iteration's support), then the particle radius measured between
    them (:func:`_support_radius`). :func:`refine` passes the radius measured between its last
    iteration's half-maps; at the true poses this is the fair oracle of the refinement (same split,
    same support rule, same prior rule, same box; only the poses differ).
    """
    stack = source
    n, L, px = int(stack.n), int(stack.box), float(stack.pixel_size_A)
    lab = half_set_labels(n, getattr(stack, "table", None), seed) if halves is None else np.asarray(halves)
    sel = [np.flatnonzero(lab == h) for h in range(2)]
    group = symmetry_group(symmetry)
    rot = np.asarray(rotations, np.float64).reshape(n, 3, 3)
    org = np.asarray(origins_A, np.float64).reshape(n, 2) / px
    ctf = stack.ctf_params() if stack.has_ctf else None
    imgs = _images_at(stack, L, batch_size, n_workers)
    if support_px is None:
        support_px = _support_radius(_reconstruct_halves(imgs, rot, org, ctf, px, sel, group, n_workers, L / 2 - 2), L)
    maps = _reconstruct_halves(imgs, rot, org, ctf, px, sel, group, n_workers, support_px)
    full = _reconstruct(imgs, rot, org, ctf, px, np.arange(n), group, n_workers, support_px)
    return GoldStandardMaps(tuple(maps), full, _fsc(maps[0], maps[1], px), float(support_px))


def _reconstruct(imgs, rot, org_px, ctf, px, idx, group, n_workers, support_px):
    """Least-squares map of the particles ``idx`` (Wiener prior from them alone) restricted to a ball
    of ``support_px`` (pixels of this box) — a fixed radius, never one that each half chooses from
    its own noisier data (see :func:`_support_radius`)."""
    from cryoprism.io.particles import ParticleStack

    src = ParticleStack.from_arrays(imgs[idx], pixel_size_A=px, rotations=rot[idx],
                                    origins_A=np.asarray(org_px[idx]) * px,
                                    ctf=None if ctf is None else ctf.take(idx))
    res = reconstruct_mean(src, regularization="auto", progress=False, n_workers=n_workers,
                           mask_radius_px=float(support_px))
    return symmetrize(res.volume, group).astype(np.float32)


def _reconstruct_halves(imgs, rot, org_px, ctf, px, sel, group, n_workers, support_px):
    return [_reconstruct(imgs, rot, org_px, ctf, px, s, group, n_workers, support_px) for s in sel]


def _output_table(stack, rot, origins_A, halves) -> pd.DataFrame:
    """The input table (rows and columns in order) with the refined pose columns set or appended."""
    t = stack.table.copy() if getattr(stack, "table", None) is not None else pd.DataFrame(index=range(len(rot)))
    a, b, c = matrix_to_euler(rot)
    t["rlnAngleRot"], t["rlnAngleTilt"], t["rlnAnglePsi"] = a, b, c
    t["rlnOriginXAngst"], t["rlnOriginYAngst"] = origins_A[:, 0], origins_A[:, 1]
    t["rlnRandomSubset"] = halves + 1
    for col in ("rlnOriginX", "rlnOriginY"):
        if col in t.columns:  # RELION 3.0 pixel origins would contradict the new ones
            t[col] = origins_A[:, 0 if col.endswith("X") else 1] / float(np.median(stack.pixel_sizes_A))
    return t
