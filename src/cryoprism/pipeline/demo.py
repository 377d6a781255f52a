"""``cryoprism demo``: the whole library on data shipped inside the package, ending in an HTML report.

The specimen is adenylate kinase in its open and closed conformations (PDB 4AKE / 1AKE, CC0; see
``cryoprism/data/README.md``). The demo runs the same commands a user would, in-process, each writing
into its own folder of ``OUT``:

1. ``maps/``          — density maps of both states from the atomic models (molmap-style),
2. ``particles/``     — a heterogeneous particle set (both states, CTF, noise) as RELION 3.1 STAR + MRCS,
3. ``reconstruct/``   — the mean volume by least squares (CG) with half-maps and gold-standard FSC,
4. ``heterogeneity/`` — covariance eigenvolumes, the number of states, classes and class volumes,
5. ``classify2d/``    — MFVDM neighbours, class averages and denoised images,
6. ``abinitio/``      — a Gaussian-mixture initial model from a subset of particles (HMC with CTF),
7. ``micrograph/``    — simulated micrographs and reconstruction straight from them (approximate EM),
8. ``report/``        — ``index.html`` with FSC curves, spectra, class histograms, galleries, slices, timings.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np


@dataclass
class DemoSettings:
    """Sizes chosen so the whole demo runs in a few minutes on 2 cores."""

    box: int = 32
    pixel_size_A: float = 2.5
    model_resolution_A: float = 10.0
    n_particles: int = 4000
    snr: float = 0.1
    seed: int = 0
    heterogeneity_nres: int = 16
    classify_n: int = 2000
    abinitio_n: int = 50
    abinitio_box: int = 24
    mic_box: int = 11
    mic_size: int = 512
    mic_count: int = 3
    mic_snr: float = 1.0
    mic_particles: int = 400


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    ok: bool = False
    figures: dict = field(default_factory=dict)
    error: str | None = None


def _cli(args: list) -> dict:
    """Run one ``cryoprism`` command in-process with ``--json``; return its JSON figures."""
    from cryoprism.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([str(a) for a in args] + ["--json"])
    out = buf.getvalue().strip()
    if rc != 0:
        raise RuntimeError(f"cryoprism {' '.join(map(str, args[:2]))} exited with {rc}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def data_file(name: str) -> Path:
    """Path of a file shipped in ``cryoprism/data``."""
    return Path(str(resources.files("cryoprism") / "data" / name))


def _say(msg: str):
    import sys

    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def run_demo(out_dir, settings: DemoSettings | None = None, stages: list[str] | None = None) -> dict:
    """Run the demo into ``out_dir``; returns a summary dict (also written as ``summary.json``)."""
    from cryoprism.forward import read_atoms, volume_from_pdb
    from cryoprism.io import read_mrc, write_mrc

    s = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, Stage] = {}
    t_start = time.perf_counter()

    def run(name, fn):
        if stages is not None and name not in stages:
            return None
        st = Stage(name)
        _say(f"{name} …")
        t = time.perf_counter()
        try:
            st.figures = fn() or {}
            st.ok = True
        except Exception as e:  # a failed stage is reported, the others still run
            st.error = f"{type(e).__name__}: {e}"
            (out / f"{name}_error.txt").write_text(traceback.format_exc())
            _say(f"{name} FAILED: {st.error}")
        st.seconds = time.perf_counter() - t
        _say(f"{name} done in {st.seconds:.1f} s")
        done[name] = st
        return st

    maps = out / "maps"
    truth = [maps / "state1_open.mrc", maps / "state2_closed.mrc"]

    def make_maps():
        maps.mkdir(exist_ok=True)
        xyz, z = read_atoms(data_file("adk_open.pdb.gz"))
        centre = (xyz * z[:, None]).sum(0) / z.sum()  # one frame for both states
        vols = []
        for p, model in zip(truth, ["adk_open.pdb.gz", "adk_closed.pdb.gz"]):
            v = volume_from_pdb(data_file(model), s.box, s.pixel_size_A, s.model_resolution_A, center_A=centre)
            write_mrc(p, v, s.pixel_size_A)
            vols.append(v)
        cc = float(np.corrcoef(vols[0].ravel(), vols[1].ravel())[0, 1])
        return {"box": s.box, "pixel_size_A": s.pixel_size_A, "state_correlation": cc}

    parts = out / "particles" / "particles.star"

    def simulate():
        return _cli(["simulate", *truth, "-o", parts, "-n", s.n_particles, "--snr", s.snr,
                     "--defocus-min", 10000, "--defocus-max", 25000, "--defocus-groups", 7,
                     "--seed", s.seed])

    def reconstruct():
        f = _cli(["reconstruct", parts, "-o", out / "reconstruct" / "mean.mrc", "--halfmaps"])
        return f

    def heterogeneity():
        return _cli(["heterogeneity", parts, "-o", out / "heterogeneity", "--nres", s.heterogeneity_nres,
                     "--classes", "auto"])

    def classify2d():
        sub = out / "classify2d" / "subset.star"
        _subset_star(parts, sub, s.classify_n)
        f = _cli(["classify2d", sub, "-o", out / "classify2d", "--method", "mfvdm", "--neighbors", 10])
        g = _cli(["denoise", sub, "-o", out / "classify2d" / "denoised", "--method", "mfvdm"])
        return {"classify2d": f, "denoise": g}

    def abinitio():
        sub = out / "abinitio" / "input.star"
        _subset_star(parts, sub, s.abinitio_n, state=1)
        return _cli(["abinitio", sub, "-o", out / "abinitio", "--method", "hmc", "--components", 60,
                     "--initial-components", 20, "--restarts", 2, "--initial-box", 16, "--refine-box", 32,
                     "--rotations", 500, "--alternations", 20, "--sweeps", 30, "--seed", s.seed])

    mic = out / "micrograph"

    def micrograph():
        from cryoprism.fourier import downsample

        smalls = []
        for src, name in zip(truth, ["truth_small.mrc", "init_closed_small.mrc"]):
            v, ps = read_mrc(src)
            small, ps_small = downsample(v, s.mic_box, ndim=3, pixel_size_A=ps)
            write_mrc(mic / name, small, ps_small)
            smalls.append(mic / name)
        sim = _cli(["simulate-micrographs", smalls[0], "-o", mic / "data", "-m", s.mic_count,
                    "--size", s.mic_size, "--particles", s.mic_particles, "--snr", s.mic_snr, "--no-ctf",
                    "--seed", s.seed])
        mics = sorted((mic / "data").glob("micrograph_*.mrc"))
        # start from the other conformation (low-passed by the command), as a user would start from a
        # related known structure; the FSC is measured against the state the micrographs hold
        em = _cli(["micrograph-em", *mics, "-o", mic / "em", "--particle-box", s.mic_box,
                   "--init", smalls[1], "--truth", smalls[0], "--rotations", 300, "--ell-max", 5,
                   "--iterations", "3,3,4", "--seed", s.seed])
        return {"simulate": sim, "em": em}

    run("maps", make_maps)
    run("simulate", simulate)
    run("reconstruct", reconstruct)
    run("heterogeneity", heterogeneity)
    run("classify2d", classify2d)
    run("abinitio", abinitio)
    run("micrograph", micrograph)
    total = time.perf_counter() - t_start

    from cryoprism.pipeline.report import build_report

    _say("report …")
    page = build_report(out, s, done, truth, total)
    summary = {
        "out": str(out), "report": str(page), "total_seconds": total,
        "stages": {k: {"ok": v.ok, "seconds": v.seconds, "error": v.error, "figures": v.figures}
                   for k, v in done.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _subset_star(star_path: Path, out_path: Path, n: int, state: int | None = None) -> Path:
    """Write a STAR with the first ``n`` particles (optionally of one ``rlnClassNumber``)."""
    from cryoprism.io import read_star, write_star

    st = read_star(star_path)
    p = st.particles
    idx = np.arange(len(p))
    if state is not None and "rlnClassNumber" in p.columns:
        idx = idx[p["rlnClassNumber"].to_numpy() == state]
    idx = idx[:n]
    sub = st.subset(idx)
    # image names are relative to the STAR's folder: point them at the original stack
    names = sub.particles["rlnImageName"].astype(str)
    sub.particles["rlnImageName"] = [
        f"{a}@{os.path.relpath(star_path.parent / b, out_path.parent)}"
        for a, b in (x.split("@", 1) for x in names)]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_star(out_path, sub)
    return out_path
