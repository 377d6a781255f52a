"""Apply an image operation to a whole file, streaming: an MRC image, volume or stack, or the images
of a RELION STAR / cryoSPARC .cs particle file.

Stacks are read in batches (memory-mapped), processed in parallel through :mod:`cryoprism.parallel`
and written in order as they finish, so memory stays at a few batches whatever the stack size.
Outputs go through a :class:`cryoprism.io.job.Job` (atomic writers). A STAR input gives a RELION 3.1
STAR output (every column kept, ``rlnImageName`` pointing into a new ``.mrcs`` of the same name).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from cryoprism.errors import InputError

STAR_SUFFIXES = {".star", ".cs"}


def is_particle_file(path) -> bool:
    """Whether ``path`` is a particle table (STAR or cryoSPARC .cs) rather than an MRC file."""
    return Path(path).suffix.lower() in STAR_SUFFIXES


def mrc_kind(path: Path, info: dict, forced: Optional[str] = None) -> str:
    """``image`` (one section), ``stack`` or ``volume``.

    Unless ``forced``: a ``.mrcs`` file is a stack; otherwise a header space group ≥ 1 or a cubic
    ``nx = ny = nz`` box means a volume, anything else with several sections is a stack.
    """
    if forced is not None:
        if forced not in ("image", "stack", "volume"):
            raise InputError(f"--kind must be image, stack or volume, got {forced!r}")
        if forced == "image" and info["nz"] != 1:
            raise InputError(f"--kind image but the file has {info['nz']} sections", path)
        return forced
    if info["nz"] == 1:
        return "image"
    if Path(path).suffix.lower() == ".mrcs":
        return "stack"
    if info["ispg"] >= 1 or info["nx"] == info["ny"] == info["nz"]:
        return "volume"
    return "stack"


def pixel_size(header_px, option_px, path, needed: bool) -> float | None:
    """The option's pixel size (Å), else the header's; ``InputError`` if ``needed`` and unknown."""
    px = option_px if option_px else header_px
    if needed and not px:
        raise InputError("pixel size unknown (0 in the header): pass --pixel-size in Å", path)
    return float(px) if px else None


def stream(read: Callable, groups: Iterable, fn: Callable) -> Iterator:
    """Yield ``fn(read(group))`` for each group in order, computed in parallel a few groups at a time
    (at most twice the worker count in memory)."""
    from cryoprism.parallel import default_workers, map_batches

    groups = list(groups)
    g = 2 * default_workers()
    for a in range(0, len(groups), g):
        yield from map_batches(lambda grp: fn(read(grp)), groups[a:a + g], progress=False)


class ImageFile:
    """The images of a stack file as an array-like ``(n, L, L)`` (slicing reads only those images):
    an MRC stack, or the images named by a STAR / .cs particle file."""

    def __init__(self, path):
        from cryoprism.io import MrcStack, read_mrc_header, read_particles

        self.path = Path(path)
        if not self.path.exists():
            raise InputError("file not found", self.path)
        if is_particle_file(self.path):
            ps = read_particles(self.path)
            self._read, n, L = ps.images, ps.n, ps.box
        else:
            info = read_mrc_header(self.path)
            if mrc_kind(self.path, info, None if self.path.suffix.lower() == ".mrcs" else "stack") != "stack":
                raise InputError("expected a stack of images (.mrcs) or a STAR file", self.path)
            st = MrcStack(self.path, info)
            self._read, n, L = st.read, st.n, st.shape[0]
        self.shape = (n, L, L)
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sl):
        return self._read(np.arange(self.shape[0])[sl])


def process_file(inp, job, out_name: str, fn: Callable, *, pixel_size_A: Optional[float], need_pixel: bool,
                 out_box: Callable[[int], int] = lambda L: L,
                 out_pixel: Callable[[float, int], float] = lambda p, L: p,
                 batch_size: int = 256, star_fn: Optional[Callable] = None,
                 kind: Optional[str] = None) -> dict:
    """Apply ``fn(array, kind, pixel_size_A)`` to an MRC (image/volume/stack) or to STAR particles and
    write the result through ``job`` as ``out_name``.

    ``star_fn(batch, pixel_size_A)`` (default ``fn(batch.images, "stack", px)``) handles STAR batches
    (it gets the per-particle CTF); a STAR input writes ``out_name`` with suffix ``.star`` and the
    stack with suffix ``.mrcs``. ``out_box(L)`` and ``out_pixel(px, L)`` give the output box and pixel
    size. Records and returns the figures (input, output, kind, images, boxes, pixel sizes in Å)."""
    from cryoprism.io import MrcStack, read_mrc, read_mrc_header

    t0 = time.time()
    inp = Path(inp)
    if not inp.exists():
        raise InputError("file not found", inp)
    if is_particle_file(inp):
        from cryoprism.io import read_particles

        stack = read_particles(inp, pixel_size_A=pixel_size_A)
        px = float(stack.pixel_size_A)  # the table's, else the header's, else --pixel-size
        L = stack.box
        star_name = out_name if out_name.lower().endswith(".star") else str(Path(out_name).with_suffix(".star"))
        stack_name = str(Path(star_name).with_suffix(".mrcs"))
        sfn = star_fn or (lambda b, p: fn(b.images, "stack", p))
        star_out, stack_out = job.write_particles(
            star_name, stack_name, stream(stack.batch, stack.batch_indices(batch_size), lambda b: sfn(b, px)),
            stack.star, pixel_size_A=out_pixel(px, L))
        stack.close()
        figures = {"input": str(inp), "output": str(star_out), "output_stack": str(stack_out),
                   "kind": "particles", "n_images": stack.n, "box_in": L, "box_out": out_box(L),
                   "pixel_size_in_A": px, "pixel_size_out_A": out_pixel(px, L)}
    else:
        info = read_mrc_header(inp)
        kind = mrc_kind(inp, info, kind)
        px = pixel_size(info["voxel_size_A"], pixel_size_A, inp, need_pixel)
        L = info["nx"]
        if kind == "stack":
            if info["nx"] != info["ny"]:
                raise InputError(f"images must be square, found {info['ny']}×{info['nx']}", inp)
            st = MrcStack(inp, info)
            n = st.n
            groups = [np.arange(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
            out = job.write_stack(out_name, stream(st.read, groups, lambda x: fn(x, "stack", px)), n, out_box(L),
                                  out_pixel(px, L) if px else None)
            st.close()
        else:
            arr, _ = read_mrc(inp)
            if len(set(arr.shape)) != 1:
                raise InputError(f"expected a square image or cubic volume, found shape {arr.shape}", inp)
            n = 1
            out = job.write_mrc(out_name, fn(arr, kind, px), out_pixel(px, L) if px else None)
        figures = {"input": str(inp), "output": str(out), "kind": kind, "n_images": n, "box_in": L,
                   "box_out": out_box(L), "pixel_size_in_A": px,
                   "pixel_size_out_A": out_pixel(px, L) if px else None}
    figures["seconds"] = round(time.time() - t0, 3)
    job.record(**figures)
    return figures
