"""Heterogeneity side by side with ASPIRE's CovarianceEstimator, and the low-rank path at scale.

``aspire`` case: two 50S states (tests/data/maps/50S_states) Fourier-cropped to L = 8, simulated by
cryoprism to a RELION 3.1 STAR + MRCS (uniform views, CTF in a few defocus groups, white noise at
SNR_het = E‖M_s(X_s − μ)‖² / E‖noise‖²). The SAME STAR is analysed by

* cryoprism: ``read_particles`` → ``heterogeneity.pipeline.analyze`` (read included in the time),
  once with the number of states given (the same information ASPIRE gets, and the run the time
  ratio uses) and once fully automatic (``classes=auto``, states from the spectral gap);
* ASPIRE (a subprocess of the benchmark venv's python, ``--aspire-python``): ``RelionSource`` →
  ``MeanEstimator`` (FBBasis3D) → ``WhiteNoiseEstimator`` → ``CovarianceEstimator`` → ``eigs`` →
  ``src_wiener_coords``; the coordinates then go through the SAME Gaussian mixture as cryoprism
  (``heterogeneity.classify.gmm_classes``), with the true number of states given to ASPIRE.

Both accuracies are matched against the true ``rlnClassNumber``. ASPIRE's CTF filter has the opposite
sign to RELION's; that flips the sign of ASPIRE's mean and of its coordinates but not the covariance or
the mixture, so it does not affect the comparison.

``scale`` case: the low-rank path on n images at L = 64 (2 states, SNR_het 0.005, N_res 17), streamed
to a STAR + MRCS in a temporary folder; wall time, peak RSS (VmHWM) and accuracy.

    python benchmarks/heterogeneity_aspire_bench.py [--quick] [--case aspire|scale] [--n N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT / "tests" / "data" / "maps" / "50S_states"
STATES = ["vol_018.mrc", "vol_287.mrc"]

ASPIRE_SCRIPT = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
c0 = time.process_time()
from aspire.source import RelionSource
from aspire.basis import FBBasis3D
from aspire.reconstruction import MeanEstimator
from aspire.noise import WhiteNoiseEstimator
from aspire.covariance import CovarianceEstimator
from aspire.utils import eigs
from aspire.volume import Volume
from aspire.denoising import src_wiener_coords
star, px, k, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t = {}
src = RelionSource(star, pixel_size=px).cache()
L = src.L
t["read_s"] = time.perf_counter() - t0
basis = FBBasis3D((L, L, L))
t1 = time.perf_counter()
me = MeanEstimator(src, basis=basis, batch_size=512)
mean_est = me.estimate()
t["mean_s"] = time.perf_counter() - t1
t1 = time.perf_counter()
noise_var = WhiteNoiseEstimator(src, batch_size=512).estimate()
t["noise_s"] = time.perf_counter() - t1
t1 = time.perf_counter()
ce = CovarianceEstimator(src, basis, mean_kernel=me.kernel)
cov = ce.estimate(mean_est, noise_var, tol=1e-5)
t["covariance_s"] = time.perf_counter() - t1
t1 = time.perf_counter()
V, D = eigs(cov, 6)
lam = np.diag(D)
ev = Volume(np.moveaxis(V, -1, 0)[:k].astype(np.float32), pixel_size=src.pixel_size)
coords = src_wiener_coords(src, mean_est, ev, D[:k, :k], noise_var)
t["coords_s"] = time.perf_counter() - t1
np.save(out, np.asarray(coords).T)
t["total_s"] = time.perf_counter() - t0
print(json.dumps({"eigenvalues": [float(x) for x in lam], "noise_var": float(noise_var),
                  "timings": t, "cpu_seconds": time.process_time() - c0}))
"""


def load_states(L: int):
    from cryoprism.fourier.resample import downsample
    from cryoprism.io.mrc import read_mrc

    vols = []
    px = 6.55
    for name in STATES:
        v, p = read_mrc(MAPS / name)
        px = float(p or 6.55)
        v = np.asarray(v, np.float64)
        if L < v.shape[-1]:
            v = downsample(v, L, ndim=3)[0]
        vols.append(v.astype(np.float32))
    return np.stack(vols), px * 64 / L


