"""Micrograph simulation: projections at random, separated positions, CTF over the whole field, noise.

Placement. Centres are drawn uniformly (integer pixels) so that every ``L × L`` particle box lies
inside the micrograph, by dart throwing with a minimum centre-to-centre distance ``d``:

* ``separation="well-separated"`` (default): ``d = 2L`` (Chebyshev/max-norm), so the ``2L × 2L``
  windows around particles do not overlap — the condition of the micrograph EM of Kreymer,
  Singer & Bendory (2025): any ``L × L`` patch meets at most one particle;
* ``separation="non-overlapping"``: ``d = L`` (the ``L × L`` boxes do not overlap);
* a number: ``d`` in pixels (Euclidean distance).

If fewer than the requested number of particles fit after many throws, the micrograph holds as many
as fit (reported per micrograph).

Image formation: each particle is ``project(V_state, A)`` pasted with its box centre ``L//2`` at the
coordinate; the CTF of the micrograph (one defocus per micrograph) multiplies the transform of the
whole field; then Gaussian noise. SNR: ``‖clean CTF-affected micrograph‖² / (k · L² · σ²)`` with
``k`` particles — the per-particle SNR of :mod:`cryoprism.forward.simulate`, for separated
particles.

Optional defects (for pickers' outlier tests), in units of the noise σ: ``ice_gradient`` adds a linear
ramp of that peak-to-peak amplitude in a random direction (thickness change of the ice);
``carbon_edge`` adds a step of that height along a random line through the middle third of the
micrograph (the edge of a carbon film), before the CTF, so that the edge rings as in real images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.forward.projection import project
from cryoprism.forward.simulate import make_noise, noise_psd_grid
from cryoprism.fourier.core import fft2c, ifft2c
from cryoprism.geometry import matrix_to_euler, uniform_rotations
from cryoprism.parallel import map_batches
from cryoprism.parallel.config import finufft_threads
from cryoprism.parallel.core import default_workers


@dataclass
class MicrographResult:
    micrographs: np.ndarray  # (m, M, M) float32
    clean: np.ndarray | None  # CTF-affected noiseless micrographs (when keep_clean)
    coordinates: pd.DataFrame  # rlnMicrographName, rlnCoordinateX/Y (px), rlnClassNumber, angles
    ctf: CTFParams  # one entry per micrograph
    noise_sigma: np.ndarray  # (m,)
    paths: list | None = None
    star_path: Path | None = None


def place_particles(size: int, L: int, count: int, min_distance: float, rng, metric: str = "euclidean",
                    max_tries: int = 200) -> np.ndarray:
    """Up to ``count`` integer centres ``(k, 2)`` [x, y] whose ``L × L`` boxes fit in ``size × size``
    with pairwise distance ≥ ``min_distance`` (``metric``: "euclidean" or "chebyshev")."""
    lo, hi = L // 2, size - (L - L // 2)  # box [c - L//2, c + L - L//2) inside [0, size)
    if hi < lo:
        raise ValueError(f"a {L}-pixel box does not fit in a {size}-pixel micrograph")
    pts = np.zeros((0, 2), np.int64)
    fails = 0
    while len(pts) < count and fails < max_tries:
        cand = rng.integers(lo, hi + 1, (4 * (count - len(pts)) + 8, 2))
        added = False
        for c in cand:
            if len(pts):
                d = np.abs(pts - c)
                dist = d.max(1) if metric == "chebyshev" else np.hypot(d[:, 0], d[:, 1])
                if dist.min() < min_distance:
                    continue
            pts = np.vstack([pts, c[None]])
            added = True
            if len(pts) == count:
                break
        fails = 0 if added else fails + 1
    return pts


def simulate_micrographs(volumes, n_micrographs: int, size_px: int, particles_per_micrograph: int,
                         pixel_size_A: float, *, separation="well-separated", snr: float | None = 0.1,
                         state_weights=None, defocus_range_A=(1.0e4, 3.0e4), astigmatism_A: float = 300.0,
                         voltage_kV: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.1,
                         bfactor_A2: float = 0.0, ctf: bool = True, noise_color="white", rng=None,
                         job=None, keep_clean: bool = False, n_workers: int | None = None,
                         progress: bool = True, ice_gradient: float = 0.0,
                         carbon_edge: float = 0.0, ctf_noise_fraction: float = 0.0) -> MicrographResult:
    """Simulate ``n_micrographs`` fields of ``size_px²`` pixels with particles of ``volumes``.

    Returns the micrographs (and, with ``keep_clean``, the noiseless ones) and a coordinate table
    (RELION names: ``rlnMicrographName``, ``rlnCoordinateX/Y`` in pixels = column/row of the particle
    centre, ``rlnClassNumber`` = state + 1, ``rlnAngleRot/Tilt/Psi``, defocus). With ``job``
    (:class:`cryoprism.io.job.Job`), writes ``micrograph_XXXX.mrc`` and ``coordinates.star`` through it.
    """

    vols = [np.asarray(volumes, np.float32)] if np.ndim(volumes) == 3 else \
        [np.asarray(v, np.float32) for v in volumes]
    L = vols[0].shape[-1]
    K = len(vols)
    M = int(size_px)
    rng = np.random.default_rng(rng)
    if separation == "well-separated":
        dmin, metric = 2 * L, "chebyshev"
    elif separation == "non-overlapping":
        dmin, metric = L, "chebyshev"
    else:
        dmin, metric = float(separation), "euclidean"
    lo, hi = (float(v) for v in defocus_range_A)
    m = int(n_micrographs)
    ast = rng.uniform(0, astigmatism_A, m)
    mean = rng.uniform(lo, hi, m)
    cp = CTFParams(mean + ast / 2, mean - ast / 2, rng.uniform(0, 180, m), voltage_kV, cs_mm,
                   amplitude_contrast, 0.0, bfactor_A2, 1.0)
    centres = [place_particles(M, L, particles_per_micrograph, dmin, rng, metric) for _ in range(m)]
    wts = np.ones(K) if state_weights is None else np.asarray(state_weights, np.float64)
    states = [rng.choice(K, size=len(c), p=wts / wts.sum()) for c in centres]
    rots = [uniform_rotations(len(c), rng) for c in centres]
    seeds = np.random.SeedSequence(int(rng.integers(2**63))).spawn(m)
    ramp_dir = rng.uniform(0, 2 * np.pi, m)
    edge_dir = rng.uniform(0, 2 * np.pi, m)
    edge_off = rng.uniform(-M / 6, M / 6, m)
    psd = noise_psd_grid(M, pixel_size_A, noise_color)
    workers = n_workers or default_workers()
    nt = finufft_threads(workers)

    def one(i):
        field = np.zeros((M, M), np.float64)
        c, s, A = centres[i], states[i], rots[i]
        for k in range(K):
            sel = np.flatnonzero(s == k)
            if sel.size == 0:
                continue
            imgs = project(vols[k], A[sel], nthreads=nt)
            for (x, y), im in zip(c[sel], imgs):
                field[y - L // 2:y - L // 2 + L, x - L // 2:x - L // 2 + L] += im
        ctf_i = ctf_2d(M, pixel_size_A, cp.take(np.array([i])), dtype=np.float64)[0] if ctf else None
        if ctf:
            field = ifft2c(fft2c(field) * ctf_i).real
        sigma = 0.0
        if snr is not None and len(c):
            sigma = float(np.sqrt(np.sum(field**2) / (len(c) * L * L * snr)))
        nrng = np.random.default_rng(seeds[i])
        f_ice = float(ctf_noise_fraction) if ctf else 0.0
        noise = make_noise((M, M), sigma, psd, nrng, np.float64)
        if f_ice > 0:
            ice = ifft2c(fft2c(make_noise((M, M), 1.0, psd, nrng, np.float64)) * ctf_i).real
            noise = np.sqrt(1 - f_ice) * noise + np.sqrt(f_ice) * sigma * ice / ice.std()
        noisy = field + noise
        if ice_gradient or carbon_edge:
            yy, xx = np.mgrid[0:M, 0:M] - M / 2.0
            if carbon_edge:
                d = xx * np.cos(edge_dir[i]) + yy * np.sin(edge_dir[i]) - edge_off[i]
                step = carbon_edge * sigma / (1.0 + np.exp(-d / 2.0))
                noisy += ifft2c(fft2c(step) * ctf_i).real if ctf else step
            if ice_gradient:
                noisy += ice_gradient * sigma * (xx * np.cos(ramp_dir[i]) + yy * np.sin(ramp_dir[i])) / M
        return noisy.astype(np.float32), (field.astype(np.float32) if keep_clean else None), sigma

    res = map_batches(one, list(range(m)), n_workers=workers, desc="micrographs", progress=progress)
    mics = np.stack([r[0] for r in res]) if m else np.zeros((0, M, M), np.float32)
    clean = np.stack([r[1] for r in res]) if keep_clean and m else None
    sig = np.array([r[2] for r in res])
    names = [f"micrograph_{i + 1:04d}.mrc" for i in range(m)]
    rows = []
    for i in range(m):
        if len(centres[i]) == 0:
            continue
        r, t, p = matrix_to_euler(rots[i]) if len(centres[i]) > 1 else \
            tuple(np.atleast_1d(v) for v in matrix_to_euler(rots[i][0]))
        rows.append(pd.DataFrame({
            "rlnMicrographName": names[i], "rlnCoordinateX": centres[i][:, 0].astype(float),
            "rlnCoordinateY": centres[i][:, 1].astype(float), "rlnClassNumber": states[i] + 1,
            "rlnAngleRot": r, "rlnAngleTilt": t, "rlnAnglePsi": p,
            "rlnDefocusU": float(cp.defocus_u_A[i]), "rlnDefocusV": float(cp.defocus_v_A[i]),
            "rlnDefocusAngle": float(cp.defocus_angle_deg[i]),
        }))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber"])
    paths = star_path = None
    if job is not None:
        paths = [job.write_mrc(name, mic, pixel_size_A) for name, mic in zip(names, mics)]
        optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                               "rlnVoltage": [float(voltage_kV)], "rlnSphericalAberration": [float(cs_mm)],
                               "rlnAmplitudeContrast": [float(amplitude_contrast)],
                               "rlnMicrographPixelSize": [float(pixel_size_A)]})
        t = table.copy()
        t["rlnOpticsGroup"] = 1
        star_path = job.write_star("coordinates.star", t, optics)
    return MicrographResult(mics, clean, table, cp, sig, paths, star_path)
