"""CLI of the image and CTF areas: downsample, filter, normalize, whiten, phase-flip (ctf-estimate is in
preprocess_cmds).

Every command reads an MRC image, volume or stack, or a RELION STAR (or cryoSPARC .cs) particle file,
and streams the operation over it with :func:`cryoprism.image.stack.process_file` (batches through
:mod:`cryoprism.parallel`, memory-mapped input, atomic streamed output through a job). A STAR input
gives a RELION 3.1 STAR output (every column kept, ``rlnImageName`` pointing into a new ``.mrcs`` next
to it, same name with ``.mrcs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from cryoprism.cli.common import JSON_OPTION, finish


def _run(command: str, inp: Path, out: Path, fn: Callable, as_json: bool, extra: Optional[dict] = None,
         **kw) -> None:
    """parse → read → algorithm → job: stream ``fn`` over IN (:func:`cryoprism.image.stack.process_file`)
    and write OUT through a job; print the figures (and ``extra``)."""
    from cryoprism.image.stack import process_file
    from cryoprism.io.job import Job

    job = Job.for_file(out, command)
    process_file(inp, job, out.name, fn, **kw)
    job.record(**(extra or {}))
    finish(job, as_json)


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

        _run("downsample", inp, out, fn, as_json, pixel_size_A=pixel_size, need_pixel=False,
             out_box=lambda L: box, out_pixel=lambda p, L: p * L / box if p else p, batch_size=batch_size,
             kind=kind)

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

        def checked(x, kind, px):
            try:
                return fn(x, kind, px)
            except ValueError as e:
                if isinstance(e, InputError):
                    raise
                raise InputError(str(e), inp) from e

        _run("filter", inp, out, checked, as_json, {"lowpass_A": lowpass, "highpass_A": highpass, "edge": edge},
             pixel_size_A=pixel_size, need_pixel=True, batch_size=batch_size, kind=kind)

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

        _run("normalize", inp, out, fn, as_json, {"radius_px": radius}, pixel_size_A=None, need_pixel=False,
             batch_size=batch_size, kind=kind)

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
        from cryoprism.image.stack import ImageFile

        try:
            nps = noise_power_spectrum(ImageFile(inp), radius, batch_size=batch_size, progress=True)
        except ValueError as e:
            if isinstance(e, InputError):
                raise
            raise InputError(str(e), inp) from e
        _run("whiten", inp, out, lambda x, kind, px: whiten(x, nps), as_json,
             {"radius_px": radius, "noise_power_spectrum": nps}, pixel_size_A=None, need_pixel=False,
             batch_size=batch_size, kind="stack")

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
        from cryoprism.image.stack import is_particle_file

        if wiener is not None and wiener < 0:
            raise InputError(f"--wiener SSNR must be ≥ 0, got {wiener}")

        def correct(images, p, px):
            return phase_flip(images, p, px) if wiener is None else wiener_filter(images, p, px, wiener)

        def star_fn(batch, px):
            if batch.ctf is None:
                raise InputError("no CTF columns (rlnDefocusU/V, rlnVoltage, rlnSphericalAberration, "
                                 "rlnAmplitudeContrast) in the particle file", inp)
            return correct(batch.images, batch.ctf, px)

        if is_particle_file(inp):
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

        _run("phase-flip", inp, out, fn, as_json,
             {"correction": "phase flip" if wiener is None else f"Wiener (SSNR {wiener})"},
             pixel_size_A=pixel_size, need_pixel=True, batch_size=batch_size, star_fn=star_fn,
             kind=None if inp.suffix.lower() == ".mrcs" else "stack")