def het_ratio(vols, px, defocus, seed=123, n=2000):
    """E‖M(X_s − μ)‖² / E‖M X_s‖² over the same pose and CTF distribution (pilot)."""
    from cryoprism.ctf.model import CTFParams, ctf_2d
    from cryoprism.forward import project
    from cryoprism.geometry import uniform_rotations

    rng = np.random.default_rng(seed)
    L = vols.shape[-1]
    rot = uniform_rotations(n, rng)
    df = rng.uniform(defocus[0], defocus[1], n)
    cg = ctf_2d(L, px, CTFParams(df, df, 0.0, 300.0, 2.7, 0.1))
    mu = vols.mean(0)
    pm = project(mu.astype(np.float64), rot, None, cg)
    tot = het = 0.0
    for v in vols:
        p = project(v.astype(np.float64), rot, None, cg)
        tot += float(np.sum(p**2))
        het += float(np.sum((p - pm) ** 2))
    return het / tot


def simulate_star(vols, px, n, snr_het, folder, seed=0, n_defocus=4, defocus=(1.5e4, 2.5e4)):
    from cryoprism.forward import simulate_particles

    r = het_ratio(vols, px, defocus)
    sim = simulate_particles(list(vols), n, px, snr=snr_het / r, defocus_range_A=defocus,
                             n_defocus_groups=n_defocus, astigmatism_A=0.0, rng=seed,
                             out_star=Path(folder) / "particles.star",
                             out_mrcs=Path(folder) / "particles.mrcs", progress=False)
    return sim, float(sim.snr_realised) * r  # realised total SNR × pilot het fraction


def run_cryoprism(star, n_res, method="lowrank", classes="auto", seed=0, reconstruct=False):
    from cryoprism.heterogeneity.pipeline import analyze
    from cryoprism.io import read_particles

    t0 = time.perf_counter()
    c0 = time.process_time()
    stack = read_particles(star)
    res = analyze(stack, n_res, method=method, classes=classes, seed=seed, reconstruct=reconstruct,
                  progress=False)
    wall = time.perf_counter() - t0
    return res, wall, time.process_time() - c0


