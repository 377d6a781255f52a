"""Diagnostic figure of a CTF fit (matplotlib)."""

from __future__ import annotations

import numpy as np

from cryoprism.ctf.estimate import CTFFit, _ctf2
from cryoprism.ctf.model import electron_wavelength_A
from cryoprism.fourier.core import freq_grid
from cryoprism.fourier.resample import radial_average, shells_to_grid
from cryoprism.image.filters import gaussian_blur


def ctf_fit_figure(fit: CTFFit, extra: dict, pixel_size_A: float, voltage_kV: float, cs_mm: float,
                   amplitude_contrast: float):
    """Left: the background-subtracted amplitude spectrum, each ring scaled by its r.m.s. (left half),
    next to the fitted CTF² (right half), out to the band limit. Right: equal-phase average of the
    background-subtracted spectrum, the model and the windowed correlation used for the fit
    resolution. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    amp = extra["amplitude_spectrum"]
    T = amp.shape[0]
    half = min(T // 2, int(np.ceil(T * pixel_size_A / fit.band_A[1])) + 8)
    c = T // 2
    sub = amp[c - half:c + half, c - half:c + half]
    s, a = freq_grid(sub.shape, pixel_size_A * T / sub.shape[0], polar=True)
    # background-subtracted spectrum, each ring scaled by its r.m.s. (the rings are what was fitted)
    resid = sub - np.interp(s, extra["freq_1d_invA"], extra["background_1d"])
    rms = np.sqrt(radial_average(resid**2))
    resid = resid / np.maximum(shells_to_grid(rms, resid.shape), 1e-30)
    resid = gaussian_blur(resid, 1.0)  # display only: per-pixel periodogram noise hides the rings
    resid /= max(float(resid[s >= 1.0 / fit.band_A[0]].std()), 1e-30)
    resid[s < 1.0 / fit.band_A[0]] = 0.0
    lam = float(electron_wavelength_A(voltage_kV))
    q = float(amplitude_contrast)
    model = _ctf2(s, a, fit.defocus_u_A, fit.defocus_v_A, fit.defocus_angle_deg, lam, cs_mm * 1e7,
                  float(np.arctan2(q, np.sqrt(1 - q * q))))
    img = np.clip((resid + 2.0) / 4.0, 0, 1)
    img[:, half:] = model[:, half:]
    fig, ax = plt.subplots(1, 2, figsize=(12, 5.5))
    ax[0].imshow(img, cmap="gray", origin="lower")
    ax[0].set_title(f"U {fit.defocus_u_A:.0f} Å, V {fit.defocus_v_A:.0f} Å, {fit.defocus_angle_deg:.1f}°")
    ax[0].set_xticks([])
    ax[0].set_yticks([])
    f = extra["epa_freq_invA"]
    e = extra["epa"]
    m = extra["epa_model"]
    band = f <= 1 / fit.band_A[1]
    scale = np.std(e[band]) / max(np.std(m[band]), 1e-12)
    ax[1].plot(f, e, lw=0.8, label="spectrum − background (equal-phase average)")
    ax[1].plot(f, (m - m[band].mean()) * scale + e[band].mean(), lw=0.8, label="fitted CTF² (scaled)")
    ax[1].plot(f, extra["epa_window_cc"] * np.ptp(e[band]) / 2, lw=0.8, label="windowed correlation (scaled)")
    ax[1].axvline(1 / fit.fit_resolution_A, color="k", ls=":", lw=0.8)
    ax[1].set_xlabel("spatial frequency (1/Å)")
    ax[1].set_title(f"score {fit.score:.3f}, fit to {fit.fit_resolution_A:.1f} Å")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
