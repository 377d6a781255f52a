"""Small micrograph simulator built on the basis projections (tests and benchmarks of the patch EM).

Particles are the exact projections of a volume given by its spherical-Bessel coefficients, at
Haar-random rotations, placed with their ``L × L`` boxes either *well separated* (Chebyshev distance
between box corners ≥ ``2L − 1``, so no ``L × L`` window meets two particles —
condition 5 of Kreymer, Singer & Bendory 2025)
or *arbitrary non-overlapping* (boxes do not overlap, distance ≥ ``L``). The sum is optionally
filtered by a CTF (RELION convention) and white Gaussian noise is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoprism.ctf.model import CTFParams, ctf_on_grid
from cryoprism.fourier.core import fft2c, freq_grid, ifft2c
from cryoprism.geometry.rotations import uniform_rotations
from cryoprism.micrograph.sbasis import SphericalBesselBasis, projection_images, rotate_coefficients


@dataclass
class SimulatedMicrograph:
    micrograph: np.ndarray  # (H, W) float32, noisy
    clean: np.ndarray  # (H, W) float32, CTF-filtered, noise-free
    corners: np.ndarray  # (n, 2) top-left (row, col) of each particle box
    rotations: np.ndarray  # (n, 3, 3)
    noise_sigma: float


def place_boxes(shape, L: int, n: int, separated: bool = True, rng=None, max_tries: int = 200) -> np.ndarray:
    """Up to ``n`` random top-left corners of ``L × L`` boxes inside ``shape`` obeying the spacing
    rule (see module docstring). Returns ``(k, 2)`` (row, col), ``k ≤ n`` when the field is full."""
    rng = np.random.default_rng(rng)
    H, W = shape
    d = 2 * L - 1 if separated else L
    free = np.ones((H - L + 1, W - L + 1), dtype=bool)
    out = []
    for _ in range(n):
        for _try in range(max_tries):
            r, c = int(rng.integers(0, H - L + 1)), int(rng.integers(0, W - L + 1))
            if free[r, c]:
                break
        else:
            cand = np.argwhere(free)
            if cand.size == 0:
                break
            r, c = cand[rng.integers(len(cand))]
        out.append((r, c))
        free[max(0, r - d + 1):r + d, max(0, c - d + 1):c + d] = False
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def simulate_micrograph(basis: SphericalBesselBasis, coef: np.ndarray, shape, n_particles: int, *,
                        snr: float | None = None, noise_sigma: float | None = None, separated: bool = True,
                        ctf: CTFParams | None = None, pixel_size_A: float | None = None,
                        rng=None) -> SimulatedMicrograph:
    """Simulate a micrograph of ``shape`` with ``n_particles`` projections of the volume ``coef``.

    Noise: ``noise_sigma`` directly, or from ``snr`` = (energy of the clean micrograph) /
    (n_particles · L² · σ²), i.e. the mean per-particle-box SNR.
    """
    rng = np.random.default_rng(rng)
    L = basis.L
    corners = place_boxes(shape, L, n_particles, separated, rng)
    R = uniform_rotations(len(corners), rng)
    Phi = projection_images(basis, L).reshape(-1, basis.n)
    clean = np.zeros(shape)
    for a in range(0, len(corners), 512):
        xr = rotate_coefficients(basis, coef, R[a:a + 512])
        imgs = (xr @ Phi.T).reshape(-1, L, L)
        for (r, c), im in zip(corners[a:a + 512], imgs):
            clean[r:r + L, c:c + L] += im
    if ctf is not None:
        s, ang = freq_grid(shape, pixel_size_A, polar=True)
        clean = ifft2c(fft2c(clean) * ctf_on_grid(s, ang, ctf)).real
    if noise_sigma is None:
        if snr is None:
            raise ValueError("give snr or noise_sigma")
        noise_sigma = float(np.sqrt((clean**2).sum() / (max(len(corners), 1) * L * L * snr)))
    mic = clean + noise_sigma * rng.standard_normal(shape)
    return SimulatedMicrograph(mic.astype(np.float32), clean.astype(np.float32), corners, R,
                               float(noise_sigma))
