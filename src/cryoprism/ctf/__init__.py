"""Contrast transfer function: model, correction (phase flip, Wiener) and estimation."""

from cryoprism.ctf.model import CTFParams, ctf_1d, ctf_2d, ctf_gamma, ctf_on_grid, electron_wavelength_A

__all__ = ["CTFParams", "ctf_1d", "ctf_2d", "ctf_gamma", "ctf_on_grid", "electron_wavelength_A"]
