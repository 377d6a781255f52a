"""Diagnostic figure of a CTF fit, read like CTFFIND's (matplotlib, no pyplot state; docs/preprocess.md,
"CTF for many micrographs")."""

from __future__ import annotations

import numpy as np

from cryoprism.ctf.estimate import CTFFit, _ctf2
from cryoprism.ctf.model import electron_wavelength_A
from cryoprism.fourier.core import freq_grid
from cryoprism.fourier.resample import radial_average, shells_to_grid
from cryoprism.image.filters import gaussian_blur


def ctf_fit_figure(fit: CTFFit, extra: dict, pixel_size_A: float, voltage_kV: float, cs_mm: float,
                   amplitude_contrast: float, title: str = ""):
    """A CTFFIND-style figure (a matplotlib ``Figure``, no pyplot state: safe in worker threads).

    Left: the amplitude spectrum inside the fit band only — left half the data (smooth background
    subtracted, each ring scaled to zero mean and unit r.m.s., the tile-edge cross removed, smoothed by
    a 1-px Gaussian), right half the fitted CTF² drawn with 3 × 3 supersampling (no moiré), both cut
    where a Thon ring is narrower than 3 spectrum pixels. Right: the equal-phase average of the
    background-subtracted spectrum, mapped by local least-squares fits ``a·CTF² + b`` over ±1 ring
    (envelope and leftover background) onto the fitted CTF²'s 0–1 scale, against that CTF²; the
    windowed correlation that sets the fit resolution; the fit resolution and the figure of merit in
    the title.
    """
    from matplotlib.figure import Figure


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
