"""Uniform batched access to particles given as arrays or as an ``io.ParticleStack``.

Every reconstruction reads particles through :func:`as_source`; a batch is
``(images (b, L, L), rotations (b, 3, 3), origins_px (b, 2) or None, ctf (b, L, L) or None)``.
CTF grids are computed per batch from ``CTFParams`` so no ``n × L²`` CTF array is ever held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cryoprism.ctf.model import CTFParams, ctf_2d


@dataclass
class Source:
    """Particles with poses and CTF, read batch by batch (``get(start, stop)``)."""

    n: int
    L: int
    pixel_size_A: float | None
    _images: Any
    rotations: np.ndarray
    origins_px: np.ndarray | None
    ctf: Any  # None, (n, L, L) array, or CTFParams over n particles
    dtype: Any = np.float32

    def get(self, start: int, stop: int, indices: np.ndarray | None = None):
        idx = np.arange(start, stop) if indices is None else np.asarray(indices)[start:stop]
        imgs = self._images
        if hasattr(imgs, "images") and callable(imgs.images):
            im = np.asarray(imgs.images(idx))
        else:
            im = np.asarray(imgs[idx])
        im = im.astype(self.dtype, copy=False)
        rot = self.rotations[idx]
        org = None if self.origins_px is None else self.origins_px[idx]
        return im, rot, org, self.ctf_grid(idx)

    def ctf_grid(self, idx):
        if self.ctf is None:
            return None
        if isinstance(self.ctf, CTFParams):
            if self.pixel_size_A is None:
                raise ValueError("a CTFParams CTF needs pixel_size_A")
            c = ctf_2d(self.L, self.pixel_size_A, self.ctf.take(idx), dtype=self.dtype)
            return np.broadcast_to(c, (len(idx), self.L, self.L)) if c.ndim == 2 else c
        c = np.asarray(self.ctf)
        return np.broadcast_to(c, (len(idx),) + c.shape) if c.ndim == 2 else c[idx]


def as_source(data, rotations=None, origins_px=None, ctf=None, pixel_size_A=None) -> Source:
    """Wrap an ``(n, L, L)`` array (with ``rotations``, ``origins_px``, ``ctf``) or a ParticleStack.

    For a ParticleStack, poses, origins (Å → pixels) and CTF parameters come from its table unless
    given explicitly. ``ctf`` may be None, an ``(n, L, L)`` centred grid, or ``CTFParams``;
    ``ctf=False`` means no CTF even for a ParticleStack whose table has one.
    """
    if hasattr(data, "batches") and hasattr(data, "n"):  # io.ParticleStack
        from cryoprism.errors import InputError

        if data.n == 0:
            raise InputError("no particles: expected at least one row with an image", data.path)
        px = float(pixel_size_A or data.pixel_size_A)
        if rotations is None:
            rotations = data.rotations()
            if rotations is None:
                raise InputError("no poses: expected rlnAngleRot, rlnAngleTilt and rlnAnglePsi columns "
                                 "(or cryoSPARC alignments3D/pose)", data.path)
        rot = np.asarray(rotations, dtype=np.float64)
        if origins_px is None:
            o = data.origins_A()
            origins_px = None if o is None else np.asarray(o, np.float64) / px
        if ctf is None:
            ctf = data.ctf_params()
        elif ctf is False:
            ctf = None
        return Source(int(data.n), int(data.box), px, data, rot.reshape(-1, 3, 3),
                      None if origins_px is None else np.asarray(origins_px, np.float64).reshape(-1, 2),
                      ctf, np.float32)
    arr = data
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"images must be (n, L, L), got {arr.shape}")
    if rotations is None:
        raise ValueError("rotations are required with an image array")
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if rot.shape[0] != arr.shape[0]:
        raise ValueError(f"{arr.shape[0]} images but {rot.shape[0]} rotations")
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    ctf = None if ctf is False else ctf
    return Source(arr.shape[0], arr.shape[1], pixel_size_A, arr, rot,
                  None if origins_px is None else np.asarray(origins_px, np.float64).reshape(-1, 2),
                  ctf, dtype)
