"""CTF estimation over many micrographs: inputs, parallel fits, ``micrographs_ctf.star``, one diagnostic
PNG per micrograph (docs/preprocess.md, "CTF for many micrographs").

The fit itself is :func:`cryoprism.ctf.estimate_ctf`. Micrographs run in parallel through
:func:`cryoprism.parallel.map_batches` (one micrograph per task). The output STAR keeps the rows and
columns of an input STAR and appends RELION's CTF columns (``rlnDefocusU/V``, ``rlnDefocusAngle``,
``rlnCtfAstigmatism``, ``rlnCtfMaxResolution``, ``rlnCtfFigureOfMerit``, ``rlnCtfImage``) with an
optics table (pixel size, voltage, Cs, amplitude contrast).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoprism.errors import InputError

MIC_SUFFIXES = {".mrc"}


@dataclass
class MicrographList:
    """Micrographs to process: resolved paths, the table written back (input rows kept) and optics."""

    paths: list[Path]
    table: pd.DataFrame  # one row per micrograph, rlnMicrographName first for non-STAR inputs
    optics: pd.DataFrame | None  # from an input STAR, else None


def collect_micrographs(inputs) -> MicrographList:
    """Resolve files, folders (every ``*.mrc`` inside, sorted) and STAR files (``rlnMicrographName``,
    relative to the STAR's folder, then to the current one) into one list. A STAR must be the only
    input (its rows and optics are kept)."""
    from cryoprism.io.star import read_star

    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise InputError("no micrographs given")
    stars = [p for p in inputs if p.suffix.lower() == ".star"]
    if stars:
        if len(inputs) > 1:
            raise InputError("a STAR file of micrographs must be the only input", stars[0])
        st = read_star(stars[0])
        t = st.particles.reset_index(drop=True)
        if "rlnMicrographName" not in t.columns:
            raise InputError("no rlnMicrographName column (expected a STAR file of micrographs)", stars[0])
        paths = []
        for name in t["rlnMicrographName"].astype(str):
            p = Path(name)
            cands = [p] if p.is_absolute() else [stars[0].parent / p, p]
            hit = next((c for c in cands if c.exists()), None)
            if hit is None:
                raise InputError(f"micrograph {name} not found (relative to the STAR file's folder or "
                                 f"the current one)", stars[0])
            paths.append(hit)
        return MicrographList(paths, t, st.optics if st.style != "3.0" else None)
    paths = []
    for p in inputs:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in MIC_SUFFIXES)
            if not found:
                raise InputError("no .mrc micrographs in this folder", p)
            paths += found
        elif not p.exists():
            raise InputError("no such file", p)
        elif p.suffix.lower() not in MIC_SUFFIXES | {".mrcs"}:
            raise InputError(f"expected an MRC micrograph (.mrc), a folder or a STAR file, got {p.suffix!r}", p)
        else:
            paths.append(p)
    return MicrographList(paths, pd.DataFrame({"rlnMicrographName": [str(p) for p in paths]}), None)


def _optics_value(ml: MicrographList, i: int, column: str, given, default):
    """Per-micrograph optics value: the option if given, else the input STAR's optics, else default."""
    if given is not None:
        return float(given)
    if ml.optics is not None and column in ml.optics.columns:
        if "rlnOpticsGroup" in ml.table.columns and "rlnOpticsGroup" in ml.optics.columns:
            g = ml.table["rlnOpticsGroup"].iloc[i]
            row = ml.optics[ml.optics["rlnOpticsGroup"] == g]
            if len(row):
                return float(row[column].iloc[0])
        return float(ml.optics[column].iloc[0])
    return default


def plot_ctf_diagnostic(fit, extra: dict, pixel_size_A: float, voltage_kV: float, cs_mm: float,
                        amplitude_contrast: float, title: str = ""):
    """A CTFFIND-style figure (a matplotlib ``Figure``, no pyplot state: safe in worker threads).

    Left: the amplitude spectrum inside the fit band only — left half the data (smooth background
    subtracted, each ring scaled to zero mean and unit r.m.s., the tile-edge cross removed, smoothed by
    a 1-px Gaussian), right half the fitted CTF² drawn
    with 3 × 3 supersampling (no moiré), both cut where a Thon ring is narrower than 3 spectrum pixels.
    Right: the equal-phase average of the background-subtracted spectrum, mapped by local least-squares
    fits ``a·CTF² + b`` over ±1 ring (envelope and leftover background) onto the fitted CTF²'s 0–1
    scale, against that CTF²; the windowed
    correlation that sets the fit resolution; the fit resolution and the figure of merit in the title.
    """
    from matplotlib.figure import Figure

    from cryoprism.ctf.estimate import _ctf2
    from cryoprism.ctf.model import electron_wavelength_A
    from cryoprism.fourier.core import freq_grid
    from cryoprism.fourier.resample import radial_average, shells_to_grid
    from cryoprism.image.filters import gaussian_blur

    amp = extra["amplitude_spectrum"]
    T = amp.shape[0]
    lam = float(electron_wavelength_A(voltage_kV))
    q = float(amplitude_contrast)
    w_amp = float(np.arctan2(q, np.sqrt(1 - q * q)))
    cs_A = cs_mm * 1e7
    s_lo, s_hi = 1.0 / fit.band_A[0], 1.0 / fit.band_A[1]
    dmax = max(fit.defocus_u_A, fit.defocus_v_A)
    # ring period (spectrum pixels) 2π / |dγ/dk| ≥ 3 px
    ks = np.arange(1, T // 2) / (T * pixel_size_A)
    dg = np.abs(2 * np.pi * lam * dmax * ks - 2 * np.pi * cs_A * lam**3 * ks**3) / (T * pixel_size_A)
    ok = np.pi / np.maximum(dg, 1e-12) >= 3.0
    s_show = min(s_hi, ks[ok].max() if ok.any() else s_hi)
    s_show = max(s_show, min(s_hi, 2 * s_lo))
    half = min(T // 2, int(np.ceil(s_show * T * pixel_size_A)) + 4)
    c = T // 2
    sub = amp[c - half:c + half, c - half:c + half]
    s, a = freq_grid(sub.shape, pixel_size_A * T / sub.shape[0], polar=True)
    band = (s >= s_lo) & (s <= s_show)
    resid = sub - np.interp(s, extra["freq_1d_invA"], extra["background_1d"])
    resid = resid - shells_to_grid(radial_average(resid), resid.shape)  # each ring: zero mean...
    rms = np.sqrt(radial_average(resid**2))
    resid = resid / np.maximum(shells_to_grid(rms, resid.shape), 1e-30)  # ...and unit r.m.s.
    # the tile-edge cross (|k| ≤ 1 on an axis) carries no rings: zero it, then smooth lightly (display)
    ky_, kx_ = np.meshgrid(np.arange(2 * half) - half, np.arange(2 * half) - half, indexing="ij")
    resid[(np.abs(ky_) <= 1) | (np.abs(kx_) <= 1)] = 0.0
    resid = gaussian_blur(resid, 1.0)
    resid = resid / max(float(resid[band].std()), 1e-30)
    data = np.clip((resid + 2.0) / 4.0, 0, 1)
    # model with 3×3 supersampling (each display pixel averages the rings it covers)
    sub_s = np.zeros_like(s)
    for dy in (-1 / 3, 0, 1 / 3):
        for dx in (-1 / 3, 0, 1 / 3):
            ky, kx = np.meshgrid(np.arange(2 * half) - half + dy, np.arange(2 * half) - half + dx, indexing="ij")
            ss = np.hypot(ky, kx) / (T * pixel_size_A)
            sub_s += _ctf2(ss, np.arctan2(ky, kx), fit.defocus_u_A, fit.defocus_v_A, fit.defocus_angle_deg,
                           lam, cs_A, w_amp) / 9.0
    img = np.where(band, data, 0.5)
    img[:, half:] = np.where(band, sub_s, 0.5)[:, half:]
    fig = Figure(figsize=(12, 5.2))
    ax0, ax1 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.35]})
    ext = half / (T * pixel_size_A)
    ax0.imshow(img, cmap="gray", origin="lower", extent=(-ext, ext, -ext, ext), vmin=0, vmax=1,
               interpolation="nearest")
    ax0.axvline(0, color="C1", lw=0.6)
    ax0.set_title(f"data (left) | model (right), {fit.band_A[0]:.0f}–{1 / s_show:.1f} Å", fontsize=10)
    ax0.set_xlabel("spatial frequency (1/Å)")

    f = np.asarray(extra["epa_freq_invA"])
    e = np.asarray(extra["epa"])
    m = np.asarray(extra["epa_model"])
    inb = (f >= s_lo) & (f <= s_hi)
    if inb.sum() >= 8:
        # local least squares e ≈ a_j·CTF² + b_j over ±1 ring around every point (envelope and
        # leftover background); (e − b)/a puts every ring of the data on the model's 0–1 scale. Past
        # the last window with a positive fit the last a, b are kept.
        fb, eb, mb = f[inb], e[inb], m[inb]
        dm = 0.5 * (fit.defocus_u_A + fit.defocus_v_A)
        gam = np.pi * lam * dm * fb**2 - 0.5 * np.pi * cs_A * lam**3 * fb**4
        aa, bb = np.full(fb.size, np.nan), np.full(fb.size, np.nan)
        for j in range(fb.size):
            w = np.abs(gam - gam[j]) <= np.pi
            if w.sum() >= 5 and np.ptp(mb[w]) > 0.2:
                (aj, bj), *_ = np.linalg.lstsq(np.column_stack([mb[w], np.ones(w.sum())]), eb[w], rcond=None)
                if aj > 0:
                    aa[j], bb[j] = aj, bj
        good = np.isfinite(aa)
        if good.any():
            idx = np.maximum.accumulate(np.where(good, np.arange(fb.size), -1))
            first = int(np.flatnonzero(good)[0])
            idx = np.where(idx < 0, first, idx)
            y = (eb - bb[idx]) / aa[idx]
            ax1.plot(fb, y, lw=0.9, color="C0", label="spectrum − background, ÷ local envelope (equal-phase avg.)")
        ax1.plot(f[inb], m[inb], lw=0.9, color="C3", label="fitted CTF²")
        ax1.plot(f[inb], np.asarray(extra["epa_window_cc"])[inb], lw=0.8, color="C2", ls="--",
                 label="local correlation (two rings)")
    ax1.axhline(0.3, color="C2", lw=0.5, ls=":")
    if np.isfinite(fit.fit_resolution_A) and 1 / fit.fit_resolution_A <= s_hi:
        ax1.axvline(1 / fit.fit_resolution_A, color="k", ls=":", lw=0.9, label="fit resolution")
    ax1.set_xlim(s_lo, s_hi)
    ax1.set_ylim(-0.6, 1.6)
    ax1.set_xlabel("spatial frequency (1/Å)")
    ax1.legend(fontsize=7, loc="upper right")
    ax1.set_title(f"FOM {fit.score:.3f}    fit resolution {fit.fit_resolution_A:.1f} Å", fontsize=10)
    head = (f"U {fit.defocus_u_A:.0f} Å, V {fit.defocus_v_A:.0f} Å, angle {fit.defocus_angle_deg:.1f}°, "
            f"astigmatism {fit.defocus_u_A - fit.defocus_v_A:.0f} Å")
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=10)
    fig.tight_layout()
    return fig