def case_aspire(n, L, snr_het, aspire_python, limit_s, seed=0):
    from cryoprism.heterogeneity.classify import gmm_classes, matched_accuracy

    vols, px = load_states(L)
    out = {"n": n, "L": L, "pixel_size_A": px, "states": len(vols), "snr_het": snr_het,
           "defocus_groups": 4}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sim, snr_real = simulate_star(vols, px, n, snr_het, tmp, seed)
        out["simulate_seconds"] = round(time.perf_counter() - t0, 2)
        out["snr_het_realised"] = snr_real
        lab = sim.states
        star = str(Path(tmp) / "particles.star")
        for key, method, classes in (("cryoprism", "lowrank", len(vols)), ("cryoprism_auto", "lowrank", "auto")):
            res, wall, cpu = run_cryoprism(star, L, method=method, classes=classes, seed=seed)
            out[key] = {
                "method": res.covariance.method, "classes": classes, "states_found": res.n_states,
                "gap_ratios": [round(float(g), 3) for g in res.states.gaps[:4]],
                "eigenvalues": [float(x) for x in res.covariance.eigenvalues[:4]],
                "accuracy": matched_accuracy(lab, res.labels),
                "accuracy_gmm_only": matched_accuracy(lab, res.labels_gmm),
                "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            }
        coords = Path(tmp) / "aspire_coords.npy"
        t0 = time.perf_counter()
        try:
            p = subprocess.run([aspire_python, "-c", ASPIRE_SCRIPT, star, str(px), str(len(vols) - 1),
                                str(coords)], capture_output=True, text=True, timeout=limit_s,
                               cwd=tmp)
            a_wall = time.perf_counter() - t0
            if p.returncode != 0:
                out["aspire"] = {"error": p.stderr[-2000:], "seconds": round(a_wall, 2)}
            else:
                info = json.loads(p.stdout.strip().splitlines()[-1])
                alpha = np.load(coords)
                a_lab, _ = gmm_classes(alpha.reshape(len(lab), -1), len(vols), seed=seed)
                lam = np.asarray(info["eigenvalues"])
                out["aspire"] = {
                    "basis": "FBBasis3D", "eigenvalues": lam[:4].tolist(),
                    "gap_ratios": [round(float(g), 3) for g in (lam[:4] / lam[1:5])],
                    "accuracy": matched_accuracy(lab, a_lab), "seconds": round(a_wall, 2),
                    "cpu_seconds": round(info["cpu_seconds"], 2),
                    "timings": {k: round(v, 2) for k, v in info["timings"].items()},
                    "noise_var": info["noise_var"], "states_given": len(vols),
                }
        except subprocess.TimeoutExpired:
            out["aspire"] = {"timed_out_after_s": limit_s}
    if "accuracy" in out.get("aspire", {}):
        out["accuracy_diff_cryoprism_minus_aspire"] = (out["cryoprism"]["accuracy"]
                                                       - out["aspire"]["accuracy"])
        out["speedup_wall"] = round(out["aspire"]["seconds"] / out["cryoprism"]["seconds"], 1)
    return out


def case_scale(n, snr_het, n_res=17, seed=0, folder=None):
    from cryoprism.heterogeneity.classify import matched_accuracy

    vols, px = load_states(64)
    out = {"n": n, "L": 64, "states": 2, "snr_het": snr_het, "n_res": n_res, "defocus_groups": 7}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        t0 = time.perf_counter()
        sim, snr_real = simulate_star(vols, px, n, snr_het, tmp, seed, n_defocus=7)
        out["simulate_seconds"] = round(time.perf_counter() - t0, 1)
        out["snr_het_realised"] = snr_real
        out["stack_GB"] = round(os.path.getsize(Path(tmp) / "particles.mrcs") / 1e9, 2)
        lab = sim.states
        del sim
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        res, wall, cpu = run_cryoprism(str(Path(tmp) / "particles.star"), n_res, seed=seed)
        out.update({
            "method": res.covariance.method, "states_found": res.n_states,
            "state_count_confidence": res.states.confidence,
            "gap_ratios": [round(float(g), 3) for g in res.states.gaps[:4]],
            "accuracy": matched_accuracy(lab, res.labels), "seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1), "timings": {k: round(v, 1) for k, v in res.timings.items()},
            "peak_rss_GB_before_analysis": round(rss0, 2),
            "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        })
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (aspire case, n = 1000)")
    ap.add_argument("--case", choices=["aspire", "scale", "all"], default="aspire")
    ap.add_argument("--n", type=int, default=None, help="number of images (aspire: 4000, scale: 100000)")
    ap.add_argument("--snr-het", type=float, default=None, help="aspire: 0.02, scale: 0.005")
    ap.add_argument("--aspire-python", default=str(ROOT / ".bench-venv" / "bin" / "python"))
    ap.add_argument("--aspire-limit-s", type=float, default=300.0)
    ap.add_argument("--tmp", default=None, help="folder for the scale case's stack")
    ap.add_argument("--seeds", default="0", help="aspire case: comma-separated simulation seeds (one run each)")
    args = ap.parse_args(argv)
    out = {"benchmark": "heterogeneity_aspire", "cores": len(os.sched_getaffinity(0))}
    if args.case in ("aspire", "all"):
        n = args.n or (1000 if args.quick else 4000)
        seeds = [int(x) for x in args.seeds.split(",")]
        runs = []
        for seed in seeds:
            runs.append(case_aspire(n, 8, args.snr_het or 0.02, args.aspire_python, args.aspire_limit_s, seed))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        out["aspire"] = runs[0] if len(runs) == 1 else runs
        diffs = [r["accuracy_diff_cryoprism_minus_aspire"] for r in runs if "accuracy_diff_cryoprism_minus_aspire" in r]
        if len(runs) > 1 and diffs:
            out["aspire_summary"] = {
                "seeds": seeds, "mean_accuracy_cryoprism": float(np.mean([r["cryoprism"]["accuracy"] for r in runs])),
                "mean_accuracy_aspire": float(np.mean([r["aspire"]["accuracy"] for r in runs
                                                       if "accuracy" in r["aspire"]])),
                "mean_accuracy_diff": float(np.mean(diffs)), "min_accuracy_diff": float(np.min(diffs)),
                "mean_speedup_wall": float(np.mean([r["speedup_wall"] for r in runs if "speedup_wall" in r])),
            }
    if args.case in ("scale", "all"):
        n = args.n or (5000 if args.quick else 100000)
        out["scale"] = case_scale(n, args.snr_het or 0.005, folder=args.tmp)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
