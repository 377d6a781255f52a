"""Benchmark: gold-standard 3-D refinement (``cryoprism.refine``) against the oracle and RELION.

Simulates ``n`` particles from a map (64², CTF with defocus 1–3 µm, random shifts σ = 4 px, SNR 0.05),
writes them as a RELION 3.1 STAR without poses, and refines from the map low-passed to 40 Å. Reports
the median angular and shift errors, the FSC against the truth (0.5 and 0.143 crossings, the curve)
next to the oracle's — the refinement's own final reconstruction step (``reconstruct_gold_standard``:
same half-set split, support rule and prior) at the true poses, same run — and the mean difference of
the two curves over shells 10–32, the gold-standard FSC 0.143, wall and CPU time and the time per
iteration. Optional: a start from another map (``--wrong-map``) or from the mirrored truth
(``--wrong-hand``), RELION 3.1 auto-refine
on the same STAR (``--relion``, on the first ``--relion-n`` particles, in the background while
``--cryoprism-at-relion-n`` refines the same particles; stopped ``--relion-budget-s`` after its start,
its last finished iteration scored, its CPU time summed over its MPI processes; when it converges,
``relion_postprocess`` and ``cryoprism postprocess`` on its half-maps — ``--postprocess-only`` does that
for an earlier run's folder), and a time-per-iteration table over n and the grid (``--scaling``).
Prints one JSON object.

    python benchmarks/refine_bench.py --map MAP.mrc [--wrong-map OTHER.mrc] [--n 5000] [--relion]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

from cryoprism.forward import simulate_particles  # noqa: E402
from cryoprism.geometry import angular_distance_deg, euler_to_matrix  # noqa: E402
from cryoprism.image.filters import lowpass  # noqa: E402
from cryoprism.io import ParticleStack, read_particles, read_star, write_mrc, write_star  # noqa: E402
from cryoprism.io.mrc import read_mrc  # noqa: E402
from cryoprism.metrics import fsc, resolution_at  # noqa: E402
from cryoprism.reconstruct import half_set_labels, reconstruct_mean  # noqa: E402
from cryoprism.refine import refine  # noqa: E402
from cryoprism.refine.pipeline import reconstruct_gold_standard  # noqa: E402

#: shells over which the FSC against the truth is compared with the oracle's (mean difference)
COMPARE_SHELLS = (10, 32)


def shell(res_A, L, px):
    return float(L * px / res_A) if res_A and np.isfinite(res_A) else float("nan")


def mirror_z(vol):
    """The map's mirror image through the box centre along z (index L//2 stays in place): the other hand."""
    return np.ascontiguousarray(np.roll(np.asarray(vol, np.float32)[::-1], 1, axis=0))


def simulate(vol, px, n, out: Path, snr, shift_px, seed):
    out.mkdir(parents=True, exist_ok=True)
    sim = simulate_particles(vol, n, px, snr=snr, shift_std_A=shift_px * px, rng=seed, out_star=out / "truth.star",
                             out_mrcs=out / "particles.mrcs", progress=False)
    st = read_star(out / "truth.star")
    t = st.particles.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                                   "rlnOriginYAngst", "rlnClassNumber"])
    write_star(out / "input.star", t, st.optics)
    return sim


def vs_truth(volume, vol_true, px):
    """FSC of a map against the truth: the 0.5 and 0.143 crossings (Å and shells) and the curve."""
    L = vol_true.shape[0]
    f = fsc(volume, vol_true, px)
    r05, r143 = resolution_at(f, 0.5), resolution_at(f, 0.143)
    return {"fsc05_vs_truth_A": r05, "fsc05_vs_truth_shell": shell(r05, L, px), "fsc0143_vs_truth_A": r143,
            "fsc0143_vs_truth_shell": shell(r143, L, px), "fsc_vs_truth": [round(float(c), 4) for c in f.curve]}


