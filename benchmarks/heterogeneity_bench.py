"""Heterogeneity benchmark: the synthetic experiment of Andén, Katsevich & Singer (2015) on 50S states.

n images of 64 × 64 (6.55 Å/px) from C of the 64³ 50S assembly states in tests/data/maps/50S_states,
uniform random views, 7 CTF defocus groups 1.5–2.5 µm, white noise at SNR_het = E‖M_s(X_s − μ)‖² /
E‖noise‖². Reports the spectral gap, the number of states found, the classification accuracy, the
oracle accuracy (each image assigned to the state whose true projection with the true pose and CTF,
at the same band limit, fits best) and the wall time. Prints one JSON object.

    python benchmarks/heterogeneity_bench.py [--quick]
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
MAPS = ROOT / "tests" / "data" / "maps" / "50S_states"
STATES = ["vol_018.mrc", "vol_287.mrc", "vol_383.mrc"]


def load_states(k: int):
    from cryoprism.io.mrc import read_mrc

    vols = []
    for name in STATES[:k]:
        v, px = read_mrc(MAPS / name)
        vols.append(np.asarray(v, np.float64))
    return np.stack(vols), float(px or 6.55)


def fourth_state(vols):
    """A synthetic fourth assembly state: vol_287 lacking a peripheral domain.

    The three shipped 50S states are all the maps we have. The fourth removes, with a soft edge, a ball of
    radius 10 voxels (65 Å) centred on the densest part of vol_287 that lies more than 14 voxels from the
    box centre — an assembly intermediate missing a peripheral element. Its distance to vol_287 is 0.68×
    the typical distance between the real states, so it is the hardest state to separate.
    """
    from scipy import ndimage

    L = vols.shape[-1]
    idx = np.indices((L,) * 3).transpose(1, 2, 3, 0).astype(np.float64)
    far = np.linalg.norm(idx - L // 2, axis=-1) > 14 * L / 64
    smooth = ndimage.gaussian_filter(vols[1], 3 * L / 64) * far
    c = np.array(np.unravel_index(np.argmax(smooth), smooth.shape), np.float64)
    r = np.linalg.norm(idx - c, axis=-1)
    w = 1.0 / (1.0 + np.exp((r - 10 * L / 64) / (L / 64)))
    return vols[1] * (1.0 - w)


def simulate(vols, px, n, snr, seed=0, n_defocus=7, sigma2=None):
    """Images ``(n, L, L)`` float32, rotations, CTFParams, labels, noise variance, clean projections.

    ``sigma2``: the noise variance per pixel (default: the one giving ``snr`` = SNR_het)."""
    from cryoprism.ctf.model import CTFParams, ctf_2d
    from cryoprism.forward import project
    from cryoprism.geometry import uniform_rotations

    rng = np.random.default_rng(seed)
    C, L = vols.shape[0], vols.shape[-1]
    lab = rng.integers(0, C, n)
    rot = uniform_rotations(n, rng)
    dfs = np.linspace(1.5e4, 2.5e4, n_defocus)[rng.integers(0, n_defocus, n)]
    ctf = CTFParams(dfs, dfs, 0.0, 300.0, 2.7, 0.1)
    mu = vols.mean(0)
    clean = np.empty((C, n, L, L), np.float32)
    het_power = 0.0
    for a in range(0, n, 1000):
        b = min(a + 1000, n)
        cg = ctf_2d(L, px, ctf.take(np.arange(a, b)))
        pm = project(mu, rot[a:b], None, cg)
        for c in range(C):
            clean[c, a:b] = project(vols[c], rot[a:b], None, cg)
        sel = clean[lab[a:b], np.arange(a, b)]
        het_power += float(np.sum((sel - pm) ** 2))
    het_power /= n
    if sigma2 is None:
        sigma2 = het_power / (snr * L * L)
    imgs = clean[lab, np.arange(n)] + rng.standard_normal((n, L, L)).astype(np.float32) * np.sqrt(sigma2)
    return imgs.astype(np.float32), rot, ctf, lab, sigma2, clean


def oracle_accuracy(imgs, clean, lab, N):
    """Assign each image to the state whose clean image (same pose + CTF), band-limited to N, fits best."""
    from cryoprism.fourier.resample import downsample

    n = imgs.shape[0]
    C = clean.shape[0]
    correct = 0
    for a in range(0, n, 2000):
        b = min(a + 2000, n)
        y = downsample(imgs[a:b], N)[0] if N < imgs.shape[-1] else imgs[a:b]
        res = []
        for c in range(C):
            x = downsample(clean[c, a:b], N)[0] if N < imgs.shape[-1] else clean[c, a:b]
            res.append(np.sum((y - x) ** 2, axis=(1, 2)))
        correct += int(np.sum(np.argmin(np.stack(res), 0) == lab[a:b]))
    return correct / n


def run_case(vols, px, n, snr, n_res, method, seed=0, classes="auto", reconstruct=True, cg_iterations=10,
             sigma2=None, refine_full=True, oracle=True):
    """One simulated set through :func:`analyze`. ``n_res`` None: chosen from the data as the CLI does
    (:func:`~cryoprism.heterogeneity.pipeline.resolve_nres`); ``oracle`` False skips the oracles."""
    from cryoprism.heterogeneity.classify import matched_accuracy
    from cryoprism.heterogeneity.pipeline import analyze, resolve_nres
    from cryoprism.io import ParticleStack

    imgs, rot, ctf, lab, sigma2, clean = simulate(vols, px, n, snr, seed, sigma2=sigma2)
    L = imgs.shape[-1]
    orc17 = oracle_accuracy(imgs, clean, lab, min(17, L)) if oracle else None
    orc32 = oracle_accuracy(imgs, clean, lab, min(32, L)) if oracle else None
    oracle_full = oracle_accuracy(imgs, clean, lab, L) if oracle else None
    t0 = time.perf_counter()
    src = ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, ctf=ctf)
    c0 = time.process_time()
    n_res_auto = n_res is None
    n_res = resolve_nres(L, px, n_res, None, source=src)
    c_nres = time.process_time() - c0
    orc = {min(17, L): orc17, min(32, L): orc32}.get(n_res) if oracle else None
    if oracle and orc is None:
        orc = oracle_accuracy(imgs, clean, lab, n_res)
    del clean
    c0 = time.process_time() - c_nres  # the oracle is not the pipeline's time
    res = analyze(src, n_res, method=method, classes=classes, cg_iterations=cg_iterations,
                  reconstruct=reconstruct, seed=seed, progress=False, refine_full=refine_full)
    cpu = time.process_time() - c0
    wall = time.perf_counter() - t0
    C = res.n_states
    acc = matched_accuracy(lab, res.labels)
    lam = res.covariance.eigenvalues
    t = res.state_test
    test = {} if t is None else {
        "state_test": t.summary(), "p_values": [float(f"{x:.3g}") for x in t.p_values[:6]],
        "states_from_eigenvalues": t.n_states_eig, "states_from_bic": t.n_states_bic,
        "heldout_eigenvalues": [round(float(x), 4) for x in t.eigenvalues[:6]],
        "null_top_mean_sd": [round(float(t.null_top.mean()), 4), round(float(t.null_top.std(ddof=1)), 4)],
        "null_mean_sd_per_eigenvalue": [[round(float(a), 4) for a in x] for x in t.info.get("null_mean_sd", [])],
        "bic": None if t.bic is None else [round(float(b), 1) for b in t.bic]}
    sub = res.labels_subspace
    return {
        "n": n, "L": int(vols.shape[-1]), "true_states": int(vols.shape[0]), "snr_het": snr, **test,
        "accuracy_subspace": matched_accuracy(lab, sub) if sub is not None else None,
        "oracle_accuracy_nres17": orc17, "oracle_accuracy_nres32": orc32,
        "refine_iterations": res.refinement.iterations if res.refinement is not None else 0,
        "refine_stages": res.refinement.info.get("stages") if res.refinement is not None else None,
        "class_splits": res.refinement.info.get("splits") if res.refinement is not None else None,
        "oracle_accuracy_full_box": oracle_full,
        "n_res": n_res, "n_res_from_data": n_res_auto, "method": res.covariance.method,
        "cg_iterations": res.covariance.iterations,
        "states_found": C, "states_from_gap": res.states.n_states,
        "gap_ratios": [round(float(g), 3) for g in res.states.gaps[:4]],
        "eigenvalues": [float(x) for x in lam[:6]],
        "accuracy": acc, "accuracy_gmm_only": matched_accuracy(lab, res.labels_gmm),
        "oracle_accuracy": orc, "accuracy_minus_oracle": None if orc is None else acc - orc,
        "noise_var_true": sigma2, "noise_var_est": res.data.info.get("noise_var_L"),
        "seconds": round(wall, 2), "cpu_seconds": round(cpu, 1),
        "timings": {k: round(v, 2) for k, v in res.timings.items()},
    }


def count_only(vols, px, n, snr, seed=0, n_res=None, sigma2=None):
    """One simulated set through the part of :func:`analyze` that bounds the count: N_res (from the
    data when None), the mean and the split-sample test at the defaults (no full covariance, BIC or
    classes). With no significant first eigenvalue the count is 1 whatever follows (the conditional
    steps, the floor and the BIC are never reached); otherwise ``states_from_eigenvalues`` bounds it
    (the BIC can only lower it). Same images and test seed as :func:`run_case` with the same arguments."""
    from cryoprism.heterogeneity.covariance import estimate_mean
    from cryoprism.heterogeneity.data import compute_residuals, prepare
    from cryoprism.heterogeneity.pipeline import resolve_nres
    from cryoprism.heterogeneity.states import split_test
    from cryoprism.io import ParticleStack

    imgs, rot, ctf, _, sigma2, clean = simulate(vols, px, n, snr, seed, sigma2=sigma2)
    del clean
    t0, c0 = time.perf_counter(), time.process_time()
    src = ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, ctf=ctf)
    N = resolve_nres(imgs.shape[-1], px, n_res, None, source=src)
    d = prepare(src, N, oversample=1.5, progress=False)
    A = estimate_mean(d, progress=False)
    compute_residuals(d, A.mean, progress=False)
    t = split_test(d, A, seed=seed, progress=False)
    return {"n": n, "true_states": int(vols.shape[0]), "snr_het": snr, "n_res": N,
            "states_found": t.n_states_eig, "states_from_eigenvalues": t.n_states_eig,
            "state_test": t.summary(), "p_values": [float(f"{x:.3g}") for x in t.p_values[:6]],
            "heldout_eigenvalues": [round(float(x), 4) for x in t.eigenvalues[:6]],
            "null_top_mean_sd": [round(float(t.null_top.mean()), 4), round(float(t.null_top.std(ddof=1)), 4)],
            "null_mean_sd_per_eigenvalue": [[round(float(a), 4) for a in x] for x in t.info.get("null_mean_sd", [])],
            "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 1)}


def null_runs(vols, px, n, snrs, realisations, n_res=None, partial=None, out=None, test_only=False):
    """Single-state data (``vols[0]``) with the noise of the two-state set at each SNR_het: how often
    the defaults (``n_res`` None: chosen from the data) report one state. Realisation ``r``: simulation
    and analysis seed ``1000 + r``. ``test_only``: :func:`count_only` instead of the whole pipeline."""
    res = {} if out is None else out.setdefault("null", {})
    sig = {snr: simulate(vols[:2], px, min(n, 2000), snr, 0)[4] for snr in snrs}
    for r in range(realisations):  # realisations outer: a run cut short keeps every SNR balanced
        for snr in snrs:
            if test_only:
                c = count_only(vols[:1], px, n, 1.0, 1000 + r, n_res, sigma2=sig[snr])
            else:
                c = run_case(vols[:1], px, n, snr, n_res, "lowrank", seed=1000 + r, reconstruct=False,
                             sigma2=sig[snr], oracle=False)
            print("null", snr, r, c["n_res"], c.get("state_test"), c["cpu_seconds"], file=sys.stderr, flush=True)
            e = res.setdefault(f"snr{snr}", {"realisations": 0, "one_state": 0, "states_found": [],
                                              "p_value_eigenvalue_1": [], "n": n, "n_res": [],
                                              "heldout_eigenvalue_1": [], "null_top_mean_sd": [],
                                              "cpu_seconds": 0.0})
            e["realisations"] += 1
            e["one_state"] += int(c["states_found"] == 1)
            e["states_found"].append(c["states_found"])
            e["p_value_eigenvalue_1"].append(c["p_values"][0])
            e["n_res"].append(c["n_res"])
            e["heldout_eigenvalue_1"].append(c["heldout_eigenvalues"][0])
            e["null_top_mean_sd"].append(c["null_top_mean_sd"])
            e["cpu_seconds"] = round(e["cpu_seconds"] + c["cpu_seconds"], 1)
            _write_partial(out, partial)
    return res


def _write_partial(out, path):
    if out is not None and path:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(out) + "\n")
        tmp.replace(path)


def _git_head():
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _case(out, name, *args, **kw):
    out["cases"][name] = count_only(*args) if kw.pop("_count_only", False) else run_case(*args, **kw)
    print(name, json.dumps(out["cases"][name]), file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (n = 2000, two states, N_res 17)")
    ap.add_argument("--only", default=None, help="run only the case with this name")
    ap.add_argument("--sweep", action="store_true",
                    help="2, 3 and 4 states against SNR_het at the CLI's defaults: states found, p-values, "
                         "BIC, accuracy before and after the class refinement, oracle at N_res 17 / 32")
    ap.add_argument("--n", type=int, default=10000, help="particles per case of --sweep / --null / refine_*")
    ap.add_argument("--snrs", default="0.002,0.005,0.01,0.02,0.05", help="SNR_het values of --sweep / --null")
    ap.add_argument("--states", default="2,3,4", help="numbers of states of --sweep")
    ap.add_argument("--no-refine", action="store_true",
                    help="--sweep: skip the full-resolution class refinement (the count and the covariance-space "
                         "accuracy only)")
    ap.add_argument("--null", type=int, default=0,
                    help="false positives: this many noise realisations of single-state data (vol_018) at "
                         "the noise level of the two-state set at each SNR_het; counts '1 state'")
    ap.add_argument("--null-test-only", action="store_true",
                    help="--null: run only N_res, the mean and the split-sample test (what decides '1 state')")
    ap.add_argument("--count-only", action="store_true",
                    help="--sweep: run only N_res, the mean and the split-sample test of each cell (the bound on "
                         "the count; no accuracy)")
    ap.add_argument("--nres", default="auto",
                    help="N_res of --sweep / --null: 'auto' (the CLI's default: chosen from the data) or a number")
    ap.add_argument("--seed", type=int, default=0, help="simulation and analysis seed of the --sweep cells")
    ap.add_argument("--partial", default=None,
                    help="write the JSON so far to this file after every case / null realisation")
    args = ap.parse_args(argv)
    out = {"benchmark": "heterogeneity", "cores": len(os.sched_getaffinity(0)), "git_head": _git_head(),
           "cases": {}}
    sweep_nres = None if args.nres == "auto" else int(args.nres)
    vols3, px = load_states(3)
    vols4 = np.concatenate([vols3, fourth_state(vols3)[None]])
    t0 = time.perf_counter()
    snrs = [float(x) for x in args.snrs.split(",")]
    if args.null:
        out["null_test_only"] = args.null_test_only
        null_runs(vols4, px, args.n, snrs, args.null, n_res=sweep_nres, partial=args.partial, out=out,
                  test_only=args.null_test_only)
        cases = {}
    elif args.sweep:
        cases = {f"{c}_states_snr{snr}": ((vols4[:c], px, args.n, snr, sweep_nres, "lowrank"),
                                          {"reconstruct": False, "refine_full": not args.no_refine,
                                           "seed": args.seed})
                 for snr in snrs for c in map(int, args.states.split(","))}  # in the order given
        if args.count_only:
            cases = {k: ((a[0], a[1], a[2], a[3], args.seed, a[4]), {"_count_only": True})
                     for k, (a, _) in cases.items()}
    elif args.quick:
        cases = {"two_states_nres17_quick": ((vols3[:2], px, 2000, 0.02, 17, "lowrank"), {})}
    else:
        cases = {
            "two_states_nres17": ((vols3[:2], px, 10000, 0.005, 17, "lowrank"), {}),
            "two_states_nres32": ((vols3[:2], px, 10000, 0.005, 32, "lowrank"), {"reconstruct": False}),
            "three_states_snr0.005": ((vols3, px, 10000, 0.005, 17, "lowrank"), {"reconstruct": False}),
            "three_states_snr0.02": ((vols3, px, 10000, 0.02, 17, "lowrank"), {"reconstruct": False}),
            "four_states_snr0.02": ((vols4, px, 10000, 0.02, 17, "lowrank"), {"reconstruct": False}),
            "four_states_snr0.05": ((vols4, px, 10000, 0.05, 17, "lowrank"), {"reconstruct": False}),
        }
        # the full-resolution class refinement at its defaults with the true number of states (measured
        # apart from the count; n from --n), e.g. --only refine_4_states
        cases.update({f"refine_{c}_states": ((vols4[:c], px, args.n, 0.005, 17, "lowrank"),
                                             {"reconstruct": False, "classes": c}) for c in (2, 3, 4)})
    for name, (a, kw) in cases.items():
        if args.only is None or args.only == name:
            _case(out, name, *a, **kw)
            _write_partial(out, args.partial)
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
