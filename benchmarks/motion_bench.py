"""Motion correction and CTF-for-many-micrographs benchmark (prints one JSON object).

Parts (``--parts``, comma-separated; default all but ``relion``):

* ``accuracy`` — simulated movies (:func:`cryoprism.preprocess.movies.simulate_movie`: 40 frames,
  1 e⁻/Å² per frame at 1 Å/px, Poisson counts, radiation damage, CTF at 1–2.5 µm, global drift of
  10–30 px plus a smooth local deformation of 1–3 px). Trajectory error: r.m.s. over a 128-px grid of
  positions and all frames of (estimated − true displacement), after removing one common offset; the
  same for the global track alone. FRC of the aligned dose-weighted sum and of the unaligned sum with
  the true (noise-free, damage-included) sum, in 1-pixel shells of the central square; the comparison
  "aligned beats unaligned at every shell past the first CTF zero" is reported up to Nyquist and up to
  the last shell where the aligned FRC is above 0.05.
* ``timing`` — wall and CPU time of ``align_movie`` (5 × 5 patches) on one movie of 4096² × 40 frames,
  and the scaling with the size (1024², 2048², 4096² at 40 frames) and the number of frames (10, 20, 40
  at 2048²), on movies made cheaply for the purpose (a drifting texture, Poisson counts; the work does
  not depend on the content). The machine load (1-minute load average) is reported with each time.
* ``relion`` — the same movies through ``relion_run_motioncorr --use_own`` (5 × 5 patches, dose
  weighting, B-factor 150, its defaults otherwise): trajectory error of its global track and of its
  global + local polynomial model, and its wall and CPU time (``getrusage`` of the child), next to ours
  timed on the same movie right after it (same load).
* ``ctf`` — ``estimate_ctf_many`` over simulated micrographs (2048², 1 Å/px, defocus 1–4 µm,
  astigmatism 0–1000 Å at random angles, texture × CTF + shot noise of 40 e⁻/Å²), in parallel over
  micrographs: defocus errors (%), astigmatism angle errors (°, micrographs with astigmatism ≥ 300 Å),
  time; and the real micrograph given by ``--real`` (0.8538 Å/px; nominal 0.9 µm).

    python benchmarks/motion_bench.py [--parts accuracy,timing,ctf,relion] [--quick] [--real MIC.mrc]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from cryoprism.ctf.model import electron_wavelength_A
from cryoprism.metrics.fsc import fsc
from cryoprism.preprocess.motion import align_movie
from cryoprism.preprocess.movies import simulate_movie


def _load():
    return round(os.getloadavg()[0], 2)


def _traj_error(disp_est, disp_true):
    e = disp_est - disp_true
    e = e - e.reshape(-1, 2).mean(0)
    return float(np.sqrt((e**2).sum(-1).mean()))


def _grid(H, W, step=128):
    yy, xx = np.mgrid[step // 2:H:step, step // 2:W:step]
    return xx.astype(float), yy.astype(float)


def _first_zero_invA(defocus_A, voltage_kV=300.0, cs_mm=2.7, q=0.1):
    lam = float(electron_wavelength_A(voltage_kV))
    s = np.linspace(1e-4, 0.5, 20000)
    g = np.pi * lam * defocus_A * s**2 - 0.5 * np.pi * cs_mm * 1e7 * lam**3 * s**4 + np.arctan2(q, np.sqrt(1 - q * q))
    return float(s[np.argmax(g >= np.pi)])


def _frc_compare(aligned, unaligned, true, px, defocus_A):
    H, W = true.shape
    L = min(H, W) - 128
    y0, x0 = (H - L) // 2, (W - L) // 2
    cut = lambda a: a[y0:y0 + L, x0:x0 + L]  # noqa: E731
    fa = fsc(cut(aligned), cut(true), px)
    fu = fsc(cut(unaligned), cut(true), px)
    s0 = _first_zero_invA(defocus_A)
    past = fa.freq_invA > s0
    beats = fa.curve > fu.curve
    sig = past & (fa.curve > 0.05)
    last_sig = int(np.flatnonzero(sig).max()) if sig.any() else 0
    upto = past & (np.arange(len(fa.curve)) <= last_sig)
    shells = {k: [round(float(v), 4) for v in c[::max(1, len(c) // 16)]] for k, c in
              (("freq_invA", fa.freq_invA), ("aligned_dw", fa.curve), ("unaligned", fu.curve))}
    return {"first_zero_invA": round(s0, 4),
            "beats_every_shell_past_first_zero_to_nyquist": bool(beats[past].all()),
            "fraction_of_shells_beaten_to_nyquist": round(float(beats[past].mean()), 4),
            "signal_limit_invA": round(float(fa.freq_invA[last_sig]), 4),
            "beats_every_shell_past_first_zero_to_signal_limit": bool(beats[upto].all()),
            "mean_frc_aligned_past_zero": round(float(fa.curve[upto].mean()), 4) if upto.any() else None,
            "mean_frc_unaligned_past_zero": round(float(fu.curve[upto].mean()), 4) if upto.any() else None,
            "frc_every_16th_shell": shells}


def _movies(n_movies, size, rng, interp_order=3):
    out = []
    for i in range(n_movies):
        drift = float(rng.uniform(10, 30))
        local = float(rng.uniform(1, 3))
        df = float(rng.uniform(10000, 25000))
        sim = simulate_movie((size, size), 40, 1.0, 1.0, drift_px=drift, local_px=local, defocus_A=df,
                             rng=int(rng.integers(2**31)), interp_order=interp_order)
        out.append((sim, {"drift_px": round(np.hypot(*sim.global_px[-1]), 2), "local_px": round(local, 2),
                          "defocus_A": round(df)}))
    return out


def part_accuracy(movies):
    rows = []
    for sim, info in movies:
        H, W = sim.shape
        load0 = _load()
        t = time.perf_counter()
        res = align_movie(sim.frames, sim.pixel_size_A, dose_per_frame_e_A2=1.0)
        dt = time.perf_counter() - t
        x, y = _grid(H, W)
        truth = sim.displacement(x, y)
        err = _traj_error(res.displacement(x, y), truth)
        err_global_only = _traj_error(np.broadcast_to(res.shifts_px[:, None, None, :], truth.shape), truth)
        unaligned = sim.frames.sum(axis=0, dtype=np.float32)
        frc = _frc_compare(res.dose_weighted, unaligned, sim.true_sum, sim.pixel_size_A, info["defocus_A"])
        rows.append({**info, "size": [H, W], "trajectory_rms_px": round(err, 3),
                     "global_track_only_rms_px": round(err_global_only, 3),
                     "model_fit_rms_px": round(res.local_model.rms_residual_px, 3),
                     "seconds": round(dt, 1), "load": load0, "frc": frc, "_res": res})
    return rows


def _timing_movie(N, n, rng, drift_px=20.0):
    """A cheap movie for timing (the content does not change the work): a smooth texture with integer
    drift along a random direction, 1 count per pixel per frame, Poisson noise."""
    M = N + 2 * int(drift_px) + 2
    f = np.fft.rfftfreq(M)[None, :]
    g = np.fft.fftfreq(M)[:, None]
    tex = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((M, M))) / (1 + np.hypot(g, f) * 50), s=(M, M))
    lam = np.maximum(1 + 0.1 * tex / tex.std(), 0).astype(np.float32)
    th = rng.uniform(0, 2 * np.pi)
    h = (1 - np.exp(-3 * np.arange(n) / (n - 1))) / (1 - np.exp(-3))
    off = np.rint(drift_px * h[:, None] * [np.cos(th), np.sin(th)]).astype(int) + int(drift_px) + 1
    return np.stack([rng.poisson(lam[oy:oy + N, ox:ox + N]).astype(np.uint8) for ox, oy in off])


def part_timing(quick):
    out = {"cores": len(os.sched_getaffinity(0))}
    rng = np.random.default_rng(7)
    sizes = [1024, 2048] if quick else [1024, 2048, 4096]
    by_size = []
    keep = None
    for N in sizes:
        frames = _timing_movie(N, 40, rng)
        load0 = _load()
        t, c = time.perf_counter(), time.process_time()
        res = align_movie(frames, 1.0, dose_per_frame_e_A2=1.0)
        by_size.append({"size": N, "frames": 40, "seconds": round(time.perf_counter() - t, 1),
                        "cpu_seconds": round(time.process_time() - c, 1), "load": load0,
                        "stages_s": {k: round(v, 1) for k, v in res.timings_s.items()}})
        if N == 2048:
            keep = frames
        del frames, res
    out["by_size_40_frames"] = by_size
    by_frames = []
    for nf in (10, 20, 40):
        load0 = _load()
        t, c = time.perf_counter(), time.process_time()
        align_movie(keep[:nf], 1.0, dose_per_frame_e_A2=1.0)
        by_frames.append({"size": 2048, "frames": nf, "seconds": round(time.perf_counter() - t, 1),
                          "cpu_seconds": round(time.process_time() - c, 1), "load": load0})
    out["by_frames_2048"] = by_frames
    big = [r for r in by_size if r["size"] == 4096]
    if big:
        out["4k_40_frames_seconds"] = big[0]["seconds"]
        out["4k_40_frames_cpu_seconds"] = big[0]["cpu_seconds"]
        out["4k_target_120s_met"] = big[0]["seconds"] <= 120
    return out


def _relion_model_shift(coef_x, coef_y, x, y, z):
    """RELION's third-order polynomial model (ThirdOrderPolynomialModel): x, y ∈ [−0.5, 0.5], z = frame."""
    def one(c):
        tz = [z, z * z, z * z * z]
        terms = [1.0, x, x * x, y, y * y, x * y]
        return sum(c[3 * j + i] * tz[i] * terms[j] for j in range(6) for i in range(3))
    return one(coef_x), one(coef_y)