def versus_oracle(s, oracle):
    """The refined map's FSC against the truth minus the oracle's: crossings (shells; positive = the
    oracle is ahead) and the mean difference of the curves over ``COMPARE_SHELLS`` (refined − oracle),
    better conditioned than a crossing where the curves run flat."""
    lo, hi = COMPARE_SHELLS
    d = np.asarray(s["fsc_vs_truth"][lo:hi + 1]) - np.asarray(oracle["fsc_vs_truth"][lo:hi + 1])
    return {"fsc05_shells_from_oracle": oracle["fsc05_vs_truth_shell"] - s["fsc05_vs_truth_shell"],
            "fsc0143_shells_from_oracle": oracle["fsc0143_vs_truth_shell"] - s["fsc0143_vs_truth_shell"],
            f"mean_fsc_minus_oracle_shells_{lo}_{hi}": round(float(d.mean()), 4),
            f"min_fsc_minus_oracle_shells_{lo}_{hi}": round(float(d.min()), 4)}


def score(vol_true, px, rot_true, org_true_A, rot, org_A, volume, half1=None, half2=None):
    L = vol_true.shape[0]
    ang = angular_distance_deg(rot_true, rot)
    sh = np.hypot(*((org_A - org_true_A) / px).T)
    out = {"median_angle_error_deg": float(np.median(ang)), "frac_angle_error_gt_20deg": float(np.mean(ang > 20)),
           "median_shift_error_px": float(np.median(sh))}
    out.update(vs_truth(volume, vol_true, px))
    if half1 is not None:
        r143 = resolution_at(fsc(half1, half2, px), 0.143)
        out.update(gold_fsc0143_A=r143, gold_fsc0143_shell=shell(r143, L, px))
    return out


def run_cryoprism(stack, start, px, label, out: Path, **kw):
    from cryoprism.io.job import Job

    job = Job(out / label, "refine", {"label": label}, log_to_file=True)
    t0, c0 = time.perf_counter(), time.process_time()
    res = refine(stack, start, px, job=job, progress=False, **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    job.finish()
    return res, wall, cpu


def _session_cpu_s(sid: int) -> float:
    """CPU seconds (user + system) of the live processes of session ``sid`` (RELION's MPI ranks), from /proc."""
    tot, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[3]) == sid:  # field 6 of stat: session id
            tot += (int(f[11]) + int(f[12])) / tick
    return tot


