"""CLI of the 2-D analysis area: ``cryoprism classify2d`` and ``cryoprism denoise`` (docs/classify2d.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cryoprism.cli.common import JSON_OPTION, emit


class _StackView:
    """Array-like view ``(n, L, L)`` of a ParticleStack: slicing reads a batch (memory-mapped files)."""

    def __init__(self, stack):
        self.stack = stack
        self.shape = (stack.n, stack.box, stack.box)
        self.ndim = 3

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, sl):
        if not isinstance(sl, slice):
            raise TypeError("only slices are supported")
        a, b, _ = sl.indices(self.shape[0])
        return np.asarray(self.stack.images(np.arange(a, b)), dtype=np.float32)


def _open(particles: Path, radius_px, no_ctf: bool):
    from cryoprism.errors import InputError
    from cryoprism.io import read_particles

    stack = read_particles(particles)
    if stack.n < 3:
        raise InputError(f"{stack.n} particles: expected at least 3", particles)
    ctf = None
    if not no_ctf:
        try:
            ctf = stack.ctf_params()
        except InputError:
            ctf = None
    L = stack.box
    R = float(radius_px) if radius_px is not None else 0.4 * L
    if not (0 < R < L / np.sqrt(2) - 1):
        raise InputError(f"--radius {R} px must leave background in a {L}² box", particles)
    return stack, _StackView(stack), ctf, R


def _gallery(path: Path, images: np.ndarray, cols: int = 10):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoprism.io.atomic import atomic_path

    n = len(images)
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.2), squeeze=False)
    for t, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if t < n:
            ax.imshow(images[t], cmap="gray", origin="lower")
    fig.subplots_adjust(0, 0, 1, 1, 0.02, 0.02)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def register(app: typer.Typer) -> None:
    """Add ``classify2d`` and ``denoise`` to the cryoprism app."""

    @app.command("classify2d")
    def classify2d(
        particles: Path = typer.Argument(..., exists=True, dir_okay=False,
                                         help="Particle STAR (RELION 3.0/3.1) or cryoSPARC .cs file."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        method: str = typer.Option("mfvdm", "--method", help="rir | vdm | mfvdm."),
        n_neighbors: int = typer.Option(50, "--neighbors", min=1, help="Neighbours per image."),
        k_max: int = typer.Option(10, "--k-max", min=1, help="MFVDM angular frequencies k̃."),
        m: int = typer.Option(50, "--eigs", min=2, help="Eigenvectors per frequency (m)."),
        n_classes: int = typer.Option(100, "--classes", min=1, help="Class averages to write."),
        radius_px: float = typer.Option(None, "--radius", help="Particle radius in pixels (default 0.4·box); "
                                        "the background outside it gives the noise spectrum."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore CTF parameters (no phase flip)."),
        centre: Optional[bool] = typer.Option(None, "--centre/--no-centre", help="Centre the images first "
                                    "(default: automatic — only when a sample of 400 images shows the "
                                    "particles off-centre by more than 2 px rms beyond what the estimator "
                                    "gives on centred data at the same SNR; reported as centring_auto). "
                                    "Centring (particles with random "
                                    "shifts): on their rotationally averaged mean, then 4 rounds against each "
                                    "image's aligned neighbour average and 3 searches over synchronised class "
                                    "averages, then 3 rounds synchronising the shifts over the pair matches "
                                    "that try 12 translations within 1 px, as the final pair search does "
                                    "(helps at moderate SNR; costs ~7 neighbour searches and 3 class "
                                    "searches; see docs/classify2d.md)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoints in OUT/checkpoints "
                                    "(same particles and settings)."),
        as_json: bool = JSON_OPTION,
    ):
        """Rotation-invariant 2-D neighbours (RIR, VDM or MFVDM) and class averages.

        Reads the particle images and CTF (defocus in Å, voltage kV, Cs mm) of PARTICLES. Writes, in OUT:
        neighbors.csv (one row per pair: i, j = 0-based rows of the input table, angle_deg = in-plane
        rotation in degrees, counter-clockwise in the image x–y frame, taking image j (mirrored y → −y
        first when reflected = 1) onto image i, score = similarity, larger is closer), class_averages.mrcs
        (centre image + its aligned neighbours, CTF-corrected, same pixel size), class_centres.csv and
        gallery.png. Finished stages (FB coefficients, initial RID neighbours, VDM/MFVDM neighbours) are
        checkpointed in OUT/checkpoints; after an interrupt the same command with --resume skips them.
        """
        import pandas as pd

        from cryoprism.classify2d.pipeline import (
            choose_class_centres,
            class_averages,
            classify_fingerprint,
            run_neighbors,
        )
        from cryoprism.errors import InputError
        from cryoprism.io import write_mrc
        from cryoprism.io.atomic import atomic_path
        from cryoprism.io.checkpoint import Checkpoints

        if method not in ("rir", "vdm", "mfvdm"):
            raise InputError(f"--method must be rir, vdm or mfvdm, got {method!r}")
        t0 = time.perf_counter()
        centre = "auto" if centre is None else centre
        stack, view, ctf, R = _open(particles, radius_px, no_ctf)
        out.mkdir(parents=True, exist_ok=True)
        s = min(n_neighbors, stack.n - 1)
        m = min(m, 2 * stack.n - 3)
        fp = classify_fingerprint(view, ctf, stack.pixel_size_A, method=method, neighbors=s, k_max=k_max, m=m,
                                  radius_px=R, centre=centre)
        ck = Checkpoints(out / "checkpoints", fp, resume)
        prep, nb = run_neighbors(view, ctf, stack.pixel_size_A, method, s, k_max=k_max, m=m, mask_radius_px=R,
                                 centre=centre, checkpoints=ck, progress=True)
        i, j, ang, refl, score = nb.pairs()
        table = pd.DataFrame({"i": i, "j": j, "angle_deg": np.round(np.rad2deg(ang), 4),
                              "reflected": refl.astype(int), "score": score})
        with atomic_path(out / "neighbors.csv") as tmp:
            table.to_csv(tmp, index=False)
        centres = choose_class_centres(nb, n_classes)
        avgs = class_averages(prep, nb, centres)
        write_mrc(out / "class_averages.mrcs", avgs, stack.pixel_size_A, is_stack=True)
        with atomic_path(out / "class_centres.csv") as tmp:
            pd.DataFrame({"class": np.arange(len(centres)), "centre_row": centres,
                          "n_members": s + 1}).to_csv(tmp, index=False)
        _gallery(out / "gallery.png", avgs)
        emit({"particles": stack.n, "box": stack.box, "method": method, "neighbors": s,
              "classes": len(centres), "spca_components": int(prep.spca.ranks.sum()),
              "centring_auto": prep.extras.get("centring_auto"),
              "out": str(out), "seconds": round(time.perf_counter() - t0, 2)}, as_json)

    @app.command("denoise")
    def denoise(
        particles: Path = typer.Argument(..., exists=True, dir_okay=False,
                                         help="Particle STAR (RELION 3.0/3.1) or cryoSPARC .cs file."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        method: str = typer.Option("mfvdm", "--method", help="spca | cwf | mfvdm."),
        n_neighbors: int = typer.Option(50, "--neighbors", min=1, help="Graph neighbours (mfvdm)."),
        k_max: int = typer.Option(10, "--k-max", min=1, help="MFVDM angular frequencies for the search."),
        m: int = typer.Option(50, "--eigs", min=2, help="Eigenvectors per frequency for the search."),
        radius_px: float = typer.Option(None, "--radius", help="Particle radius in pixels (default 0.4·box)."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore CTF parameters."),
        as_json: bool = JSON_OPTION,
    ):
        """Denoise particle images: sPCA Wiener filter (spca), covariance Wiener filter (cwf) or MFVDM (mfvdm).

        Reads the images and CTF of PARTICLES; whitens with the background noise spectrum, phase-flips,
        denoises the Fourier–Bessel coefficients, corrects the CTF (Wiener) and recolours. Writes
        OUT/denoised.mrcs (same box and pixel size, input intensity units) and OUT/denoised.star (every
        input column kept, rlnImageName pointing into denoised.mrcs).
        """
        from cryoprism.classify2d.pipeline import mfvdm_denoise, neighbors, prepare, spca_denoise
        from cryoprism.errors import InputError
        from cryoprism.io import write_particles

        if method not in ("spca", "cwf", "mfvdm"):
            raise InputError(f"--method must be spca, cwf or mfvdm, got {method!r}")
        t0 = time.perf_counter()
        stack, view, ctf, R = _open(particles, radius_px, no_ctf)
        out.mkdir(parents=True, exist_ok=True)
        if method == "cwf":
            from cryoprism.denoise.cwf import cwf_denoise

            den = cwf_denoise(view, ctf, stack.pixel_size_A, mask_radius_px=R, progress=True)
        elif method == "spca":
            den = spca_denoise(prepare(view, ctf, stack.pixel_size_A, mask_radius_px=R, progress=True),
                               progress=True)
        else:
            prep = prepare(view, ctf, stack.pixel_size_A, mask_radius_px=R, progress=True)
            s = min(n_neighbors, stack.n - 1)
            nb = neighbors(prep, "mfvdm", s, k_max=k_max, m=min(m, 2 * stack.n - 3), progress=True)
            den = mfvdm_denoise(prep, nb, progress=True)
        write_particles(out / "denoised.star", out / "denoised.mrcs", den, stack.star,
                        pixel_size_A=stack.pixel_size_A)
        emit({"particles": stack.n, "box": stack.box, "method": method, "out": str(out),
              "seconds": round(time.perf_counter() - t0, 2)}, as_json)
