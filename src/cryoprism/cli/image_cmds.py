"""CLI of the image and CTF areas: downsample, filter, normalize, whiten, phase-flip (ctf-estimate is in
preprocess_cmds).

Every command reads an MRC image, volume or stack, or a RELION STAR (or cryoSPARC .cs) particle file,
processes stacks in batches through :mod:`cryoprism.parallel` (memory-mapped input, streamed output)
and writes atomically. A STAR input gives a RELION 3.1 STAR output (every column kept, ``rlnImageName``
pointing into a new ``.mrcs`` next to it, same name with ``.mrcs``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, emit

_STAR_SUFFIXES = {".star", ".cs"}


def _mrc_kind(path: Path, info: dict, forced: Optional[str] = None) -> str:
    """``image`` (one section), ``stack`` or ``volume``.

    Unless ``forced``: a ``.mrcs`` file is a stack; otherwise a header space group ≥ 1 or a cubic
    ``nx = ny = nz`` box means a volume, anything else with several sections is a stack.
    """
    from cryoprism.errors import InputError

    if forced is not None:
        if forced not in ("image", "stack", "volume"):
            raise InputError(f"--kind must be image, stack or volume, got {forced!r}")
        if forced == "image" and info["nz"] != 1:
            raise InputError(f"--kind image but the file has {info['nz']} sections", path)
        return forced
    if info["nz"] == 1:
        return "image"
    if path.suffix.lower() == ".mrcs":
        return "stack"
    if info["ispg"] >= 1 or info["nx"] == info["ny"] == info["nz"]:
        return "volume"
    return "stack"


def _pixel(header_px, option_px, path, needed: bool):
    from cryoprism.errors import InputError

    px = option_px if option_px else header_px
    if needed and not px:
        raise InputError("pixel size unknown (0 in the header): pass --pixel-size in Å", path)
    return float(px) if px else None


def _stream(stack, fn: Callable, batch_size: int):
    """Yield ``fn(batch)`` for the batches of a ParticleStack in order, computed in parallel groups."""
    from cryoprism.parallel import map_batches
    from cryoprism.parallel.core import default_workers

    groups = stack.batch_indices(batch_size)
    g = 2 * default_workers()
    for a in range(0, len(groups), g):
        for r in map_batches(lambda idx: fn(stack.batch(idx)), groups[a:a + g], progress=False):
            yield r


def _process(inp: Path, out: Path, fn: Callable, *, pixel_size_A: Optional[float], need_pixel: bool,
             out_box: Callable[[int], int] = lambda L: L,
             out_pixel: Callable[[float, int], float] = lambda p, L: p,
             batch_size: int = 256, star_fn: Optional[Callable] = None,
             kind: Optional[str] = None) -> dict:
    """Apply ``fn(array, kind, pixel_size_A)`` to an MRC (image/volume/stack) or to STAR particles.

    ``star_fn(batch, pixel_size_A)`` (default ``fn(batch.images, "stack", px)``) handles STAR batches
    (it gets the per-particle CTF). ``out_box(L)`` and ``out_pixel(px, L)`` give the output box and pixel
    size. Returns figures for ``emit``.
    """
    from cryoprism.errors import InputError
    from cryoprism.io import MrcStack, MrcStackWriter, atomic_path, read_mrc, read_mrc_header, write_mrc
    from cryoprism.parallel import batch_ranges, map_reduce

    t0 = time.time()
    if not inp.exists():
        raise InputError("file not found", inp)
    if inp.suffix.lower() in _STAR_SUFFIXES:
        from cryoprism.io import read_particles, write_particles

        stack = read_particles(inp, pixel_size_A=pixel_size_A)
        px = float(stack.pixel_size_A)  # the table's, else the header's, else --pixel-size
        L = stack.box
        star_out = out if out.suffix.lower() == ".star" else out.with_suffix(".star")
        stack_out = star_out.with_suffix(".mrcs")
        sfn = star_fn or (lambda b, p: fn(b.images, "stack", p))
        write_particles(star_out, stack_out, _stream(stack, lambda b: sfn(b, px), batch_size), stack.star,
                        pixel_size_A=out_pixel(px, L))
        stack.close()
        return {"input": str(inp), "output": str(star_out), "output_stack": str(stack_out),
                "kind": "particles",
                "n_images": stack.n, "box_in": L, "box_out": out_box(L), "pixel_size_in_A": px,
                "pixel_size_out_A": out_pixel(px, L), "seconds": round(time.time() - t0, 3)}
    info = read_mrc_header(inp)
    kind = _mrc_kind(inp, info, kind)
    px = _pixel(info["voxel_size_A"], pixel_size_A, inp, need_pixel)
    L = info["nx"]
    if kind == "stack":
        if info["nx"] != info["ny"]:
            raise InputError(f"images must be square, found {info['ny']}×{info['nx']}", inp)
        st = MrcStack(inp, info)
        n = st.n
        with atomic_path(out) as tmp:
            with MrcStackWriter(tmp, n, out_box(L), out_pixel(px, L) if px else None) as w:
                map_reduce(lambda r: fn(st.read(np.arange(r[0], r[1])), "stack", px),
                           batch_ranges(n, batch_size), reduce=lambda acc, y: (w.write(y), acc)[1],
                           initial=0, progress=n > batch_size, desc="images")
        st.close()
    else:
        arr, _ = read_mrc(inp)
        if len(set(arr.shape)) != 1:
            raise InputError(f"expected a square image or cubic volume, found shape {arr.shape}", inp)
        n = 1
        write_mrc(out, fn(arr, kind, px), out_pixel(px, L) if px else None)
    return {"input": str(inp), "output": str(out), "kind": kind, "n_images": n, "box_in": L,
            "box_out": out_box(L), "pixel_size_in_A": px,
            "pixel_size_out_A": out_pixel(px, L) if px else None,
            "seconds": round(time.time() - t0, 3)}


def _ndim(kind: str) -> int:
    return 3 if kind == "volume" else 2


_IN_HELP = ("Input: MRC image (one section), volume (space group ≥ 1 or a cubic box), stack (.mrcs or any "
            "other multi-section file), or a RELION STAR / cryoSPARC .cs particle file.")
_OUT_HELP = ("Output (written atomically): an MRC of the input's kind, or for a STAR input a RELION 3.1 STAR "
             "plus a .mrcs stack of the same name.")
_PX_HELP = "Pixel size in Å (overrides the MRC header; for STAR input, used only if the file has none)."
_BATCH_HELP = "Images per batch (memory ≈ batch × box² × 16 bytes per worker)."
_KIND_HELP = ("MRC input: image, stack or volume (default: .mrcs = stack; space group ≥ 1 or a cubic box = "
              "volume; otherwise a stack).")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the cryoprism app."""

    @app.command("downsample")
    def downsample_cmd(
        inp: Path = typer.Argument(..., metavar="IN", help=_IN_HELP),
        out: Path = typer.Argument(..., metavar="OUT", help=_OUT_HELP),
        box: int = typer.Option(..., "--box", min=2, help="Output box size in pixels (≤ input box)."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help=_PX_HELP),
        kind: Optional[str] = typer.Option(None, "--kind", help=_KIND_HELP),
        batch_size: int = typer.Option(256, "--batch-size", help=_BATCH_HELP),
        as_json: bool = JSON_OPTION,
    ):
        """Fourier-crop IN to a box of --box pixels (anti-aliased, mean preserved) and write OUT.

        The pixel (voxel) size written is input pixel size × input box / --box, in Å. Prints the boxes and
        pixel sizes (Å) in and out."""
        from cryoprism.errors import InputError
        from cryoprism.fourier.resample import downsample

        def fn(x, kind, px):
            if box > x.shape[-1]:
                raise InputError(f"--box {box} is larger than the input box {x.shape[-1]}", inp)
            return downsample(x, box, _ndim(kind))[0]

        fig = _process(inp, out, fn, pixel_size_A=pixel_size, need_pixel=False, out_box=lambda L: box,
                       out_pixel=lambda p, L: p * L / box if p else p, batch_size=batch_size, kind=kind)
        emit(fig, as_json)

    @app.command("filter")
    def filter_cmd(
        inp: Path = typer.Argument(..., metavar="IN", help=_IN_HELP),
        out: Path = typer.Argument(..., metavar="OUT", help=_OUT_HELP),
        lowpass: Optional[float] = typer.Option(None, "--lowpass", help="Low-pass cutoff, resolution in Å "
                                                "(transfer ½ there)."),
        highpass: Optional[float] = typer.Option(None, "--highpass", help="High-pass cutoff, resolution in Å "
                                                 "(e.g. 200; transfer ½ there)."),
        edge: str = typer.Option("cosine", "--edge", help="Edge shape: cosine (raised cosine) or gaussian."),
        width: Optional[float] = typer.Option(None, "--width", help="Raised-cosine edge width in 1/Å "
                                              "(default 3 Fourier pixels)."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help=_PX_HELP),
        kind: Optional[str] = typer.Option(None, "--kind", help=_KIND_HELP),
        batch_size: int = typer.Option(256, "--batch-size", help=_BATCH_HELP),
        as_json: bool = JSON_OPTION,
    ):
        """Low-, high- or band-pass filter IN (cutoffs in Å, needs the pixel size) and write OUT."""
        from cryoprism.errors import InputError
        from cryoprism.image import bandpass
        from cryoprism.image import highpass as hp
        from cryoprism.image import lowpass as lp

        if lowpass is None and highpass is None:
            raise InputError("give --lowpass and/or --highpass (resolution in Å)")
        if edge not in ("cosine", "gaussian"):
            raise InputError(f"--edge must be cosine or gaussian, got {edge!r}")

        def fn(x, kind, px):
            nd = _ndim(kind)
            if lowpass is not None and highpass is not None:
                return bandpass(x, px, low_resolution_A=highpass, high_resolution_A=lowpass, edge=edge,
                                width_invA=width, ndim=nd)
            if lowpass is not None:
                return lp(x, px, resolution_A=lowpass, edge=edge, width_invA=width, ndim=nd)
            return hp(x, px, resolution_A=highpass, edge=edge, width_invA=width, ndim=nd)

        try:
            fig = _process(inp, out, fn, pixel_size_A=pixel_size, need_pixel=True, batch_size=batch_size,
                           kind=kind)
        except ValueError as e:
            if isinstance(e, InputError):
                raise
            raise InputError(str(e), inp) from e
        fig.update({"lowpass_A": lowpass, "highpass_A": highpass, "edge": edge})
        emit(fig, as_json)

    @app.command("normalize")
    def normalize_cmd(
        inp: Path = typer.Argument(..., metavar="IN", help=_IN_HELP),
        out: Path = typer.Argument(..., metavar="OUT", help=_OUT_HELP),
        radius: float = typer.Option(..., "--radius", help="Particle radius in pixels; the background is "
                                     "everything farther from the centre (L//2)."),
        kind: Optional[str] = typer.Option(None, "--kind", help=_KIND_HELP),
        batch_size: int = typer.Option(256, "--batch-size", help=_BATCH_HELP),
        as_json: bool = JSON_OPTION,
    ):
        """Normalise each image (or a volume) so its background has mean 0 and standard deviation 1."""
        from cryoprism.errors import InputError
        from cryoprism.image import normalize

        def fn(x, kind, px):
            try:
                return normalize(x, radius, _ndim(kind))
            except ValueError as e:
                raise InputError(str(e), inp) from e

        fig = _process(inp, out, fn, pixel_size_A=None, need_pixel=False, batch_size=batch_size, kind=kind)
        fig["radius_px"] = radius
        emit(fig, as_json)

    @app.command("whiten")
    def whiten_cmd(
        inp: Path = typer.Argument(..., metavar="IN", help="Input particle stack: MRC stack (.mrcs) or a "
                                   "RELION STAR / cryoSPARC .cs particle file."),
        out: Path = typer.Argument(..., metavar="OUT", help=_OUT_HELP),
        radius: float = typer.Option(..., "--radius", help="Particle radius in pixels; the noise spectrum is "
                                     "estimated from the pixels outside it."),
        batch_size: int = typer.Option(256, "--batch-size", help=_BATCH_HELP),
        as_json: bool = JSON_OPTION,
    ):
        """Estimate the noise power spectrum from the background of all images (first pass), then divide
        each image's transform by its square root (second pass): white noise of unit variance.

        --json also prints the radial noise spectrum (per Fourier shell, in input units² per pixel)."""
        from cryoprism.errors import InputError
        from cryoprism.image import noise_power_spectrum, whiten
        from cryoprism.io import MrcStack, read_mrc_header, read_particles

        if not inp.exists():
            raise InputError("file not found", inp)
        if inp.suffix.lower() in _STAR_SUFFIXES:
            ps = read_particles(inp)

            class _View:  # (n, L, L) slicing over the STAR's images
                shape = (ps.n, ps.box, ps.box)
                ndim = 3

                def __getitem__(self, sl):
                    return ps.images(np.arange(ps.n)[sl])
            src = _View()
        else:
            info = read_mrc_header(inp)
            if _mrc_kind(inp, info, None if inp.suffix.lower() == ".mrcs" else "stack") != "stack":
                raise InputError("whiten needs a stack of images (.mrcs) or a STAR file", inp)
            st = MrcStack(inp, info)

            class _View:  # noqa: F811
                shape = (st.n, st.shape[0], st.shape[1])
                ndim = 3

                def __getitem__(self, sl):
                    return st.read(np.arange(st.n)[sl])
            src = _View()
        try:
            nps = noise_power_spectrum(src, radius, batch_size=batch_size, progress=True)
        except ValueError as e:
            raise InputError(str(e), inp) from e
        fig = _process(inp, out, lambda x, kind, px: whiten(x, nps), pixel_size_A=None, need_pixel=False,
                       batch_size=batch_size, kind="stack")
        fig.update({"radius_px": radius, "noise_power_spectrum": nps})
        emit(fig, as_json)

    @app.command("phase-flip")
    def phase_flip_cmd(
        inp: Path = typer.Argument(..., metavar="IN", help="RELION STAR / cryoSPARC .cs particle file (CTF "
                                   "per particle from the file), or an MRC stack with the CTF given as "
                                   "options."),
        out: Path = typer.Argument(..., metavar="OUT", help=_OUT_HELP),
        wiener: Optional[float] = typer.Option(None, "--wiener", help="Instead of flipping phases, apply the "
                                               "Wiener filter CTF/(CTF² + 1/SSNR) with this (scalar) SSNR."),
        defocus_u: Optional[float] = typer.Option(None, "--defocus-u", help="MRC input: defocus U in Å "
                                                  "(positive underfocus)."),
        defocus_v: Optional[float] = typer.Option(None, "--defocus-v", help="MRC input: defocus V in Å "
                                                  "(default = U)."),
        angle: float = typer.Option(0.0, "--angle", help="MRC input: astigmatism angle in degrees."),
        voltage: float = typer.Option(300.0, "--voltage", help="MRC input: voltage in kV."),
        cs: float = typer.Option(2.7, "--cs", help="MRC input: spherical aberration in mm."),
        amp: float = typer.Option(0.1, "--amp", "--amp-contrast", help="MRC input: amplitude contrast (fraction)."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help=_PX_HELP),
        batch_size: int = typer.Option(256, "--batch-size", help=_BATCH_HELP),
        as_json: bool = JSON_OPTION,
    ):
        """Multiply each particle's transform by sign(CTF) (or by the Wiener filter with --wiener) and
        write OUT (STAR + .mrcs for STAR input, an MRC stack otherwise)."""
        from cryoprism.ctf import CTFParams, phase_flip, wiener_filter
        from cryoprism.errors import InputError

        if wiener is not None and wiener < 0:
            raise InputError(f"--wiener SSNR must be ≥ 0, got {wiener}")

        def correct(images, p, px):
            return phase_flip(images, p, px) if wiener is None else wiener_filter(images, p, px, wiener)

        def star_fn(batch, px):
            if batch.ctf is None:
                raise InputError("no CTF columns (rlnDefocusU/V, rlnVoltage, rlnSphericalAberration, "
                                 "rlnAmplitudeContrast) in the particle file", inp)
            return correct(batch.images, batch.ctf, px)

        if inp.suffix.lower() in _STAR_SUFFIXES:
            p = None
        else:
            if defocus_u is None:
                raise InputError("an MRC stack needs --defocus-u (Å) "
                                 "[--defocus-v --angle --voltage --cs --amp]", inp)
            dv = defocus_v if defocus_v is not None else defocus_u
            p = CTFParams(defocus_u, dv, angle, voltage, cs, amp)

        def fn(x, kind, px):
            if kind == "volume":
                raise InputError("phase-flip works on images, not volumes", inp)
            return correct(x, p, px)

        fig = _process(inp, out, fn, pixel_size_A=pixel_size, need_pixel=True, batch_size=batch_size,
                       star_fn=star_fn, kind=None if inp.suffix.lower() == ".mrcs" else "stack")
        fig["correction"] = "phase flip" if wiener is None else f"Wiener (SSNR {wiener})"
        emit(fig, as_json)