def start_relion(data: Path, ref_lp: Path, n: int, diameter_A: float, out: Path) -> dict:
    """Launch RELION 3.1 auto-refine on the first ``n`` particles in the background (its own session)."""
    exe = shutil.which("relion_refine_mpi")
    if exe is None:
        return {"skipped": "relion_refine_mpi not found"}
    st = read_star(data / "input.star")
    write_star(data / f"relion_{n}.star", st.particles.iloc[:n].copy(), st.optics)
    run = out / "relion"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "3", exe, "--o", str((run / "run").resolve()),
           "--auto_refine", "--split_random_halves", "--i", f"relion_{n}.star", "--ref", str(ref_lp.resolve()),
           "--firstiter_cc", "--ini_high", "40", "--dont_combine_weights_via_disc", "--pool", "3", "--pad", "2",
           "--ctf", "--particle_diameter", str(diameter_A), "--flatten_solvent", "--zero_mask", "--oversampling", "1",
           "--healpix_order", "2", "--auto_local_healpix_order", "4", "--offset_range", "5", "--offset_step", "2",
           "--sym", "C1", "--low_resol_join_halves", "40", "--norm", "--scale", "--j", "1"]
    h = {"cmd": cmd, "run": run, "n": n, "out": out, "data": data, "cpu": [0.0], "r0": resource.getrusage(
        resource.RUSAGE_CHILDREN), "t0": time.perf_counter()}
    try:
        h["p"] = subprocess.Popen(cmd, cwd=data, stdout=open(run / "stdout.txt", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
    except OSError as e:
        return {"skipped": f"could not run RELION: {e}"}

    def sample():  # the ranks' CPU, also when they are killed at the budget
        while h["p"].poll() is None:
            h["cpu"][0] = max(h["cpu"][0], _session_cpu_s(h["p"].pid))
            time.sleep(5)

    h["sampler"] = threading.Thread(target=sample, daemon=True)
    h["sampler"].start()
    return h


def _star_value(path: Path, label: str):
    m = re.search(rf"^_{label}\s+(\S+)", path.read_text(), re.M) if path.exists() else None
    return float(m.group(1)) if m else None


def finish_relion(h: dict, budget_s: float) -> dict:
    """Wait for the RELION run (killed ``budget_s`` after its start) and read its iterations and final files."""
    if "skipped" in h:
        return h
    p, run, out, data = h["p"], h["run"], h["out"], h["data"]
    try:
        p.wait(timeout=max(1.0, budget_s - (time.perf_counter() - h["t0"])))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 15)
        p.wait()
    wall = time.perf_counter() - h["t0"]
    h["sampler"].join()
    r1, r0 = resource.getrusage(resource.RUSAGE_CHILDREN), h["r0"]
    log = (run / "stdout.txt").read_text(errors="replace")
    converged = "converged" in log.lower() and (run / "run_class001.mrc").exists()
    its = sorted(run.glob("run_it*_data.star"))
    info = {"command": " ".join(h["cmd"]).replace(str(out.resolve()), "OUT").replace(str(data.resolve()), "OUT/data"),
            "n": h["n"], "budget_s": budget_s, "converged": converged, "returncode": p.returncode,
            "wall_s": round(wall, 1),
            "cpu_s_children": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 1),
            "cpu_s_sampled": round(h["cpu"][0], 1), "iterations_done": max(0, len(its) - 1)}
    if len(its) < 2:
        return info
    t = [h["t0"] - time.perf_counter() + time.time()] + [f.stat().st_mtime for f in its[1:]]
    per = []
    for k, f in enumerate(its[1:], 1):
        stem = f.name.replace("_data.star", "")
        per.append({"iteration": k, "wall_s": round(t[k] - t[k - 1], 1),
                    "resolution_A": _star_value(run / f"{stem}_half1_model.star", "rlnCurrentResolution"),
                    "healpix_order": _star_value(run / f"{stem}_sampling.star", "rlnHealpixOrder")})
    info["per_iteration"] = per
    last = run / "run_data.star" if converged and (run / "run_data.star").exists() else its[-1]
    d = read_star(last).particles
    order = {name: i for i, name in enumerate(read_star(data / f"relion_{h['n']}.star").particles["rlnImageName"])}
    info["_idx"] = np.array([order[x] for x in d["rlnImageName"]])
    info["_rot"] = euler_to_matrix(d["rlnAngleRot"].values, d["rlnAngleTilt"].values, d["rlnAnglePsi"].values)
    info["_org"] = np.stack([d["rlnOriginXAngst"].values, d["rlnOriginYAngst"].values], 1)
    info["scored"] = last.name
    stem = "run" if last.name == "run_data.star" else last.name.replace("_data.star", "")
    h1, h2 = run / f"{stem}_half1_class001{'_unfil' if stem == 'run' else ''}.mrc", \
        run / f"{stem}_half2_class001{'_unfil' if stem == 'run' else ''}.mrc"
    if h1.exists() and h2.exists():
        info["_half"] = (read_mrc(h1)[0], read_mrc(h2)[0])
        info["half_maps"] = [str(h1.relative_to(out)), str(h2.relative_to(out))]
    if converged:
        info["_final"] = read_mrc(run / "run_class001.mrc")[0]
        info["relion_final_resolution_A"] = _star_value(run / "run_model.star", "rlnCurrentResolution")
    return info


