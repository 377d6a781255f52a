"""File-level driver of the micrograph EM: reading micrographs, CTF STAR and maps, checkpoints,
the iteration table and the FSC-per-iteration figure (used by ``cryoprism micrograph-em``).

Outputs and the checkpoint (``em``, after every iteration) go through a
:class:`cryoprism.io.job.Job`; the checkpoint is fingerprinted with the micrographs and settings."""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cryoprism.ctf.model import CTFParams
from cryoprism.errors import InputError
from cryoprism.micrograph.em import EMState, MicrographPatches, Stage, run_em
from cryoprism.micrograph.patches import (
    ModelFilter,
    cut_patches,
    estimate_noise_variance,
    filter_margin,
    noise_profile,
    whiten_micrograph,
)
from cryoprism.micrograph.sbasis import evaluate_volume, fit_volume, make_basis

CHECKPOINT = "em"  # name of the EM state in the job's checkpoints


# --------------------------------------------------------------------------------------------------
# inputs


def read_micrograph(path, bin_factor: int = 1) -> tuple[np.ndarray, float | None]:
    """A 2-D micrograph (float32, mean removed) and its pixel size (Å, after binning; None if the
    header says 0), Fourier-cropped by ``bin_factor``."""
    from cryoprism.fourier import downsample
    from cryoprism.io.mrc import read_mrc

    m, px = read_mrc(path, ndim=2, finite=True)
    if bin_factor > 1:
        m, _ = downsample(m, (m.shape[0] // bin_factor, m.shape[1] // bin_factor), ndim=2)
        px = px * bin_factor if px else px
    return (m - m.mean()).astype(np.float32), px


def read_ctf_star(path, micrograph_paths: Sequence) -> tuple[list[CTFParams], float | None]:
    """Per-micrograph CTF parameters from a RELION ``micrographs_ctf.star`` (CTFFIND/RELION output),
    matched by file name; also returns ``rlnMicrographPixelSize`` (Å) when present."""
    from cryoprism.io.star import read_star

    star = read_star(path)
    tab = star.particles.copy()
    if "rlnMicrographName" not in tab.columns:
        raise InputError("no rlnMicrographName column; expected a micrographs CTF STAR file", path)
    for col in ("rlnDefocusU", "rlnDefocusV"):
        if col not in tab.columns:
            raise InputError(f"no {col} column; expected CTF parameters per micrograph", path)
    opt = star.optics
    if opt is not None and "rlnOpticsGroup" in tab.columns and "rlnOpticsGroup" in opt.columns:
        extra = [c for c in star.optics.columns if c not in tab.columns or c == "rlnOpticsGroup"]
        tab = tab.merge(star.optics[extra], on="rlnOpticsGroup", how="left")
    names = {Path(str(n)).name: i for i, n in enumerate(tab["rlnMicrographName"])}
    stems = {Path(str(n)).stem: i for i, n in enumerate(tab["rlnMicrographName"])}

    def get(row, col, default):
        return float(row[col]) if col in row and np.isfinite(float(row[col])) else default

    out = []
    for p in micrograph_paths:
        i = names.get(Path(p).name, stems.get(Path(p).stem))
        if i is None:
            raise InputError(f"no row for micrograph {Path(p).name} (matched on rlnMicrographName)", path)
        row = tab.iloc[i]
        out.append(CTFParams(
            defocus_u_A=get(row, "rlnDefocusU", 0.0), defocus_v_A=get(row, "rlnDefocusV", 0.0),
            defocus_angle_deg=get(row, "rlnDefocusAngle", 0.0), voltage_kV=get(row, "rlnVoltage", 300.0),
            cs_mm=get(row, "rlnSphericalAberration", 2.7),
            amplitude_contrast=get(row, "rlnAmplitudeContrast", 0.1),
            phase_shift_deg=get(row, "rlnPhaseShift", 0.0), bfactor_A2=get(row, "rlnCtfBfactor", 0.0),
            scale=get(row, "rlnCtfScalefactor", 1.0)))
    px = None
    for col in ("rlnMicrographPixelSize", "rlnImagePixelSize"):
        if col in tab.columns:
            px = float(tab[col].iloc[0])
            break
    return out, px


def map_to_box(volume: np.ndarray, voxel_size_A: float | None, L: int,
               pixel_size_A: float | None) -> np.ndarray:
    """Resample a cubic map to the micrograph pixel size (Fourier crop/pad) and centre-crop/pad to
    ``L``; with an unknown pixel size on either side the whole box is resized to ``L``."""
    from cryoprism.fourier import crop_or_pad, fourier_resize

    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise InputError(f"expected a cubic volume, got shape {v.shape}")
    N = v.shape[0]
    if voxel_size_A and pixel_size_A:
        n_new = max(2, int(round(N * voxel_size_A / pixel_size_A)))
        v, _ = fourier_resize(v, n_new, ndim=3)
        return crop_or_pad(v, L, ndim=3).astype(np.float32)
    v, _ = fourier_resize(v, L, ndim=3)
    return v.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(checkpoints, state: EMState) -> None:
    """Save the EM state (coefficients, counters, incremental statistics, history) in ``checkpoints``
    (:class:`cryoprism.io.checkpoint.Checkpoints`)."""
    keys = sorted(state.block_H)
    arrays = {
        "coef": np.asarray(state.coef, dtype=np.float64),
        "counters": np.array([state.stage, state.iteration, int(state.done)], dtype=np.int64),
        "rho_empty": np.array(state.rho_empty),
        "block_keys": np.array(keys, dtype=np.int64),
        "block_H": np.stack([state.block_H[k] for k in keys]) if keys else np.zeros((0, 0, 0)),
        "block_r": np.stack([state.block_r[k] for k in keys]) if keys else np.zeros((0, 0)),
        "block_empty": np.array([state.block_empty[k] for k in keys]),
        "block_n": np.array([state.block_n[k] for k in keys], dtype=np.int64),
    }
    checkpoints.save(CHECKPOINT, arrays, history=state.history)


def load_checkpoint(checkpoints) -> EMState | None:
    """The saved EM state when resuming (None otherwise); other inputs or settings: ``InputError``."""
    got = checkpoints.load(CHECKPOINT)
    if got is None:
        return None
    z, meta = got
    keys = [int(k) for k in z["block_keys"]]
    st = EMState(stage=int(z["counters"][0]), iteration=int(z["counters"][1]), coef=z["coef"].copy(),
                 rho_empty=float(z["rho_empty"]), done=bool(z["counters"][2]))
    for i, k in enumerate(keys):
        st.block_H[k] = z["block_H"][i].copy()
        st.block_r[k] = z["block_r"][i].copy()
        st.block_empty[k] = float(z["block_empty"][i])
        st.block_n[k] = int(z["block_n"][i])
    st.history = list(meta["history"])
    return st


# --------------------------------------------------------------------------------------------------
# outputs


def write_iterations_csv(job, history: list, pixel_size_A: float | None) -> None:
    """``iterations.csv`` through ``job``: one row per iteration (log-likelihood per patch, band limit in
    cycles/pixel and Å, seconds, FSC figures with a truth)."""
    cols = ["iteration", "stage", "stage_iteration", "ell_max", "bandlimit_cpp", "bandlimit_A",
            "n_coefficients",
            "n_rotations", "n_patches", "loglik_per_patch", "rho_empty", "seconds", "cpu_seconds", "fsc_mean",
            "fsc05_A"]
    rows = []
    for h in history:
        row = dict(h)
        row["bandlimit_A"] = (pixel_size_A / h["bandlimit_cpp"]) if pixel_size_A else ""
        rows.append([row.get(c, "") for c in cols])
    import pandas as pd

    job.write_csv("iterations.csv", pd.DataFrame(rows, columns=cols))


# --------------------------------------------------------------------------------------------------
# the whole run


@dataclass
class RunConfig:
    L: int
    ell_max: int = 5
    n_rotations: int = 600
    iterations: tuple = (4, 4, 6)
    batch_fraction: float = 0.5
    bin_factor: int = 1
    whiten: bool = True
    seed: int = 0


def stages_for(cfg: RunConfig) -> list[Stage]:
    from cryoprism.micrograph.em import default_stages

    return default_stages(cfg.ell_max, cfg.n_rotations, tuple(cfg.iterations), cfg.batch_fraction)


def prepare_micrographs(mics: Sequence[np.ndarray], L: int, ctfs: Sequence[CTFParams] | None,
                        pixel_size_A: float | None,
                        whiten: bool) -> tuple[list[MicrographPatches], int, float]:
    """Whitening, model filters, patches, the common margin and the noise variance."""
    out, margins = [], []
    for i, m in enumerate(mics):
        prof = noise_profile(m, block=min(64, *m.shape)) if whiten else None
        mw = whiten_micrograph(m, prof) if whiten else m
        filt = ModelFilter(ctf=ctfs[i] if ctfs else None, pixel_size_A=pixel_size_A, profile=prof)
        margins.append(filter_margin(filt, L))
        P, _ = cut_patches(mw, L)
        out.append(MicrographPatches(P, filt, name=str(i)))
    sigma2 = float(np.median([estimate_noise_variance(mp.patches) for mp in out]))
    return out, int(max(margins) if margins else 0), sigma2


def run_pipeline(mic_paths: Sequence, cfg: RunConfig, *, job=None, init_path=None, ctf_star=None,
                 truth_path=None, pixel_size_A: float | None = None,
                 noise_var: float | None = None) -> dict:
    """Read, run the EM and return the figures. With ``job`` (:class:`cryoprism.io.job.Job`): the EM
    state is checkpointed after every iteration (``job.resume`` continues), and volume.mrc,
    iterations.csv (and with a truth fsc_per_iteration.csv/.png) are written through the job after
    every iteration; progress goes to the job's log."""
    import logging

    from cryoprism.io.checkpoint import digest
    from cryoprism.io.mrc import read_mrc
    from cryoprism.metrics.fsc import fsc, resolution_at

    log = job.log if job is not None else logging.getLogger("cryoprism.micrograph")
    t_start = time.perf_counter()
    L = int(cfg.L)
    if L < 5:
        raise InputError(f"--particle-box must be at least 5 pixels, got {L}")
    mics, pxs = [], []
    for p in mic_paths:
        m, px = read_micrograph(p, cfg.bin_factor)
        if min(m.shape) < 2 * L:
            raise InputError(f"micrograph {m.shape} is smaller than two particle boxes ({L} px)", p)
        mics.append(m)
        pxs.append(px)
    ctfs, star_px = (read_ctf_star(ctf_star, mic_paths) if ctf_star else (None, None))
    # precedence (docs/conventions.md): --pixel-size, the CTF STAR's optics, the MRC header
    px = pixel_size_A or (star_px * cfg.bin_factor if star_px else None) or (pxs[0] if pxs[0] else None)
    if ctfs and not px:
        raise InputError("pixel size unknown (header 0, no rlnMicrographPixelSize): pass --pixel-size",
                         mic_paths[0])
    stages = stages_for(cfg)
    config = {"L": L, "stages": [asdict(s) for s in stages], "micrographs": [Path(p).name for p in mic_paths],
              "bin": cfg.bin_factor, "whiten": cfg.whiten, "seed": cfg.seed, "ctf": bool(ctfs)}
    ck = state = None
    if job is not None:
        job.add_inputs(em_config=config, micrographs_digest=digest(*mics), pixel_size_A=px,
                       noise_var=noise_var, init=None if init_path is None else digest(read_mrc(init_path)[0]))
        ck = job.checkpoints
        state = load_checkpoint(ck)
        if state is not None:
            log.info("resuming after iteration %d", len(state.history))
    data, margin, sigma2 = prepare_micrographs(mics, L, ctfs, px, cfg.whiten)
    if noise_var:
        sigma2 = float(noise_var)
    init_vol = None
    if init_path is not None:
        v, vs = read_mrc(init_path, ndim=3)
        init_vol = map_to_box(v, vs, L, px)
    truth_c = truth_vol = None
    final_basis = make_basis(L, stages[-1].ell_max, stages[-1].bandlimit)
    if truth_path is not None:
        v, vs = read_mrc(truth_path, ndim=3)
        truth_c = fit_volume(final_basis, map_to_box(v, vs, L, px))
        truth_vol = evaluate_volume(final_basis, truth_c, L)
    fsc_rows: list = []
    fsc_path = job.path("fsc_per_iteration.csv") if job is not None else None
    if state is not None and fsc_path.exists():
        with open(fsc_path) as f:
            fsc_rows = [(int(r[0]), list(map(float, r[1:]))) for r in csv.reader(f)
                        if r and r[0] != "iteration"]
    pxo = px or 1.0

    def fsc_of(vol):
        res = fsc(vol, truth_vol, pxo)
        return res, resolution_at(res, 0.5)

    if truth_vol is not None and not fsc_rows:
        if init_vol is not None:
            b0 = make_basis(L, stages[0].ell_max, stages[0].bandlimit)
            v0 = evaluate_volume(b0, fit_volume(b0, init_vol), L)
            fsc_rows.append((0, list(fsc_of(v0)[0].curve)))

    def callback(st: EMState, basis, rec):
        vol = evaluate_volume(basis, st.coef, L).astype(np.float32)
        if truth_vol is not None:
            res, r05 = fsc_of(vol)
            rec["fsc_mean"] = float(np.mean(res.curve[1:]))
            rec["fsc05_A"] = float(r05)
            fsc_rows.append((int(rec["iteration"]), list(res.curve)))
            if job is not None:
                job.write_text("fsc_per_iteration.csv", _fsc_rows_csv(fsc_rows))
        if job is not None:
            save_checkpoint(ck, st)
            write_iterations_csv(job, st.history, px)
            job.write_mrc("volume.mrc", vol, px)
        msg = (f"iteration {rec['iteration']}: stage {rec['stage'] + 1}/{len(stages)} "
               f"ell_max {rec['ell_max']} "
               f"band {rec['bandlimit_cpp']:.2f} c/px, {rec['n_patches']} patches, "
               f"loglik/patch {rec['loglik_per_patch']:.3f}, rho_empty {rec['rho_empty']:.3f}, "
               f"{rec['seconds']:.1f} s")
        if "fsc_mean" in rec:
            msg += f", FSC mean {rec['fsc_mean']:.3f} (0.5 at {rec['fsc05_A']:.1f} Å)"
        log.info(msg)

    if state is not None and state.done:
        from cryoprism.micrograph.em import EMResult

        res = EMResult(state.coef, final_basis, state.rho_empty, state.history,
                       evaluate_volume(final_basis, state.coef, L).astype(np.float32))
    else:
        import sys

        from cryoprism.parallel.config import progress_enabled

        res = run_em(data, L, stages, init_volume=init_vol, sigma2=sigma2, margin=margin, seed=cfg.seed,
                     state=state, callback=callback, progress=progress_enabled(sys.stderr.isatty()))
        if ck is not None:
            save_checkpoint(ck, EMState(stage=len(stages) - 1, iteration=stages[-1].n_iterations, coef=res.coef,
                                        rho_empty=res.rho_empty, history=res.history, done=True))
    figures = {}
    if job is not None:
        figures.update(volume=job.write_mrc("volume.mrc", res.volume, px))
        write_iterations_csv(job, res.history, px)
        figures.update(iterations_csv=job.path("iterations.csv"))
    figures.update({
        "n_micrographs": len(mics), "n_patches": int(sum(len(d.patches) for d in data)),
        "particle_box": L, "pixel_size_A": px, "noise_variance": sigma2, "filter_margin_px": margin,
        "n_iterations": len(res.history), "rho_empty": res.rho_empty,
        "final_loglik_per_patch": res.history[-1]["loglik_per_patch"] if res.history else None,
        "seconds": time.perf_counter() - t_start,
    })
    if truth_vol is not None and fsc_rows:
        final, r05 = fsc_of(res.volume)
        figures.update({"fsc_final": list(final.curve), "fsc05_A": r05})
        if job is not None:
            from cryoprism.report.plots import fsc_per_iteration_figure

            figures["fsc_plot"] = job.save_figure("fsc_per_iteration.png",
                                                  fsc_per_iteration_figure(fsc_rows, final.freq_invA))
    if job is not None:
        job.record(**figures)
    return figures


def _fsc_rows_csv(rows) -> str:
    n = len(rows[0][1]) if rows else 0
    lines = [",".join(["iteration"] + [f"shell_{k}" for k in range(n)])]
    lines += [",".join([str(i)] + [f"{x:.5f}" for x in r]) for i, r in rows]
    return "\n".join(lines) + "\n"