def part_relion(movies, threads=2):
    import starfile

    from cryoprism.io import write_mrc

    if shutil.which("relion_run_motioncorr") is None:
        return {"skipped": "relion_run_motioncorr not found"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "Movies").mkdir()
        for i, (sim, info) in enumerate(movies):
            write_mrc(tmp / "Movies" / f"m{i}.mrcs", sim.frames.astype(np.float32), 1.0, is_stack=True)
        for i, (sim, info) in enumerate(movies):
            cmd = ["relion_run_motioncorr", "--i", f"Movies/m{i}.mrcs", "--o", "MC/", "--use_own",
                   "--j", str(threads), "--bfactor", "150", "--patch_x", "5", "--patch_y", "5",
                   "--dose_weighting", "--angpix", "1", "--voltage", "300", "--dose_per_frame", "1",
                   "--first_frame_sum", "1", "--last_frame_sum", "-1"]
            load0 = _load()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            p = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            dt = time.perf_counter() - t
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_relion = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            # ours on the same movie right after, under the same load
            t, c = time.perf_counter(), time.process_time()
            align_movie(sim.frames, 1.0, dose_per_frame_e_A2=1.0)
            dt_ours, cpu_ours = time.perf_counter() - t, time.process_time() - c
            star = tmp / "MC" / "Movies" / f"m{i}.star"
            if p.returncode != 0 or not star.exists():
                rows.append({"movie": i, "error": (p.stderr or p.stdout)[-400:]})
                continue
            b = starfile.read(star, always_dict=True)
            g = b["global_shift"]
            sh = np.column_stack([g["rlnMicrographShiftX"].to_numpy(float), g["rlnMicrographShiftY"].to_numpy(float)])
            H, W = sim.shape
            x, y = _grid(H, W)
            truth = sim.displacement(x, y)
            errs = {}
            for sign in (-1, 1):
                errs[sign] = _traj_error(np.broadcast_to(sign * sh[:, None, None, :], truth.shape), truth)
            sign = min(errs, key=errs.get)
            row = {"movie": i, "seconds": round(dt, 1), "cpu_seconds": round(cpu_relion, 1), "load": load0,
                   "ours_seconds_same_load": round(dt_ours, 1), "ours_cpu_seconds": round(cpu_ours, 1),
                   "relion_shift_sign_vs_displacement": sign,
                   "global_track_only_rms_px": round(errs[sign], 3)}
            if "local_motion_model" in b:
                lm = b["local_motion_model"]
                cidx = lm["rlnMotionModelCoeffsIdx"].to_numpy(int)
                cval = lm["rlnMotionModelCoeff"].to_numpy(float)
                c = np.zeros(36)
                c[cidx] = cval
                z = np.arange(truth.shape[0]).reshape(-1, 1, 1).astype(float)
                lx, ly = _relion_model_shift(c[:18], c[18:], x[None] / W - 0.5, y[None] / H - 0.5, z)
                est = np.stack([sh[:, 0, None, None] + lx, sh[:, 1, None, None] + ly], -1) * sign
                row["global_plus_local_model_rms_px"] = round(_traj_error(est, truth), 3)
            rows.append(row)
    return {"command": "relion_run_motioncorr --use_own --j 2 --bfactor 150 --patch_x 5 --patch_y 5 "
                       "--dose_weighting --angpix 1 --voltage 300 --dose_per_frame 1", "movies": rows}