def ctf_row(fit) -> dict:
    """RELION CTF columns of one fit."""
    return {"rlnDefocusU": fit.defocus_u_A, "rlnDefocusV": fit.defocus_v_A,
            "rlnDefocusAngle": fit.defocus_angle_deg,
            "rlnCtfAstigmatism": fit.defocus_u_A - fit.defocus_v_A,
            "rlnCtfMaxResolution": fit.fit_resolution_A, "rlnCtfFigureOfMerit": fit.score}


def estimate_ctf_many(inputs, *, job=None, pixel_size_A: float | None = None, voltage_kV: float | None = None,
                      cs_mm: float | None = None, amplitude_contrast: float | None = None, plots: bool = True,
                      n_workers: int | None = None, progress: bool = True, **estimate_kw) -> dict:
    """Fit the CTF of every micrograph of ``inputs`` (files, folders or one STAR; see
    :func:`collect_micrographs`). With a ``job``, writes ``micrographs_ctf.star`` and
    ``ctf_plots/<name>_ctf.png`` through it. Returns ``{"table", "optics", "fits", "star", "plots"}``.

    Optics: an option given here wins, else the input STAR's optics, else 300 kV, 2.7 mm, 0.1; the pixel
    size: the option, else the STAR optics (``rlnMicrographPixelSize``), else each MRC header.
    """
    from cryoprism.ctf import estimate_ctf
    from cryoprism.io.mrc import read_mrc
    from cryoprism.parallel import map_batches

    ml = collect_micrographs(inputs)
    n = len(ml.paths)
    opt = []
    for i in range(n):
        opt.append((_optics_value(ml, i, "rlnVoltage", voltage_kV, 300.0),
                    _optics_value(ml, i, "rlnSphericalAberration", cs_mm, 2.7),
                    _optics_value(ml, i, "rlnAmplitudeContrast", amplitude_contrast, 0.1),
                    _optics_value(ml, i, "rlnMicrographPixelSize", pixel_size_A, None)))
    for v, cs, q, _ in opt:
        if not 0 <= q < 1:
            raise InputError(f"amplitude contrast must be in [0, 1), got {q}")
    stems = _unique_stems(ml.paths)

    def one(i):
        path = ml.paths[i]
        m, hdr = read_mrc(path, ndim=2, finite=True)
        v, cs, q, px = opt[i]
        px = px or hdr
        if not px:
            raise InputError("unknown pixel size (header says 0): give --pixel-size", path)
        try:
            fit, extra = estimate_ctf(m, px, v, cs, q, return_spectrum=True, **estimate_kw)
        except ValueError as e:
            raise InputError(str(e), path) from e
        png = None
        if plots and job is not None:
            fig = plot_ctf_diagnostic(fit, extra, px, v, cs, q, title=path.name)
            png = job.save_figure(f"ctf_plots/{stems[i]}_ctf.png", fig)
        return fit, px, png

    res = map_batches(one, list(range(n)), n_workers=n_workers, desc="micrographs", progress=progress)
    fits = [r[0] for r in res]
    table = ml.table.copy()
    rows = pd.DataFrame([ctf_row(f) for f in fits])
    for c in rows.columns:
        table[c] = rows[c].to_numpy()
    if res and res[0][2] is not None:
        table["rlnCtfImage"] = [str(Path(r[2]).relative_to(job.out)) for r in res]
    optics = _optics_table(ml, opt, [r[1] for r in res], table)
    star = None
    if job is not None:
        star = _write_mic_star(job, table, optics)
    return {"table": table, "optics": optics, "fits": fits, "star": star,
            "plots": [r[2] for r in res], "paths": ml.paths}


