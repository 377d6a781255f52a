"""Synthetic volumes: Gaussian blobs and density maps from atomic models (gemmi).

Atomic model → map (as Chimera's ``molmap``): every atom is a normalised 3-D Gaussian weighted by its
atomic number ``Z``, with width

    σ = resolution_A / (π √2)   (≈ 0.225 × resolution; molmap's default ``sigmaFactor``)

so that the map's Fourier amplitude falls to ``exp(-2π²σ²s²) = exp(-1) ≈ 0.37`` at ``s = 1/resolution``.
Each Gaussian integrates to ``Z`` (the voxel values sum to the total atomic number), sampled on the
voxel centres of an ``L³`` box of ``pixel_size_A``; truncated at 4σ (a relative error ≤ 3e-4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoprism.errors import InputError

MOLMAP_SIGMA_FACTOR = 1.0 / (np.pi * np.sqrt(2.0))


def gaussian_blob_volume(L: int, centers_px=((0.0, 0.0, 0.0),), sigmas_px=(3.0,), amplitudes=None,
                         dtype=np.float32) -> np.ndarray:
    """Sum of isotropic Gaussians ``a·exp(-|r - c|²/(2σ²))`` sampled on an ``L³`` grid ``[z, y, x]``.

    ``centers_px``: ``(k, 3)`` centres ``(x, y, z)`` in pixels from the box centre ``L//2``;
    ``sigmas_px``: ``(k,)`` widths in pixels (a scalar is broadcast); ``amplitudes``: peak values
    (default 1). The analytic projection along a unit direction is ``a·√(2π)σ·exp(-d²/(2σ²))`` with
    ``d`` the distance to the projected centre.
    """
    c = np.atleast_2d(np.asarray(centers_px, dtype=np.float64))
    k = c.shape[0]
    s = np.broadcast_to(np.asarray(sigmas_px, dtype=np.float64), (k,))
    a = np.ones(k) if amplitudes is None else np.broadcast_to(np.asarray(amplitudes, np.float64), (k,))
    g = np.arange(L) - L // 2
    vol = np.zeros((L, L, L), dtype=np.float64)
    for (cx, cy, cz), sig, amp in zip(c, s, a):
        gx = np.exp(-((g - cx) ** 2) / (2 * sig * sig))
        gy = np.exp(-((g - cy) ** 2) / (2 * sig * sig))
        gz = np.exp(-((g - cz) ** 2) / (2 * sig * sig))
        vol += amp * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return vol.astype(dtype)


def read_atoms(path) -> tuple[np.ndarray, np.ndarray]:
    """Atom positions ``(k, 3)`` (x, y, z in Å) and atomic numbers ``(k,)`` from a PDB/mmCIF file.

    Uses the first model; hydrogens are kept if present; alternate locations all count.
    """
    import gemmi

    p = Path(path)
    if not p.exists():
        raise InputError("atomic model not found", p)
    try:
        st = gemmi.read_structure(str(p))
    except Exception as e:  # gemmi raises RuntimeError/ValueError on malformed files
        raise InputError(f"cannot read atomic model ({e})", p) from e
    if len(st) == 0:
        raise InputError("atomic model has no models", p)
    xyz, z = [], []
    for ch in st[0]:
        for res in ch:
            for at in res:
                xyz.append((at.pos.x, at.pos.y, at.pos.z))
                z.append(at.element.atomic_number)
    if not xyz:
        raise InputError("atomic model has no atoms", p)
    return np.asarray(xyz, dtype=np.float64), np.asarray(z, dtype=np.float64)


def volume_from_atoms(xyz_A, weights, L: int, pixel_size_A: float, resolution_A: float,
                      center_A=None, dtype=np.float32) -> np.ndarray:
    """Map ``[z, y, x]`` of Gaussians at ``xyz_A`` (Å) weighted by ``weights`` (see module docstring).

    ``center_A``: the model point put at the box centre ``L//2`` (default: the weight-weighted
    centroid of the atoms).
    """
    xyz = np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if center_A is None:
        center_A = (xyz * w[:, None]).sum(0) / w.sum()
    sigma = resolution_A * MOLMAP_SIGMA_FACTOR / pixel_size_A  # pixels
    pos = (xyz - np.asarray(center_A, np.float64)) / pixel_size_A + L // 2  # fractional voxel index
    half = int(np.ceil(4 * sigma))
    offs = np.arange(-half, half + 1)
    norm = 1.0 / ((2 * np.pi) ** 1.5 * sigma**3)
    flat = np.zeros(L * L * L, dtype=np.float64)
    for a in range(0, len(xyz), 4096):
        p = pos[a:a + 4096]
        base = np.rint(p).astype(np.int64)  # (k, 3) nearest voxel, x y z
        idx = base[:, :, None] + offs[None, None, :]  # (k, 3, w)
        g = np.exp(-((idx - p[:, :, None]) ** 2) / (2 * sigma * sigma))
        g = np.where((idx >= 0) & (idx < L), g, 0.0)
        idx = np.clip(idx, 0, L - 1)
        gx, gy, gz = g[:, 0], g[:, 1], g[:, 2]
        ix, iy, iz = idx[:, 0], idx[:, 1], idx[:, 2]
        vals = (w[a:a + 4096, None, None, None] * norm * gz[:, :, None, None] * gy[:, None, :, None]
                * gx[:, None, None, :])
        lin = (iz[:, :, None, None] * L + iy[:, None, :, None]) * L + ix[:, None, None, :]
        flat += np.bincount(lin.ravel(), weights=vals.ravel(), minlength=L**3)
    return flat.reshape(L, L, L).astype(dtype)


def volume_from_pdb(path, L: int, pixel_size_A: float, resolution_A: float, center_A=None,
                    dtype=np.float32) -> np.ndarray:
    """molmap-style map of an atomic model file (PDB or mmCIF): Gaussians weighted by atomic number.

    ``σ = resolution_A/(π√2)``; each atom integrates to its atomic number; the Z-weighted centroid
    goes to the box centre unless ``center_A`` (x, y, z in Å) is given.
    """
    xyz, z = read_atoms(path)
    return volume_from_atoms(xyz, z, L, pixel_size_A, resolution_A, center_A=center_A, dtype=dtype)
