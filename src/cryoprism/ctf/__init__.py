"""Contrast transfer function: model, correction (phase flip, Wiener) and estimation."""

from cryoprism.ctf.correct import apply_bfactor, bfactor_envelope, phase_flip, wiener_filter
from cryoprism.ctf.estimate import CTFFit, estimate_ctf, periodogram
from cryoprism.ctf.model import CTFParams, ctf_1d, ctf_2d, ctf_gamma, ctf_on_grid, electron_wavelength_A

__all__ = [
    "CTFFit", "CTFParams", "apply_bfactor", "bfactor_envelope", "ctf_1d", "ctf_2d", "ctf_gamma",
    "ctf_on_grid", "electron_wavelength_A", "estimate_ctf", "periodogram", "phase_flip", "wiener_filter",
]
