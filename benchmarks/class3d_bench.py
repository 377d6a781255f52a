"""Benchmark: 3-D classification (``refine --classes 2``) against the covariance route and RELION Class3D.

A two-state set (two maps, 50/50, 64², CTF defocus 1–3 µm, origins σ = 4 px, SNR 0.05) is written as a
RELION 3.1 STAR without poses. One consensus refinement (``cryoprism.refine.refine`` at its defaults,
started from the first map low-passed to 40 Å) estimates the poses. On the same particles and refined
poses the benchmark runs:

* ``class3d``: :func:`cryoprism.refine.classify.classify3d` at its defaults (covariance start, local
  pose refinement per class) — what ``cryoprism refine --classes 2`` runs after the consensus;
* variants (``--variants``): ``random`` start, ``fixed_poses`` (no pose refinement);
* ``covariance``: the covariance route (``cryoprism.heterogeneity.analyze``, 2 classes, defaults) at
  the refined poses and at the **true** poses (the accuracy lost to estimated poses);
* ``relion`` (``--relion``): RELION 3.1 Class3D (``relion_refine_mpi --K 2 --skip_align --ctf
  --tau2_fudge 4 --iter 25``) at the refined poses, from the consensus map, on the first
  ``--relion-n`` particles.

Accuracy is the fraction of particles in their true state under the best relabelling; times are
wall and process CPU seconds (RELION: wall and the children's CPU). Prints one JSON object.

    python benchmarks/class3d_bench.py --map vol_018.mrc --second vol_383.mrc [--n 2000] [--relion]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

from cryoprism.geometry import angular_distance_deg, matrix_to_euler  # noqa: E402
from cryoprism.heterogeneity.classify import matched_accuracy  # noqa: E402
from cryoprism.image.filters import lowpass  # noqa: E402
from cryoprism.io import ParticleStack, read_particles, read_star, write_mrc, write_star  # noqa: E402
from cryoprism.io.mrc import read_mrc  # noqa: E402
from cryoprism.refine import refine  # noqa: E402
from cryoprism.refine.classify import classify3d  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine_bench import simulate  # noqa: E402  (the same simulation and input STAR as the refinement benchmark)


def timed(fn, *args, **kw):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)


def pose_errors(sim, rot, org_A, px, idx=None):
    idx = np.arange(len(rot)) if idx is None else idx
    ang = angular_distance_deg(sim.rotations[idx], rot)
    sh = np.hypot(*((org_A - sim.origins_A[idx]) / px).T)
    out = {"median_angle_error_deg": round(float(np.median(ang)), 2),
           "median_shift_error_px": round(float(np.median(sh)), 3)}
    for s in np.unique(sim.states):
        m = sim.states[idx] == s
        out[f"median_angle_error_state{s + 1}_deg"] = round(float(np.median(ang[m])), 2)
    return out


def consensus(stack, start, px, d: Path, n: int, seed: int):
    """Refined poses (cached in ``d/consensus.npz`` for the same n and seed)."""
    cache = d / "consensus.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        if int(z["n"]) == n and int(z["seed"]) == seed:
            return z["rot"], z["org"], z["volume"], json.loads(str(z["info"])) | {"cached": True}
    r, wall, cpu = timed(refine, stack, start, px, progress=False)
    info = {"wall_s": wall, "cpu_s": cpu, "iterations": len(r.iterations), "resolution_A": r.resolution_A}
    np.savez(cache, rot=r.rotations, org=r.origins_A, volume=r.volume, n=n, seed=seed, info=json.dumps(info))
    return r.rotations, r.origins_A, r.volume, info


def run_class3d(stack, sim, rot, org, px, resolution_A, **kw):
    cl, wall, cpu = timed(classify3d, stack, 2, rot, org, resolution_A=resolution_A, progress=False, **kw)
    out = {"accuracy": round(matched_accuracy(sim.states, cl.labels), 4), "wall_s": wall, "cpu_s": cpu,
           "rounds": [{k: v for k, v in h.items() if k in ("round", "e_steps", "changed", "median_angle_change_deg",
                                                             "time_s")} for h in cl.iterations]}
    out["accuracy_per_round"] = [round(matched_accuracy(sim.states, lab), 4) for lab in cl.info["labels_per_round"]]
    out.update(pose_errors(sim, cl.rotations, cl.origins_A, px))
    return out


def covariance_route(stack, rot, org, px, sim):
    from cryoprism.heterogeneity.pipeline import analyze, resolve_nres

    src = ParticleStack.from_arrays(stack.images(), pixel_size_A=px, rotations=rot, origins_A=org,
                                    ctf=stack.ctf_params() if stack.has_ctf else None)
    het, wall, cpu = timed(analyze, src, resolve_nres(stack.box, px, None, None), classes=2, progress=False)
    out = {"accuracy": round(matched_accuracy(sim.states, het.labels), 4), "wall_s": wall, "cpu_s": cpu}
    if getattr(het, "labels_subspace", None) is not None:
        out["accuracy_before_full_resolution_step"] = round(matched_accuracy(sim.states, het.labels_subspace), 4)
    return out


def run_relion(d: Path, rot, org, ref: Path, n: int, budget_s: float, diameter_A: float, iters: int, tau2: float,
               out: Path, skip_align: bool = True):
    exe = shutil.which("relion_refine_mpi")
    if exe is None:
        return {"skipped": "relion_refine_mpi not found"}
    st = read_star(d / "input.star")
    t = st.particles.iloc[:n].copy()
    a, b, c = matrix_to_euler(rot[:n])
    t["rlnAngleRot"], t["rlnAngleTilt"], t["rlnAnglePsi"] = a, b, c
    t["rlnOriginXAngst"], t["rlnOriginYAngst"] = org[:n, 0], org[:n, 1]
    name = f"relion_class3d_{n}.star"
    write_star(d / name, t, st.optics)
    run = out / ("relion_class3d" + ("" if skip_align else "_local"))
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "3", exe, "--o", str((run / "run").resolve()),
           "--i", name, "--ref", str(ref.resolve()), "--K", "2", "--iter", str(iters), "--tau2_fudge", str(tau2),
           "--ini_high", "40", "--ctf", "--particle_diameter", str(diameter_A), "--flatten_solvent", "--zero_mask",
           "--oversampling", "1", "--pad", "2", "--sym", "C1", "--norm", "--scale",
           "--dont_combine_weights_via_disc", "--pool", "3", "--j", "1"]
    if skip_align:
        cmd += ["--skip_align"]
    else:  # local searches around the refined poses (sigma 5°, 3.7° sampling), shifts ±3 px
        cmd += ["--healpix_order", "3", "--sigma_ang", "5", "--offset_range", "3", "--offset_step", "1"]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    finished = False
    try:
        p = subprocess.Popen(cmd, cwd=d, stdout=open(run / "stdout.txt", "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            p.wait(timeout=budget_s)
            finished = p.returncode == 0
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 15)
            p.wait()
    except OSError as e:
        return {"skipped": f"could not run RELION: {e}"}
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    info = {"command": " ".join(cmd).replace(str(out.resolve()), "OUT").replace(str(d.resolve()), "OUT/data"),
            "n": n, "finished": finished, "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s_children": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 1)}
    its = sorted(run.glob("run_it*_data.star"))
    if not its:
        return info
    last = its[-1]
    dd = read_star(last).particles
    cls = dd["rlnClassNumber"].to_numpy()
    info.update(iterations_done=len(its) - 1, last_iteration=last.name,
                time_per_iteration_s=round(float(np.mean(np.diff(sorted(f.stat().st_mtime for f in its)))), 1)
                if len(its) > 1 else None)
    info["_labels"] = cls
    if not skip_align:
        from cryoprism.geometry import euler_to_matrix

        info["_rot"] = euler_to_matrix(dd["rlnAngleRot"].values, dd["rlnAngleTilt"].values, dd["rlnAnglePsi"].values)
        info["_org"] = np.stack([dd["rlnOriginXAngst"].values, dd["rlnOriginYAngst"].values], 1)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--map", required=True, help="first state (MRC, cubic; also the refinement's start, low-passed)")
    ap.add_argument("--second", required=True, help="second state (MRC, same box and pixel size)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--shift-px", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--out", default="class3d_bench_out")
    ap.add_argument("--variants", default="random,fixed_poses",
                    help="comma-separated extra runs of classify3d: random, fixed_poses, random_fixed ('' none)")
    ap.add_argument("--no-covariance", action="store_true", help="skip the covariance route")
    ap.add_argument("--no-class3d", action="store_true", help="skip classify3d at its defaults")
    ap.add_argument("--pose-rounds", type=int, default=None, help="classify3d's pose_rounds (default: its own)")
    ap.add_argument("--global-rounds", type=int, default=None, help="classify3d's global_rounds (default: its own)")
    ap.add_argument("--relion", action="store_true", help="also run RELION 3.1 Class3D (if installed)")
    ap.add_argument("--relion-local", action="store_true", help="also RELION Class3D with local angular searches")
    ap.add_argument("--relion-n", type=int, default=2000)
    ap.add_argument("--relion-iter", type=int, default=25)
    ap.add_argument("--relion-budget-s", type=float, default=1800.0)
    ap.add_argument("--relion-diameter-A", type=float, default=300.0)
    ap.add_argument("--partial", help="also write the JSON so far to this file after every section")
    a = ap.parse_args(argv)
    out = Path(a.out)
    d = out / "data"
    v1, px = read_mrc(a.map)
    v2, px2 = read_mrc(a.second)
    v1, v2 = np.asarray(v1, np.float32), np.asarray(v2, np.float32)
    res: dict = {"n": a.n, "box": v1.shape[0], "pixel_size_A": px, "snr": a.snr, "shift_sigma_px": a.shift_px,
                 "maps": [Path(a.map).name, Path(a.second).name], "cpu_count": os.cpu_count(),
                 "load_avg_start": os.getloadavg()[0]}

    def dump():
        if a.partial:
            Path(a.partial).write_text(json.dumps(res, default=float) + "\n")

    sim = simulate([v1, v2], px, a.n, d, a.snr, a.shift_px, a.seed)
    stack = read_particles(d / "input.star")
    start = lowpass(v1, px, resolution_A=40.0, ndim=3).astype(np.float32)
    rot, org, cons_vol, info = consensus(stack, start, px, d, a.n, a.seed)
    res["consensus_refine"] = info | pose_errors(sim, rot, org, px)
    dump()
    res_A = max(float(info.get("resolution_A", 20.0)), 2.5 * px)
    res["class_resolution_A"] = res_A
    if not a.no_class3d:
        kw = {k: v for k, v in (("pose_rounds", a.pose_rounds), ("global_rounds", a.global_rounds)) if v is not None}
        res["class3d"] = run_class3d(stack, sim, rot, org, px, res_A, **kw) | kw
        dump()
    if not a.no_covariance:
        res["covariance_refined_poses"] = covariance_route(stack, rot, org, px, sim)
        dump()
        res["covariance_true_poses"] = covariance_route(stack, sim.rotations, sim.origins_A, px, sim)
        res["accuracy_lost_to_estimated_poses"] = round(res["covariance_true_poses"]["accuracy"]
                                                        - res["covariance_refined_poses"]["accuracy"], 4)
        dump()
    for v in [s for s in a.variants.split(",") if s]:
        kw = {"random": {"init": "random"}, "fixed_poses": {"pose_rounds": 0},
              "random_fixed": {"init": "random", "pose_rounds": 0}}[v]
        res[f"class3d_{v}"] = run_class3d(stack, sim, rot, org, px, res_A, **kw)
        dump()
    if a.relion or a.relion_local:
        write_mrc(d / "consensus.mrc", cons_vol, px)
        n_r = min(a.relion_n, a.n)
        for local in ([False] if a.relion else []) + ([True] if a.relion_local else []):
            info = run_relion(d, rot, org, d / "consensus.mrc", n_r, a.relion_budget_s, a.relion_diameter_A,
                              a.relion_iter, 4.0, out, skip_align=not local)
            lab = info.pop("_labels", None)
            if lab is not None:
                info["accuracy"] = round(matched_accuracy(sim.states[:n_r], lab), 4)
            if "_rot" in info:
                info.update(pose_errors(sim, info.pop("_rot"), info.pop("_org"), px, np.arange(n_r)))
            res["relion_class3d" + ("_local" if local else "")] = info
            dump()
    res["load_avg_end"] = os.getloadavg()[0]
    dump()
    json.dump(res, sys.stdout, default=float)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