def postprocess_pair(h1, h2, px: float, truth, work: Path) -> dict:
    """``cryoprism postprocess`` and ``relion_postprocess`` on the same half-maps and mask (cryoprism's
    automatic mask); each claimed resolution against the truth's: FSC 0.5 of the masked half-map average
    against the masked truth (the full-map equivalent of the half-map 0.143)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from postprocess_bench import _relion, _relion_general  # the post-processing benchmark's RELION runner

    from cryoprism.image import auto_mask
    from cryoprism.metrics.postprocess import postprocess

    L = truth.shape[0]
    mask = auto_mask(0.5 * (h1 + h2), px)
    t_truth = resolution_at(fsc(0.5 * (h1 + h2), truth, px, mask=mask), 0.5)
    t0, c0 = time.perf_counter(), time.process_time()
    r = postprocess(h1, h2, px, mask)
    out = {"truth_fsc05_masked_A": t_truth, "mask_volume_fraction": float((mask >= 0.5).mean()),
           "cryoprism": {"resolution_A": r.resolution_A, "error_shells": shell(r.resolution_A, L, px)
                         - shell(t_truth, L, px), "bfactor_A2": r.bfactor_A2,
                         "resolution_unmasked_A": resolution_at(r.fsc.unmasked, 0.143),
                         "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}}
    if shutil.which("relion_postprocess") is None:
        out["relion"] = {"skipped": "relion_postprocess not found"}
        return out
    work.mkdir(parents=True, exist_ok=True)
    for name, v in [("h1", h1), ("h2", h2), ("mask", mask)]:
        write_mrc(work / f"{name}.mrc", np.asarray(v, np.float32), px)
    (work / "pp").mkdir(exist_ok=True)
    args = ["--i", "h1.mrc", "--i2", "h2.mrc", "--o", "pp/postprocess", "--angpix", f"{px}", "--mask", "mask.mrc",
            "--auto_bfac"]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, _ = _relion(args, work)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    g = _relion_general(work / "pp" / "postprocess.star")
    res_rel = float(g["rlnFinalResolution"])
    out["relion"] = {"args": " ".join(args), "resolution_A": res_rel,
                     "error_shells": shell(res_rel, L, px) - shell(t_truth, L, px),
                     "bfactor_A2": float(g.get("rlnBfactorUsedForSharpening", np.nan)),
                     "wall_s": round(wall, 2),
                     "cpu_s_children": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 2)}
    return out


def postprocess_section(out: Path, vol, px) -> dict:
    """Post-process the half-maps of the RELION and cryoprism runs of an earlier ``--relion`` run in ``out``."""
    res = {}
    rel = out / "relion"
    if (rel / "run_half1_class001_unfil.mrc").exists():
        h = [read_mrc(rel / f"run_half{i}_class001_unfil.mrc")[0] for i in (1, 2)]
        res["relion_half_maps"] = postprocess_pair(*h, px, vol, out / "postprocess_relion")
    for d in sorted(out.glob("cryoprism_n*")):
        if (d / "half1.mrc").exists():
            h = [read_mrc(d / f"half{i}.mrc")[0] for i in (1, 2)]
            res[f"{d.name}_half_maps"] = postprocess_pair(*h, px, vol, out / f"postprocess_{d.name}")
    return res


def scaling(stack, start, px, out: Path, ns, grids):
    rows = []
    for n in ns:
        for g in grids:
            sub = stack.subset(np.arange(n)) if hasattr(stack, "subset") else None
            if sub is None:
                st = read_star(stack.path)
                write_star(out / f"scal_{n}.star", st.particles.iloc[:n], st.optics)
                sub = read_particles(out / f"scal_{n}.star")
            res, wall, cpu = run_cryoprism(sub, start, px, f"scaling_n{n}_g{g}", out, max_iterations=3, grid_size=g)
            for h in res.iterations:
                rows.append({"n": n, "grid": g, "iteration": h["iteration"], "box": h["box"], "time_s": h["time_s"]})
    return rows


def main_section(res, a, stack, start, vol, px, sim, out, kw):
    r, wall, cpu = run_cryoprism(stack, start, px, "cryoprism", out, **kw)
    write_mrc(out / "cryoprism" / "refined.mrc", r.volume, px)
    s = score(vol, px, sim.rotations, sim.origins_A, r.rotations, r.origins_A, r.volume, *r.half_maps)
    s.update(wall_s=round(wall, 1), cpu_s=round(cpu, 1), iterations=len(r.iterations),
             time_per_iteration_s=[h["time_s"] for h in r.iterations],
             box_per_iteration=[h["box"] for h in r.iterations],
             resolution_per_iteration_A=[h["resolution_A"] for h in r.iterations],
             support_px=r.info.get("support_px"), same_halves_as_oracle=bool(np.array_equal(r.subsets - 1,
                                                                                             res["_halves"])))
    s.update(versus_oracle(s, res["oracle"]))
    resc = np.asarray(r.info.get("rescued_indices", []), np.int64)
    if resc.size:  # particles searched over all shifts again in the second global pass
        ang = angular_distance_deg(sim.rotations[resc], r.rotations[resc])
        s.update(rescued=int(resc.size), rescued_frac_angle_error_gt_20deg=float(np.mean(ang > 20)))
    s["gold_minus_truth_shells"] = s["gold_fsc0143_shell"] - s["fsc05_vs_truth_shell"]
    res["cryoprism"] = s
    res["load_avg_after_cryoprism"] = os.getloadavg()[0]


def sections(res, a, stack, start, vol, px, sim, out, kw, dump):
    s = res.get("cryoprism", {})
    starts = []
    if a.wrong_map:
        w, wpx = read_mrc(a.wrong_map)
        starts.append(("wrong_start", Path(a.wrong_map).name, np.asarray(w, np.float32), wpx))
    if a.wrong_hand:
        starts.append(("wrong_hand", "truth mirrored (z → −z)", mirror_z(vol), px))
    for key, name, w, wpx in starts:
        w = lowpass(w, wpx, resolution_A=40.0, ndim=3).astype(np.float32)
        r2, wall2, cpu2 = run_cryoprism(stack, w, wpx, f"cryoprism_{key}", out, **kw)
        write_mrc(out / f"cryoprism_{key}" / "refined.mrc", r2.volume, px)
        s2 = score(vol, px, sim.rotations, sim.origins_A, r2.rotations, r2.origins_A, r2.volume, *r2.half_maps)
        s2.update(start=name, wall_s=round(wall2, 1), cpu_s=round(cpu2, 1), iterations=len(r2.iterations),
                  resolution_per_iteration_A=[h["resolution_A"] for h in r2.iterations],
                  start_fsc05_vs_truth_A=resolution_at(fsc(w, vol, px), 0.5),
                  shells_from_truth_start=(s["fsc05_vs_truth_shell"] - s2["fsc05_vs_truth_shell"]
                                           if s else None))
        s2.update(versus_oracle(s2, res["oracle"]))
        s2["gold_minus_truth_shells"] = s2["gold_fsc0143_shell"] - s2["fsc05_vs_truth_shell"]
        # a mirrored start may converge to the mirrored truth: score that hand too
        s2["fsc05_vs_mirrored_truth_A"] = resolution_at(fsc(r2.volume, mirror_z(vol), px), 0.5)
        if key == "wrong_hand":  # the oracle of the other hand has the same curve (mirrored map and poses)
            m = vs_truth(r2.volume, mirror_z(vol), px)
            s2["vs_mirrored_truth"] = {**{k: m[k] for k in m if k != "fsc_vs_truth"}, **versus_oracle(m, res["oracle"])}
        res[key] = s2
        dump()
    if a.relion:
        n_r = min(a.relion_n, a.n)
        h = start_relion(out / "data", out / "data" / "start_lp40.mrc", n_r, a.relion_diameter_A, out)
        if a.cryoprism_at_relion_n:  # runs while RELION runs: both share the cores, compare CPU times
            st = read_star(out / "data" / "input.star")
            write_star(out / "data" / f"cp_{n_r}.star", st.particles.iloc[:n_r], st.optics)
            sub = read_particles(out / "data" / f"cp_{n_r}.star")
            r3, wall3, cpu3 = run_cryoprism(sub, start, px, f"cryoprism_n{n_r}", out, **kw)
            write_mrc(out / f"cryoprism_n{n_r}" / "refined.mrc", r3.volume, px)
            for i, m in enumerate(r3.half_maps, 1):
                write_mrc(out / f"cryoprism_n{n_r}" / f"half{i}.mrc", m, px)
            s3 = score(vol, px, sim.rotations[:n_r], sim.origins_A[:n_r], r3.rotations, r3.origins_A, r3.volume,
                       *r3.half_maps)
            s3.update(n=n_r, wall_s=round(wall3, 1), cpu_s=round(cpu3, 1), iterations=len(r3.iterations),
                      time_per_iteration_s=[hh["time_s"] for hh in r3.iterations],
                      resolution_per_iteration_A=[hh["resolution_A"] for hh in r3.iterations])
            res["cryoprism_at_relion_n"] = s3
            dump()
        info = finish_relion(h, a.relion_budget_s)
        if "_rot" in info:
            idx, rot, org = info.pop("_idx"), info.pop("_rot"), info.pop("_org")
            half = info.pop("_half", None)
            final = info.pop("_final", None)
            volume = final if final is not None else (0.5 * (half[0] + half[1]) if half else None)
            if volume is None:
                volume = np.zeros_like(vol)
            info.update(score(vol, px, sim.rotations[idx], sim.origins_A[idx], rot, org, volume,
                              *(half if half else (None, None))))
        res["relion"] = info
        if info.get("converged"):
            res["postprocess"] = postprocess_section(out, vol, px)
        if "cryoprism_at_relion_n" in res and "cpu_s_sampled" in info:
            c = res["cryoprism_at_relion_n"]
            res["relion_over_cryoprism"] = {"wall": round(info["wall_s"] / c["wall_s"], 2),
                                            "cpu": round(max(info["cpu_s_sampled"], info["cpu_s_children"])
                                                         / c["cpu_s"], 2)}
        dump()


def two_state(a, vol, px, out: Path):
    """Refine (one consensus map) then classify K = 2 at the refined poses, against the covariance
    route (refine → heterogeneity) on the same particles and poses."""
    from cryoprism.heterogeneity.classify import matched_accuracy
    from cryoprism.heterogeneity.pipeline import analyze, resolve_nres
    from cryoprism.refine.classify import classify3d

    v2, _ = read_mrc(a.two_state)
    d = out / "two_state"
    d.mkdir(parents=True, exist_ok=True)
    sim = simulate_particles([vol, np.asarray(v2, np.float32)], a.two_state_n, px, snr=a.snr,
                             shift_std_A=a.shift_px * px, rng=a.seed + 1, out_star=d / "truth.star",
                             out_mrcs=d / "particles.mrcs", progress=False)
    st = read_star(d / "truth.star")
    t = st.particles.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                                   "rlnOriginYAngst", "rlnClassNumber"])
    write_star(d / "input.star", t, st.optics)
    stack = read_particles(d / "input.star")
    start = lowpass(vol, px, resolution_A=40.0, ndim=3).astype(np.float32)
    r, wall, cpu = run_cryoprism(stack, start, px, "two_state_refine", out)
    res = {"n": a.two_state_n, "second_map": Path(a.two_state).name, "refine_wall_s": round(wall, 1),
           "refine_cpu_s": round(cpu, 1),
           "refine_median_angle_error_deg": float(np.median(angular_distance_deg(sim.rotations, r.rotations)))}
    t0, c0 = time.perf_counter(), time.process_time()
    cl = classify3d(stack, 2, r.rotations, r.origins_A, progress=False)
    res["class3d"] = {"accuracy": matched_accuracy(sim.states, cl.labels), "iterations": len(cl.iterations),
                      "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
    t0, c0 = time.perf_counter(), time.process_time()
    src = ParticleStack.from_arrays(stack.images(), pixel_size_A=px, rotations=r.rotations, origins_A=r.origins_A,
                                    ctf=stack.ctf_params() if stack.has_ctf else None)
    het = analyze(src, resolve_nres(vol.shape[0], px, None, None), classes=2, progress=False)
    res["covariance"] = {"accuracy": matched_accuracy(sim.states, het.labels),
                         "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
    return res


def public(res):
    """The JSON part of the results (keys starting with ``_`` are internal)."""
    return {k: v for k, v in res.items() if not k.startswith("_")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--map", required=True, help="true map (MRC), cubic; 64³ expected")
    ap.add_argument("--wrong-map", help="start from this map instead (e.g. another assembly state)")
    ap.add_argument("--wrong-hand", action="store_true",
                    help="also start from the truth mirrored along z (the other hand), low-passed to 40 Å")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--shift-px", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="refine_bench_out")
    ap.add_argument("--max-iterations", type=int, default=None)
    ap.add_argument("--rescue-ratio", type=float, default=None,
                    help="override RefineSettings.rescue_ratio (experiments; default: the library's)")
    ap.add_argument("--global-iterations", type=int, default=None,
                    help="override RefineSettings.global_iterations (experiments; default: the library's)")
    ap.add_argument("--partial", help="also write the JSON so far to this file after every section")
    ap.add_argument("--two-state", help="second map: K = 2 classification vs the covariance route")
    ap.add_argument("--two-state-n", type=int, default=2000)
    ap.add_argument("--skip-main", action="store_true", help="only the optional sections (wrong start, RELION)")
    ap.add_argument("--relion", action="store_true", help="also run RELION 3.1 auto-refine (if installed)")
    ap.add_argument("--relion-n", type=int, default=1000)
    ap.add_argument("--relion-budget-s", type=float, default=7200.0,
                    help="RELION is stopped this long after its start; its last iteration is scored")
    ap.add_argument("--relion-diameter-A", type=float, default=300.0)
    ap.add_argument("--postprocess-only", action="store_true",
                    help="only post-process (cryoprism and relion_postprocess) the half-maps of an earlier --relion "
                         "run in --out")
    ap.add_argument("--cryoprism-at-relion-n", action="store_true",
                    help="also refine the first --relion-n particles with cryoprism (equal n comparison)")
    ap.add_argument("--scaling", action="store_true", help="time per iteration for n in {1000, 2000} × grid "
                                                           "{1000, 4608} (3 iterations each)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    vol, px = read_mrc(a.map)
    vol = np.asarray(vol, np.float32)
    if a.postprocess_only:
        json.dump({"postprocess": postprocess_section(out, vol, px)}, sys.stdout, default=float)
        sys.stdout.write("\n")
        return
    L = vol.shape[0]
    res: dict = {"n": a.n, "box": L, "pixel_size_A": px, "snr": a.snr, "shift_sigma_px": a.shift_px,
                 "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    sim = simulate(vol, px, a.n, out / "data", a.snr, a.shift_px, a.seed)
    start = lowpass(vol, px, resolution_A=40.0, ndim=3).astype(np.float32)
    write_mrc(out / "data" / "start_lp40.mrc", start, px)
    stack = read_particles(out / "data" / "input.star")
    truth_stack = read_particles(out / "data" / "truth.star")
    # oracle: the refinement's own final reconstruction step (same half-set split, support rule and
    # Wiener prior, full box) at the true poses
    t0, c0 = time.perf_counter(), time.process_time()
    orc = reconstruct_gold_standard(stack, sim.rotations, sim.origins_A)
    r143 = resolution_at(orc.fsc, 0.143)
    res["oracle"] = {**vs_truth(orc.volume, vol, px), "gold_fsc0143_A": r143, "gold_fsc0143_shell": shell(r143, L, px),
                     "support_px": round(orc.support_px, 2), "time_s": round(time.perf_counter() - t0, 1),
                     "cpu_s": round(time.process_time() - c0, 1)}
    res["_halves"] = half_set_labels(stack.n, stack.table, 0)
    # the earlier oracle (one reconstruct_mean call with its own support and prior), for comparison
    t0 = time.perf_counter()
    old = reconstruct_mean(truth_stack, regularization="auto", halfmaps=True, progress=False)
    r05 = resolution_at(fsc(old.volume, vol, px), 0.5)
    res["oracle_reconstruct_mean"] = {"fsc05_vs_truth_A": r05, "fsc05_vs_truth_shell": shell(r05, L, px),
                                      "gold_fsc0143_A": resolution_at(old.fsc, 0.143),
                                      "support_px": old.info.get("mask_radius_px"),
                                      "time_s": round(time.perf_counter() - t0, 1)}
    kw = {} if a.max_iterations is None else {"max_iterations": a.max_iterations}
    if a.rescue_ratio is not None:
        kw["rescue_ratio"] = a.rescue_ratio
    if a.global_iterations is not None:
        kw["global_iterations"] = a.global_iterations

    def dump():
        if a.partial:
            Path(a.partial).write_text(json.dumps(public(res), default=float) + "\n")

    dump()
    if not a.skip_main:
        main_section(res, a, stack, start, vol, px, sim, out, kw)
        dump()
    sections(res, a, stack, start, vol, px, sim, out, kw, dump)
    if a.two_state:
        res["two_state"] = two_state(a, vol, px, out)
        dump()
    if a.scaling:
        res["scaling"] = scaling(stack, start, px, out, [1000, 2000], [1000, 4608])
    res["load_avg_end"] = os.getloadavg()[0]
    dump()
    json.dump(public(res), sys.stdout, default=float)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