def _ctf_micrograph(N, px, u, v, ang, rng, dose=40.0, contrast=0.1, bfactor=60.0):
    from cryoprism.ctf import CTFParams, ctf_2d

    f = np.fft.fftfreq(N, d=px)
    s = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    tex = np.fft.fft2(rng.standard_normal((N, N))) / np.sqrt(1 + (s / 0.02) ** 2)
    p = CTFParams(u, v, ang, 300.0, 2.7, 0.1, bfactor_A2=bfactor)
    img = np.fft.ifft2(tex * np.fft.ifftshift(ctf_2d(N, px, p))).real
    lam = dose * px**2 * (1 + contrast * img / img.std())
    return rng.poisson(np.maximum(lam, 0)).astype(np.float32)


def part_ctf(quick, real, out_dir):
    from cryoprism.io import write_mrc
    from cryoprism.io.job import Job
    from cryoprism.preprocess.ctf_batch import estimate_ctf_many

    rng = np.random.default_rng(11)
    n = 4 if quick else 10
    N = 2048
    truth = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "mics").mkdir()
        for i in range(n):
            mean = 10000 + 30000 * i / max(n - 1, 1)
            ast = float(rng.uniform(0, 1000))
            ang = float(rng.uniform(0, 180))
            u, v = mean + ast / 2, mean - ast / 2
            write_mrc(tmp / "mics" / f"mic{i:02d}.mrc", _ctf_micrograph(N, 1.0, u, v, ang, rng), 1.0)
            truth.append((u, v, ang, ast))
        job = Job(out_dir / "ctf_sim" if out_dir else tmp / "job", "ctf-estimate", {})
        t = time.perf_counter()
        res = estimate_ctf_many([tmp / "mics"], job=job, progress=False)
        dt = time.perf_counter() - t
    tab = res["table"]
    rows = []
    for (u, v, ang, ast), r in zip(truth, tab.itertuples()):
        du = 100 * (r.rlnDefocusU / u - 1)
        dv = 100 * (r.rlnDefocusV / v - 1)
        da = float((r.rlnDefocusAngle - ang + 90) % 180 - 90)
        rows.append({"defocus_u_A": round(u), "defocus_v_A": round(v), "astigmatism_A": round(ast),
                     "angle_deg": round(ang, 1), "err_u_pct": round(du, 2), "err_v_pct": round(dv, 2),
                     "err_angle_deg": round(da, 2) if ast >= 300 else None,
                     "fit_resolution_A": round(r.rlnCtfMaxResolution, 2), "fom": round(r.rlnCtfFigureOfMerit, 3)})
    out = {"micrographs": rows, "seconds_total": round(dt, 1), "load": _load(),
           "max_abs_defocus_err_pct": max(max(abs(r["err_u_pct"]), abs(r["err_v_pct"])) for r in rows),
           "max_abs_angle_err_deg": max((abs(r["err_angle_deg"]) for r in rows if r["err_angle_deg"] is not None),
                                        default=None)}
    out["defocus_within_2pct"] = out["max_abs_defocus_err_pct"] <= 2.0
    out["angle_within_5deg"] = out["max_abs_angle_err_deg"] is None or out["max_abs_angle_err_deg"] <= 5.0
    if real:
        job = Job(out_dir / "ctf_real" if out_dir else Path(tempfile.mkdtemp()), "ctf-estimate", {})
        t = time.perf_counter()
        r = estimate_ctf_many([real], job=job, progress=False)
        f = r["fits"][0]
        out["real"] = {"micrograph": Path(real).name, "defocus_u_A": round(f.defocus_u_A, 1),
                       "defocus_v_A": round(f.defocus_v_A, 1), "angle_deg": round(f.defocus_angle_deg, 1),
                       "fit_resolution_A": round(f.fit_resolution_A, 2), "fom": round(f.score, 3),
                       "seconds": round(time.perf_counter() - t, 1),
                       "plot": str(r["plots"][0]) if out_dir else None}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="accuracy,timing,ctf")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (development)")
    ap.add_argument("--movies", type=int, default=3, help="simulated movies for accuracy/relion")
    ap.add_argument("--size", type=int, default=2048, help="movie size for accuracy/relion")
    ap.add_argument("--real", default=None, help="a real micrograph for the CTF part")
    ap.add_argument("--out", default=None, help="folder for plots (trajectory, CTF diagnostics)")
    a = ap.parse_args()
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    out_dir = Path(a.out) if a.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    result = {"load_start": _load(), "cores": len(os.sched_getaffinity(0))}
    movies = None
    if "accuracy" in parts or "relion" in parts:
        size = 1024 if a.quick else a.size
        t = time.perf_counter()
        movies = _movies(a.movies, size, np.random.default_rng(2026))
        result["simulation_seconds"] = round(time.perf_counter() - t, 1)
    if "accuracy" in parts:
        rows = part_accuracy(movies)
        if out_dir:
            from cryoprism.preprocess.motion import plot_trajectories

            for i, r in enumerate(rows):
                fig = plot_trajectories(r["_res"], f"simulated movie {i}")
                fig.savefig(out_dir / f"motion_sim{i}_shifts.png", dpi=100)
        for r in rows:
            r.pop("_res")
        result["accuracy"] = {"movies": rows,
                              "max_trajectory_rms_px": max(r["trajectory_rms_px"] for r in rows),
                              "target_0_3_px_met": all(r["trajectory_rms_px"] <= 0.3 for r in rows),
                              "frc_beats_unaligned_to_signal_limit": all(
                                  r["frc"]["beats_every_shell_past_first_zero_to_signal_limit"] for r in rows),
                              "frc_beats_unaligned_to_nyquist": all(
                                  r["frc"]["beats_every_shell_past_first_zero_to_nyquist"] for r in rows)}
    if "relion" in parts:
        result["relion"] = part_relion(movies)
    del movies
    if "timing" in parts:
        result["timing"] = part_timing(a.quick)
    if "ctf" in parts:
        result["ctf"] = part_ctf(a.quick, a.real, out_dir)
    result["load_end"] = _load()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
