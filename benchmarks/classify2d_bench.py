"""2-D analysis benchmark (issue 5): RID, VDM and MFVDM neighbours, alignment, denoising, speed.

Protocol of Fan & Zhao on a real 50S ribosome state (tests/data/maps/50S_states/vol_018.mrc, 64³ at
6.55 Å/px): n projections from uniform views, 20 defocus groups 1–4 µm, 200 kV, Cs 2 mm, amplitude
contrast 0.1, white noise at SNR 0.05 / 0.02 / 0.01 (SNR = mean per-pixel variance of the CTF-affected
projections / noise variance). Prints ONE JSON object.

    .venv/bin/python benchmarks/classify2d_bench.py            # n = 10 000 at 64²
    .venv/bin/python benchmarks/classify2d_bench.py --quick    # n = 2 000, SNR 0.02 and 0.01
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "tests" / "data" / "maps" / "50S_states" / "vol_018.mrc"

# ASPIRE's RIRClass2D (a subprocess of the benchmark venv's python): RelionSource reads the same noisy
# images and CTFs from a STAR + MRCS, phase-flips and whitens them (its own estimators), then the
# bispectrum neighbour search with its defaults (400 sPCA / 300 bispectrum components).
ASPIRE_RIR = r"""
import sys, time, json
import numpy as np
t0 = time.perf_counter()
from aspire.source import RelionSource
from aspire.classification import RIRClass2D
star, px, n_nbor, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
src = RelionSource(star, pixel_size=px)
src.phase_flip()
src.whiten()
src = src.cache()
t1 = time.perf_counter()
rir = RIRClass2D(src, n_nbor=n_nbor + 2, seed=0)
classes, refl, dist = rir.classify()
t2 = time.perf_counter()
np.savez(out, classes=np.asarray(classes), reflections=np.asarray(refl))
print(json.dumps({"read_preprocess_s": t1 - t0, "classify_s": t2 - t1}))
"""


def simulate(n, snr, rng, shift_sigma_px=0.0, L=None, n_groups=20):
    """Noisy CTF-affected projections, clean CTF-free projections, rotations, CTF parameters."""
    from cryoprism.ctf.model import CTFParams, ctf_2d
    from cryoprism.forward import project
    from cryoprism.geometry.rotations import uniform_rotations
    from cryoprism.io.mrc import read_mrc

    vol, px = read_mrc(MAP)
    vol = np.asarray(vol, dtype=np.float32)
    px = float(px or 6.55)
    if L is not None and L != vol.shape[0]:
        from cryoprism.fourier import fourier_resize
        vol, px = fourier_resize(vol, (L, L, L), ndim=3, pixel_size_A=px)
        vol = np.asarray(vol, dtype=np.float32)
    L = vol.shape[0]
    rots = uniform_rotations(n, rng)
    groups = rng.integers(0, n_groups, n)
    defoci = np.linspace(1e4, 4e4, n_groups)[groups]
    ctf = CTFParams(defocus_u_A=defoci, defocus_v_A=defoci, voltage_kV=200.0, cs_mm=2.0,
                    amplitude_contrast=0.1)
    shifts = rng.normal(0, shift_sigma_px, (n, 2)) if shift_sigma_px > 0 else None
    clean = np.empty((n, L, L), np.float32)
    dirty = np.empty((n, L, L), np.float32)
    for a in range(0, n, 1000):
        b = min(n, a + 1000)
        C = ctf_2d(L, px, ctf.take(np.arange(a, b)))
        clean[a:b] = project(vol, rots[a:b])
        dirty[a:b] = project(vol, rots[a:b], origins_px=None if shifts is None else shifts[a:b], ctf=C)
    sig_var = float(dirty.var(axis=(1, 2)).mean())
    sigma = np.sqrt(sig_var / snr)
    noisy = dirty + rng.normal(0, sigma, dirty.shape).astype(np.float32)
    return dict(noisy=noisy, clean=clean, rots=rots, ctf=ctf, pixel_size_A=px, sigma=sigma, shifts=shifts)


def true_pair_geometry(rots, i, j, reflected):
    """Viewing angle (reflection counts as a match) and the true in-plane angle for the claimed flag."""
    from cryoprism.geometry.rotations import inplane_angle_deg, viewing_angle_distance_deg

    view = viewing_angle_distance_deg(rots[i], rots[j], antipodal=True)
    F = np.diag([1.0, -1.0, -1.0])
    Bj = np.where(reflected[:, None, None], F @ rots[j], rots[j])
    inpl = inplane_angle_deg(rots[i], Bj)
    # the flag is right when the (possibly mirrored) view is the closer one
    from cryoprism.geometry.rotations import viewing_angle_distance_deg as vad
    flag_ok = vad(rots[i], Bj) <= 90.0
    return view, inpl, flag_ok


def neighbor_metrics(nb, rots, thresh_deg=10.0):
    i, j, ang, refl, _ = nb.pairs()
    view, inpl, flag_ok = true_pair_geometry(rots, i, j, refl)
    err = (np.rad2deg(ang) - inpl + 180.0) % 360.0 - 180.0
    good = view < thresh_deg
    eg = err[good & flag_ok]
    hist, edges = np.histogram(np.clip(err[good], -20, 20), bins=np.arange(-20.5, 21.5, 1.0))
    return {
        "frac_within_10deg": float(good.mean()),
        "median_view_angle_deg": float(np.median(view)),
        "reflection_flag_correct_frac": float(flag_ok[good].mean()) if good.any() else None,
        "inplane_abs_err_median_deg": float(np.median(np.abs(eg))) if eg.size else None,
        "inplane_within_5deg_frac": float((np.abs(err[good]) < 5).mean()) if good.any() else None,
        "inplane_err_hist_deg": {"bin_centres": [int(c) for c in (edges[:-1] + 0.5)],
                                 "counts": hist.tolist()},
    }


def denoise_metrics(den, clean, mask_radius_px=None):
    from cryoprism.metrics.similarity import mse, psnr, ssim

    n = min(len(den), 1000)
    d, c = den[:n].astype(np.float64), clean[:n].astype(np.float64)
    # same convention as Fan & Zhao (2019): average of per-image metrics against clean CTF-free projections;
    # data range for PSNR/SSIM = range of each clean image; images in units where the clean set has
    # unit per-pixel variance, so numbers do not depend on the map's arbitrary scale
    scale = float(np.sqrt(np.mean(c.var(axis=(1, 2)))))
    d, c = d / scale, c / scale
    rng_ = c.max(axis=(1, 2)) - c.min(axis=(1, 2))
    return {"mse": float(np.mean(mse(d, c, ndim=2))),
            "psnr_db": float(np.mean([psnr(d[t], c[t], data_range=rng_[t]) for t in range(n)])),
            "ssim": float(np.mean([ssim(d[t], c[t], data_range=rng_[t]) for t in range(n)])),
            "n_images_scored": n}


def run_aspire(sim, n_neighbors, aspire_python, timeout_s=3600):
    """ASPIRE RIRClass2D neighbours of the same images, scored with the same metric (view within 10°)."""
    import subprocess
    import tempfile

    import pandas as pd

    from cryoprism.geometry.rotations import viewing_angle_distance_deg
    from cryoprism.io import write_particles

    if not Path(aspire_python).exists():
        return {"error": f"no ASPIRE python at {aspire_python}"}
    n = len(sim["noisy"])
    ctf = sim["ctf"]
    d = np.broadcast_to(np.asarray(ctf.defocus_u_A, dtype=np.float64), (n,))
    px = sim["pixel_size_A"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = pd.DataFrame({"rlnDefocusU": d, "rlnDefocusV": d, "rlnDefocusAngle": 0.0, "rlnVoltage": 200.0,
                              "rlnSphericalAberration": 2.0, "rlnAmplitudeContrast": 0.1,
                              "rlnImagePixelSize": px,
                              "rlnImageName": [f"{i + 1}@p.mrcs" for i in range(n)]}, index=range(n))
        star, _ = write_particles(tmp / "p.star", tmp / "p.mrcs", sim["noisy"], table, pixel_size_A=px)
        t0 = time.perf_counter()
        try:
            p = subprocess.run([aspire_python, "-c", ASPIRE_RIR, str(star), str(px), str(n_neighbors),
                                str(tmp / "rir.npz")], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timeout {timeout_s} s"}
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}"}
        z = np.load(tmp / "rir.npz")
        classes = z["classes"]
    # drop each image itself from its list (ASPIRE lists it first), keep n_neighbors
    rows = [classes[i][classes[i] != i] for i in range(n)]
    s = min(n_neighbors, min(len(r) for r in rows))
    J = np.stack([r[:s] for r in rows]).astype(np.int64)
    ii = np.repeat(np.arange(n), s)
    view = viewing_angle_distance_deg(sim["rots"][ii], sim["rots"][J.ravel()], antipodal=True)
    timing = json.loads(p.stdout.strip().splitlines()[-1])
    return {"frac_within_10deg": float((view < 10.0).mean()), "median_view_angle_deg": float(np.median(view)),
            "neighbors": int(s),
            "time_wall_s": wall, **timing}


def _source(sim, fac=None):
    """The simulated images (scaled by ``fac``) with their CTF as a ParticleSource."""
    from cryoprism.io import ParticleStack

    imgs = sim["noisy"] if fac is None else sim["noisy"] * np.float32(fac)
    return ParticleStack.from_arrays(imgs, pixel_size_A=sim["pixel_size_A"], ctf=sim["ctf"])


def run_one(sim, methods, n_neighbors, k_max, m, with_denoise=True, centre=False, centre_refine_rounds=None,
            bandlimit="auto", centre_sync_rounds=None):
    from cryoprism.classify2d.pipeline import mfvdm_denoise, neighbors, prepare, spca_denoise

    out = {}
    t0 = time.perf_counter()
    kw = {} if centre_refine_rounds is None else {"centre_refine_rounds": centre_refine_rounds}
    if centre_sync_rounds is not None:
        kw["centre_sync_rounds"] = centre_sync_rounds
    prep = prepare(_source(sim), mask_radius_px=None, centre=centre,
                   bandlimit=bandlimit, **kw)
    t_prep = time.perf_counter() - t0
    out["spca_ranks_total"] = int(prep.spca.ranks.sum())
    out["spca_k_kept"] = int(len(prep.spca.k_kept))
    out["fb_bandlimit"] = float(prep.basis.bandlimit)   # cycles/px ("auto": from the spectral SNR)
    out["time_prepare_s"] = t_prep
    nb_rir = None
    for meth in methods:
        t0 = time.perf_counter()
        nb = neighbors(prep, meth, n_neighbors, k_max=k_max, m=m, initial=nb_rir)
        dt = time.perf_counter() - t0
        if meth == "rir":
            nb_rir = nb
        r = neighbor_metrics(nb, sim["rots"])
        r["time_s"] = dt
        if with_denoise and meth == "mfvdm":
            t0 = time.perf_counter()
            den = mfvdm_denoise(prep, nb, m=None)
            r["time_denoise_s"] = time.perf_counter() - t0
            r["denoise"] = denoise_metrics(den, sim["clean"])
            r["time_full_pipeline_s"] = t_prep + out.get("rir", {}).get("time_s", 0.0) + dt + r["time_denoise_s"]
        out[meth] = r
    if with_denoise:
        out["spca_denoise"] = denoise_metrics(spca_denoise(prep), sim["clean"])
    return out, prep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--snr", type=float, nargs="*", default=None)
    ap.add_argument("--neighbors", type=int, default=50)
    ap.add_argument("--k-max", type=int, default=10)
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-robustness", action="store_true")
    ap.add_argument("--skip-scale", action="store_true", help="skip the scale-invariance check")
    ap.add_argument("--skip-aspire-shifted", action="store_true", help="no ASPIRE run on the shifted images")
    ap.add_argument("--aspire-python", default=str(ROOT / ".bench-venv" / "bin" / "python"),
                    help="python with ASPIRE for RIRClass2D ('' skips it)")
    ap.add_argument("--skip-main", action="store_true", help="only the 128² run (with --skip-robustness)")
    ap.add_argument("--n128", type=int, default=None, help="images for the 128² run (0 skips; default n/5)")
    ap.add_argument("--bandlimit", default="auto",
                    help="FB band limit in cycles/px, or 'auto' (from the spectral SNR, the default)")
    a = ap.parse_args(argv)
    bl = a.bandlimit if a.bandlimit == "auto" else float(a.bandlimit)
    n = a.n or (2000 if a.quick else 10000)
    snrs = a.snr or ([0.02, 0.01] if a.quick else [0.05, 0.02, 0.01])
    rng = np.random.default_rng(a.seed)
    res = {"map": "tests/data/maps/50S_states/vol_018.mrc", "L": 64, "n": n, "neighbors": a.neighbors,
           "bandlimit": a.bandlimit, "k_max": a.k_max, "m": a.m, "cpu_count": len(os.sched_getaffinity(0)),
           "by_snr": {}}
    for snr in ([] if a.skip_main else snrs):
        sim = simulate(n, snr, rng)
        r, prep = run_one(sim, ["rir", "vdm", "mfvdm"], a.neighbors, a.k_max, a.m, bandlimit=bl)
        if a.aspire_python:
            r["aspire_RIRClass2D"] = run_aspire(sim, a.neighbors, a.aspire_python)
        res["by_snr"][str(snr)] = r
        print(json.dumps({str(snr): r}), file=sys.stderr)
    if not a.skip_robustness:
        from cryoprism.classify2d.pipeline import neighbors, prepare
        res["robustness_by_snr"] = {}
        for snr in sorted({max(snrs), min(snrs)}, reverse=True):
            rob = {"snr": snr}
            sim = simulate(n, snr, np.random.default_rng(a.seed + 1), shift_sigma_px=4.0)
            # the same views, CTFs and noise level without the shifts (simulate draws the views and
            # defocus groups first): the baseline the retention is measured against
            sim0 = simulate(n, snr, np.random.default_rng(a.seed + 1))
            assert np.allclose(sim0["rots"], sim["rots"])
            base, _ = run_one(sim0, ["rir", "mfvdm"], a.neighbors, a.k_max, a.m, with_denoise=False)
            del sim0
            rob["shift_sigma_px"] = 4.0
            rob["mfvdm_frac_within_10deg_centred"] = base["mfvdm"]["frac_within_10deg"]
            rob["rir_frac_within_10deg_centred"] = base["rir"]["frac_within_10deg"]
            # no centring; centring on the rotational average only; that + the shift synchronisation;
            # the default --centre (refined against neighbour averages and class averages, synchronised)
            for key, centre, rounds, sync in (("no_centring", False, None, None),
                                              ("rotational_average_centring", True, 0, 0),
                                              ("rotational_average_and_sync", True, 0, None),
                                              ("with_centring", True, None, None)):
                r, p = run_one(sim, ["rir", "mfvdm"], a.neighbors, a.k_max, a.m, with_denoise=False, centre=centre,
                               centre_refine_rounds=rounds, centre_sync_rounds=sync)
                q = {"mfvdm_frac_within_10deg_shifted": r["mfvdm"]["frac_within_10deg"],
                     "mfvdm_shift_retention": r["mfvdm"]["frac_within_10deg"]
                     / max(base["mfvdm"]["frac_within_10deg"], 1e-9),
                     "rir_frac_within_10deg_shifted": r["rir"]["frac_within_10deg"],
                     "time_prepare_s": r["time_prepare_s"]}
                if centre:
                    e = p.extras["centre_shifts_px"] + sim["shifts"]   # simulate's origins are the opposite shift
                    e = e - e.mean(axis=0)
                    q["centring_error_px_median"] = float(np.median(np.hypot(e[:, 0], e[:, 1])))
                rob[key] = q
            if a.aspire_python and not a.skip_aspire_shifted:
                rob["aspire_RIRClass2D_shifted"] = run_aspire(sim, a.neighbors, a.aspire_python)
            res["robustness_by_snr"][str(snr)] = rob
            print(json.dumps({"robustness": rob}), file=sys.stderr)
    if not (a.skip_robustness or a.skip_scale):
        from cryoprism.classify2d.pipeline import neighbors, prepare
        snr = min(snrs)
        # scale invariance on a subset: neighbours and angles identical for images × 1e-4 and × 1e4
        ns = min(n, 1000)
        sim = simulate(ns, snr, np.random.default_rng(a.seed + 2))
        ref = None
        same = {}
        for fac in (1.0, 1e-4, 1e4):
            p = prepare(_source(sim, fac))
            nb = neighbors(p, "mfvdm", a.neighbors, k_max=a.k_max, m=a.m)
            if ref is None:
                ref = nb
            else:
                same[str(fac)] = {"neighbors_identical_frac": float(np.mean(np.sort(nb.j, 1) == np.sort(ref.j, 1))),
                                  "max_angle_diff_deg": float(np.rad2deg(np.max(np.abs(
                                      np.angle(np.exp(1j * (nb.angle - ref.angle))))))),
                                  "finite": bool(np.isfinite(nb.score).all())}
        res["scale_invariance"] = same
    n128 = a.n128 if a.n128 is not None else max(n // 5, 500)
    if n128:
        snr = min(snrs)
        sim = simulate(n128, snr, np.random.default_rng(a.seed + 3), L=128)
        r, _ = run_one(sim, ["rir", "vdm", "mfvdm"], a.neighbors, a.k_max, a.m, with_denoise=False, bandlimit=bl)
        r = {"n": n128, "snr": snr, **r}
        if a.aspire_python:
            r["aspire_RIRClass2D"] = run_aspire(sim, a.neighbors, a.aspire_python)
        res["L128"] = r
    print(json.dumps(res))


if __name__ == "__main__":
    main()
