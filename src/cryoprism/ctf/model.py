"""The CTF in RELION's convention (docs/conventions.md, "CTF").

The parameters and the formula are defined in :mod:`cryoprism.io.ctf_model` and re-exported here.
"""

from __future__ import annotations

import numpy as np

from cryoprism.io.ctf_model import (
    CTFParams,
    ctf_2d,
    ctf_gamma,
    ctf_on_grid,
    electron_wavelength_A,
)

__all__ = ["CTFParams", "ctf_1d", "ctf_2d", "ctf_gamma", "ctf_on_grid", "electron_wavelength_A"]


def ctf_1d(s, p: CTFParams, angle_rad: float = 0.0):
    """Radial CTF profile at frequencies ``s`` (1/Å) along direction ``angle_rad``."""
    s = np.asarray(s, dtype=np.float64)
    return ctf_on_grid(s, np.full_like(s, angle_rad), p)
