"""The CTF in RELION's convention (docs/conventions.md, "CTF"): the parameters a particle table holds
(:class:`CTFParams`) and the formula that turns them into a CTF on a Fourier grid.

Defined in ``io`` so that a particle batch can give its CTF grid (``Batch.ctf_grid``) without ``io``
importing ``cryoprism.ctf``; ``cryoprism.ctf`` re-exports everything here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoprism.fourier.core import freq_grid

# physical constants (CODATA)
_H = 6.62607015e-34
_M0 = 9.1093837015e-31
_E = 1.602176634e-19
_C = 299792458.0


def electron_wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    V = np.asarray(voltage_kV, dtype=np.float64) * 1e3
    lam_m = _H / np.sqrt(2 * _M0 * _E * V * (1 + _E * V / (2 * _M0 * _C**2)))
    return lam_m * 1e10


@dataclass(frozen=True)
class CTFParams:
    """CTF parameters of one image, or arrays of them over particles (broadcast together).

    Units: defocus Å (positive underfocus), angle degrees, Cs mm, voltage kV, phase shift degrees,
    B-factor Å², amplitude contrast as a fraction.
    """

    defocus_u_A: float | np.ndarray
    defocus_v_A: float | np.ndarray
    defocus_angle_deg: float | np.ndarray = 0.0
    voltage_kV: float | np.ndarray = 300.0
    cs_mm: float | np.ndarray = 2.7
    amplitude_contrast: float | np.ndarray = 0.1
    phase_shift_deg: float | np.ndarray = 0.0
    bfactor_A2: float | np.ndarray = 0.0
    scale: float | np.ndarray = 1.0

    def __len__(self):
        return int(np.size(self.defocus_u_A))

    def take(self, idx) -> "CTFParams":
        """Parameters of a subset of particles (scalar fields are kept as they are)."""
        def pick(v):
            v = np.asarray(v)
            return v[idx] if v.ndim else v
        return CTFParams(*(pick(getattr(self, f)) for f in self.__dataclass_fields__))


def ctf_gamma(s, angle, p: CTFParams):
    """Phase γ(s, α) of the CTF; ``s`` in 1/Å, ``angle`` = atan2(s_y, s_x) in radians.

    Parameters broadcast against leading axes: arrays of n particles give ``(n, *s.shape)``.
    """
    def col(v):
        v = np.asarray(v, dtype=np.float64)
        return v.reshape(v.shape + (1,) * np.ndim(s))

    lam = col(electron_wavelength_A(np.asarray(p.voltage_kV)))
    du, dv = col(p.defocus_u_A), col(p.defocus_v_A)
    ast = np.deg2rad(col(p.defocus_angle_deg))
    cs = col(p.cs_mm) * 1e7
    q = col(p.amplitude_contrast)
    dfz = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (angle - ast))
    s2 = s * s
    return (np.pi * lam * dfz * s2 - 0.5 * np.pi * cs * lam**3 * s2 * s2
            + np.deg2rad(col(p.phase_shift_deg)) + np.arctan2(q, np.sqrt(1 - q * q)))


def ctf_on_grid(s, angle, p: CTFParams):
    """CTF values at radial frequencies ``s`` (1/Å) and angles ``angle`` (radians)."""
    def col(v):
        v = np.asarray(v, dtype=np.float64)
        return v.reshape(v.shape + (1,) * np.ndim(s))

    env = col(p.scale) * np.exp(-col(p.bfactor_A2) * (s * s) / 4.0)
    return env * np.sin(ctf_gamma(s, angle, p))


def ctf_2d(L: int, pixel_size_A: float, p: CTFParams, dtype=np.float32) -> np.ndarray:
    """2-D CTF on a centred ``L × L`` Fourier grid (zero frequency at ``L//2``).

    Returns ``(L, L)`` for scalar parameters or ``(n, L, L)`` for arrays of n particles.
    """
    s, ang = freq_grid((L, L), pixel_size_A, polar=True)
    return ctf_on_grid(s, ang, p).astype(dtype)