def _unique_stems(paths) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i + 1:04d}_{s}" for i, s in enumerate(stems)]


def _optics_table(ml: MicrographList, opt, pixels, table: pd.DataFrame) -> pd.DataFrame:
    """The input optics table with the pixel size filled in, or one group per distinct optics."""
    if ml.optics is not None and "rlnOpticsGroup" in table.columns:
        o = ml.optics.copy()
        if "rlnMicrographPixelSize" not in o.columns:
            o["rlnMicrographPixelSize"] = [float(pixels[int(np.flatnonzero(table["rlnOpticsGroup"] == g)[0])])
                                           if (table["rlnOpticsGroup"] == g).any() else np.nan
                                           for g in o["rlnOpticsGroup"]]
        return o
    keys = [(v, cs, q, float(px)) for (v, cs, q, _), px in zip(opt, pixels)]
    uniq = list(dict.fromkeys(keys))
    table["rlnOpticsGroup"] = [uniq.index(k) + 1 for k in keys]
    return pd.DataFrame({"rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(len(uniq))],
                         "rlnOpticsGroup": np.arange(1, len(uniq) + 1),
                         "rlnMicrographPixelSize": [k[3] for k in uniq], "rlnVoltage": [k[0] for k in uniq],
                         "rlnSphericalAberration": [k[1] for k in uniq],
                         "rlnAmplitudeContrast": [k[2] for k in uniq]})


def _write_mic_star(job, table, optics):
    """RELION 3.1 layout: ``data_optics`` then ``data_micrographs``, with the version line."""
    from cryoprism.io.star import StarFile

    return job.write_star("micrographs_ctf.star", StarFile(table, optics, {}, "3.1", "micrographs", "optics",
                                                           None, 30001))
