"""Particle simulation: volumes → CTF-affected, shifted, noisy projections as RELION 3.1 STAR + MRCS.

Forward model per particle j (docs/conventions.md): ``y_j = F⁻¹[C_j · F shift(P(V_{s_j}, A_j), -o_j)] + e_j``
with the RELION CTF ``C_j`` (positive at low frequency), the state ``s_j`` recorded in
``rlnClassNumber`` (1-based), and noise ``e_j`` Gaussian, white or coloured.

SNR definition. ``SNR = mean_j ‖x_j‖² / (L² σ²)``: the mean power per pixel of the *CTF-affected,
shifted clean images* ``x_j`` divided by the noise variance per pixel ``σ²``. For coloured noise ``σ²``
is the total variance per pixel (the noise PSD is scaled so that its mean over the ``L × L`` frequency
grid is ``σ²``). ``σ`` is fixed from the first batch (same distribution as the rest); the SNR actually
realised over all images is reported in :class:`SimulationResult`.

Randomness: per-particle parameters are drawn up front from ``rng``; the noise of batch ``b`` comes
from its own child seed, so the stack does not depend on the number of workers. Images are produced
batch by batch through :func:`cryoprism.parallel.map_batches` and streamed to disk, so 10⁶ particles
need only a few batches in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.forward.projection import project
from cryoprism.fourier.core import fft2c, ifft2c, radius_grid
from cryoprism.geometry import matrix_to_euler, uniform_rotations
from cryoprism.io.particles import ParticleStack, read_particles
from cryoprism.parallel import map_batches
from cryoprism.parallel.config import finufft_threads, progress_bar
from cryoprism.parallel.core import batch_ranges, default_workers


@dataclass
class SimulationResult:
    """What was simulated. ``images`` is filled only when no output files were asked for.
    ``particles``: the simulated particles as a :class:`~cryoprism.io.ParticleStack` (the written
    STAR + MRCS, or in memory; in memory its CTF is None when the images carry none)."""

    table: pd.DataFrame
    optics: pd.DataFrame
    rotations: np.ndarray
    origins_A: np.ndarray
    states: np.ndarray  # 0-based state per particle (rlnClassNumber − 1)
    ctf: CTFParams
    noise_sigma: float
    snr_target: float | None
    snr_realised: float | None
    images: np.ndarray | None = None
    star_path: Path | None = None
    stack_path: Path | None = None
    info: dict = field(default_factory=dict)
    particles: ParticleStack | None = None


def noise_psd_grid(L: int, pixel_size_A: float, noise_color) -> np.ndarray | None:
    """Noise PSD on the centred grid, scaled to mean 1 (None for white noise).

    ``noise_color``: ``"white"``, ``"pink"`` (PSD ∝ 1/(s + s₀), ``s₀`` = 1/(L·pixel)), ``"brown"``
    (∝ 1/(s + s₀)²) or a callable ``f(s_invA) → PSD`` on radial frequencies in 1/Å.
    """
    if noise_color is None or (isinstance(noise_color, str) and noise_color == "white"):
        return None
    s = radius_grid((L, L), pixel_size_A)
    s0 = 1.0 / (L * pixel_size_A)
    if callable(noise_color):
        psd = np.asarray(noise_color(s), dtype=np.float64)
    elif noise_color == "pink":
        psd = 1.0 / (s + s0)
    elif noise_color == "brown":
        psd = 1.0 / (s + s0) ** 2
    else:
        raise ValueError(f"noise_color must be 'white', 'pink', 'brown' or a callable, got {noise_color!r}")
    psd = np.broadcast_to(psd, (L, L)).astype(np.float64)
    if np.any(psd < 0) or not np.all(np.isfinite(psd)) or psd.mean() <= 0:
        raise ValueError("the noise PSD must be finite, non-negative and not all zero")
    return psd / psd.mean()


def make_noise(shape, sigma: float, psd: np.ndarray | None, rng, dtype=np.float32) -> np.ndarray:
    """Gaussian noise ``(b, L, L)`` with variance ``σ²`` per pixel and the given PSD shape (mean 1)."""
    w = rng.standard_normal(shape, dtype=np.float32 if np.dtype(dtype) == np.float32 else np.float64)
    if psd is not None:
        w = ifft2c(fft2c(w) * np.sqrt(psd)).real
    return (sigma * w).astype(dtype)


def draw_defocus_groups(n: int, n_groups: int, defocus_range_A, astigmatism_A: float, rng):
    """Defocus per particle from ``n_groups`` micrograph-like groups (U, V, angle, group index).

    Group means are evenly spaced over ``defocus_range_A``; within a group every particle has the
    group's U/V/angle (as particles from one micrograph). Astigmatism ``U − V`` is drawn uniformly in
    ``[0, astigmatism_A]`` per group, angle uniformly in [0, 180)°.
    """
    lo, hi = (float(v) for v in defocus_range_A)
    G = max(1, int(n_groups))
    mean = np.linspace(lo, hi, G) if G > 1 else np.array([(lo + hi) / 2])
    ast = rng.uniform(0, astigmatism_A, G)
    ang = rng.uniform(0, 180, G)
    g = rng.integers(0, G, n)
    return mean[g] + ast[g] / 2, mean[g] - ast[g] / 2, ang[g], g


def simulate_particles(volumes, n: int, pixel_size_A: float, *, snr: float | None = 0.1, rotations=None,
                       origins_A=None, shift_std_A: float = 0.0, states=None, state_weights=None,
                       defocus_range_A=(1.0e4, 3.0e4), n_defocus_groups: int = 10,
                       astigmatism_A: float = 500.0, voltage_kV: float = 300.0, cs_mm: float = 2.7,
                       amplitude_contrast: float = 0.1, bfactor_A2: float = 0.0, ctf: bool = True,
                       noise_color="white", rng=None, out_star=None, out_mrcs=None, batch_size: int = 256,
                       n_workers: int | None = None, dtype=np.float32, progress: bool = True, job=None
                       ) -> SimulationResult:
    """Simulate ``n`` particles from one volume or a list of volumes (one per state).

    Volumes are ``[z, y, x]`` of one box ``L`` at ``pixel_size_A``. Poses are uniform on SO(3) unless
    ``rotations`` ``(n, 3, 3)`` are given; origins ``(n, 2)`` [x, y] in Å (RELION meaning) default to
    normal with ``shift_std_A`` per axis. States are drawn with ``state_weights`` (default equal)
    unless ``states`` (0-based) are given. ``snr=None`` gives noiseless images. ``ctf=False`` skips the
    CTF (the STAR still carries the defocus values drawn). With ``out_star`` and ``out_mrcs`` the
    stack is streamed to a RELION 3.1 STAR + MRCS (``rlnClassNumber`` = state + 1,
    ``rlnRandomSubset`` alternating 1/2, ``rlnMicrographName`` = defocus group) — through ``job``
    (:class:`cryoprism.io.job.Job`; the names are then relative to its folder) when given; otherwise
    the images are returned in memory.
    """
    vols = [np.asarray(volumes)] if np.ndim(volumes) == 3 else [np.asarray(v) for v in volumes]
    L = vols[0].shape[-1]
    for v in vols:
        if v.shape != (L, L, L):
            raise ValueError("all volumes must be cubes of one box size")
    vols = [v.astype(dtype, copy=False) for v in vols]
    K = len(vols)
    rng = np.random.default_rng(rng)
    n = int(n)

    if rotations is None:
        rot = uniform_rotations(n, rng)
    else:
        rot = np.asarray(rotations, np.float64).reshape(n, 3, 3)
    if origins_A is None:
        org = rng.normal(0.0, shift_std_A, (n, 2)) if shift_std_A > 0 else np.zeros((n, 2))
    else:
        org = np.asarray(origins_A, np.float64).reshape(n, 2)
    if states is None:
        wts = np.ones(K) if state_weights is None else np.asarray(state_weights, np.float64)
        st = rng.choice(K, size=n, p=wts / wts.sum())
    else:
        st = np.asarray(states, np.int64).reshape(n)
        if st.min() < 0 or st.max() >= K:
            raise ValueError(f"states must be in [0, {K})")
    du, dv, da, grp = draw_defocus_groups(n, n_defocus_groups, defocus_range_A, astigmatism_A, rng)
    cp = CTFParams(du, dv, da, voltage_kV, cs_mm, amplitude_contrast, 0.0, bfactor_A2, 1.0)
    psd = noise_psd_grid(L, pixel_size_A, noise_color)
    workers = n_workers or default_workers()
    ranges = batch_ranges(n, batch_size)  # fixed by batch_size only: the stack is worker-independent
    seeds = np.random.SeedSequence(int(rng.integers(2**63))).spawn(len(ranges))

    def clean(a, b):
        c = ctf_2d(L, pixel_size_A, cp.take(np.arange(a, b)), dtype=dtype) if ctf else None
        out = np.empty((b - a, L, L), dtype=dtype)
        for k in range(K):
            sel = np.flatnonzero(st[a:b] == k)
            if sel.size:
                out[sel] = project(vols[k], rot[a:b][sel], org[a:b][sel] / pixel_size_A,
                                   None if c is None else c[sel], nthreads=nt)
        return out

    nt = finufft_threads(workers, len(ranges))
    sigma = 0.0
    pilot = {}
    if snr is not None:
        if snr <= 0:
            raise ValueError("snr must be positive (or None for noiseless images)")
        a, b = ranges[0] if ranges else (0, 0)
        pilot[0] = clean(a, b)  # reused as batch 0
        p0 = float(np.mean(np.sum(pilot[0].astype(np.float64) ** 2, axis=(1, 2)))) / (L * L)
        sigma = float(np.sqrt(p0 / snr))

    def one_batch(i):
        a, b = ranges[i]
        x = pilot.pop(i) if i in pilot else clean(a, b)
        power = float(np.sum(x.astype(np.float64) ** 2))
        if snr is not None:
            x = x + make_noise(x.shape, sigma, psd, np.random.default_rng(seeds[i]), dtype)
        return x, power

    # metadata table (RELION 3.1)
    rot_deg, tilt_deg, psi_deg = matrix_to_euler(rot) if n else (np.zeros(0),) * 3
    table = pd.DataFrame({
        "rlnMicrographName": [f"defocus_group_{g + 1:04d}.mrc" for g in grp],
        "rlnDefocusU": du, "rlnDefocusV": dv, "rlnDefocusAngle": da,
        "rlnCtfBfactor": np.full(n, float(bfactor_A2)), "rlnPhaseShift": np.zeros(n),
        "rlnAngleRot": np.asarray(rot_deg), "rlnAngleTilt": np.asarray(tilt_deg),
        "rlnAnglePsi": np.asarray(psi_deg),
        "rlnOriginXAngst": org[:, 0], "rlnOriginYAngst": org[:, 1],
        "rlnClassNumber": st + 1, "rlnRandomSubset": (np.arange(n) % 2) + 1,
        "rlnOpticsGroup": np.ones(n, np.int64),
    })
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnVoltage": [float(voltage_kV)], "rlnSphericalAberration": [float(cs_mm)],
        "rlnAmplitudeContrast": [float(amplitude_contrast)], "rlnImagePixelSize": [float(pixel_size_A)],
        "rlnImageSize": [int(L)], "rlnImageDimensionality": [2],
    })

    powers: list[float] = []
    group = max(1, 2 * workers)

    def stream():
        for g0 in range(0, len(ranges), group):
            idx = list(range(g0, min(g0 + group, len(ranges))))
            for x, pw in map_batches(one_batch, idx, n_workers=workers, progress=False):
                powers.append(pw)
                yield x


    images = None
    star_path = stack_path = None
    if out_star is not None or out_mrcs is not None:
        if out_star is None or out_mrcs is None:
            raise ValueError("give both out_star and out_mrcs (or neither)")
        from cryoprism.io import write_particles

        if job is not None:
            write_particles = job.write_particles  # noqa: F811

        bar = progress_bar(total=n, desc="simulate", progress=progress, leave=False)

        def counted():
            for x in stream():
                bar.update(len(x))
                yield x

        try:
            star_path, stack_path = write_particles(out_star, out_mrcs, counted(), table, optics,
                                                    pixel_size_A=pixel_size_A)
        finally:
            bar.close()
        star_path, stack_path = Path(star_path), Path(stack_path)
    else:
        images = np.empty((n, L, L), dtype=dtype)
        pos = 0
        for x in progress_bar(stream(), total=len(ranges), desc="simulate", progress=progress, leave=False):
            images[pos:pos + len(x)] = x
            pos += len(x)
        particles = ParticleStack.from_arrays(images, pixel_size_A=pixel_size_A, rotations=rot, origins_A=org,
                                              ctf=cp if ctf else None, class_numbers=st + 1,
                                              table=table[["rlnMicrographName", "rlnRandomSubset"]])
    if star_path is not None:
        particles = read_particles(star_path)
    realised = None
    if snr is not None and n:
        realised = float(np.sum(powers) / (n * L * L) / sigma**2)
    return SimulationResult(table, optics, rot, org, st, cp, sigma, snr, realised, images,
                            star_path, stack_path, {"noise_color": noise_color if isinstance(noise_color, str)
                                                    else "custom", "box": L, "states": K}, particles)
