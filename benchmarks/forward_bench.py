"""Forward model + mean reconstruction benchmark: accuracy checks and throughput against ASPIRE.

Prints ONE JSON object. ASPIRE runs in its own virtual environment (``.bench-venv``, see the
developers' guide) as a subprocess of this script (``--aspire-worker TASK.json``), in the same run,
on the same data (files written by cryoprism and read back by ASPIRE's own RELION reader).

    .venv/bin/python benchmarks/forward_bench.py [--quick] [--no-aspire] [--no-scale]

Sign conventions, measured and reported under ``convention``:
* ASPIRE's CTF filter is the negative of RELION's, so ASPIRE images of the same particles are
  contrast-inverted; the benchmark multiplies ASPIRE's images (and its mean-volume estimate, which
  is linear in the images) by −1 before comparing.
* ASPIRE's ``offsets`` (read from ``rlnOriginX/YAngst`` by ``RelionSource``) are applied with the
  same meaning as RELION's origins; both signs are tried and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_PY = REPO / ".bench-venv" / "bin" / "python"


# =================================================================================================
# ASPIRE side (runs inside .bench-venv; imports only aspire/numpy/mrcfile)
# =================================================================================================

def _aspire_worker(task_path: str) -> None:
    import logging

    import numpy as np

    logging.disable(logging.WARNING)
    task = json.loads(Path(task_path).read_text())
    kind = task["kind"]
    out: dict = {}
    if kind == "convention":
        import mrcfile
        from aspire.source import RelionSource, Simulation
        from aspire.volume import Volume

        src = RelionSource(task["star"])
        vol = np.load(task["volume"]).astype(np.float64)
        ours = mrcfile.open(task["stack"], permissive=True).data.astype(np.float64)

        def corr(a, b):
            a = a - a.mean((1, 2), keepdims=True)
            b = b - b.mean((1, 2), keepdims=True)
            return (a * b).sum((1, 2)) / np.sqrt((a * a).sum((1, 2)) * (b * b).sum((1, 2)))

        for name, sgn in (("offsets_as_read", 1.0), ("offsets_negated", -1.0)):
            sim = Simulation(n=src.n, vols=Volume(vol, pixel_size=src.pixel_size), angles=src.angles,
                             offsets=sgn * src.offsets, unique_filters=src.unique_filters,
                             filter_indices=src.filter_indices, amplitudes=np.ones(src.n),
                             pixel_size=src.pixel_size, dtype=np.float64)
            im = sim.clean_images[:].asnumpy().astype(np.float64)
            out[name] = {"corr_raw": corr(ours, im).tolist(), "corr_aspire_negated": corr(ours, -im).tolist()}
    elif kind == "project":
        from aspire.utils import Rotation
        from aspire.volume import Volume

        vol = Volume(np.load(task["volume"]).astype(np.float32))
        rots = Rotation.generate_random_rotations(task["n"], seed=0, dtype=np.float32).matrices
        vol.project(rots[:8])  # warm-up (NUFFT plans, imports)
        ts = []
        for _ in range(task["repeats"]):
            t0 = time.perf_counter()
            vol.project(rots)
            ts.append(time.perf_counter() - t0)
        out = {"seconds": min(ts), "images_per_s": task["n"] / min(ts)}
    elif kind == "simulate":
        from aspire.noise import WhiteNoiseAdder
        from aspire.operators import CTFFilter
        from aspire.source import Simulation
        from aspire.volume import Volume

        vol = Volume(np.load(task["volume"]).astype(np.float32), pixel_size=task["pixel_size_A"])
        dfs = np.linspace(1.0e4, 3.0e4, task["groups"])
        filters = [CTFFilter(defocus_u=d, defocus_v=d, voltage=300, Cs=2.7, alpha=0.1) for d in dfs]
        t0 = time.perf_counter()
        sim = Simulation(n=task["n"], vols=vol, unique_filters=filters, offsets=0, amplitudes=1,
                         noise_adder=WhiteNoiseAdder.from_snr(task["snr"]), seed=0)
        im = sim.images[:].asnumpy()
        dt = time.perf_counter() - t0
        out = {"seconds": dt, "images_per_s": task["n"] / dt, "shape": list(im.shape)}
    elif kind == "mean":
        from aspire.reconstruction import MeanEstimator
        from aspire.source import RelionSource

        t0 = time.perf_counter()
        src = RelionSource(task["star"])
        src = src.cache()  # read the stack once, as cryoprism's pass does
        est = MeanEstimator(src, batch_size=512)
        vol = est.estimate()
        dt = time.perf_counter() - t0
        # ASPIRE's CTF is −RELION's: its least-squares estimate from RELION-convention images is −V
        np.save(task["out"], -vol.asnumpy()[0].astype(np.float64))
        out = {"seconds": dt}
    else:
        raise SystemExit(f"unknown task {kind}")
    sys.stdout.write("ASPIRE_RESULT " + json.dumps(out) + "\n")


def run_aspire(task: dict, workdir: Path, timeout: int = 3000) -> dict:
    """Run one ASPIRE task in the benchmark venv; returns its JSON result or an error entry."""
    if not BENCH_PY.exists():
        return {"error": "no .bench-venv (python3 -m venv .bench-venv && .bench-venv/bin/pip install aspire)"}
    p = workdir / f"task_{task['kind']}.json"
    p.write_text(json.dumps(task))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    try:
        r = subprocess.run([str(BENCH_PY), str(Path(__file__).resolve()), "--aspire-worker", str(p)],
                           capture_output=True, text=True, timeout=timeout, env=env, cwd=str(workdir))
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    for line in r.stdout.splitlines()[::-1]:
        if line.startswith("ASPIRE_RESULT "):
            return json.loads(line[len("ASPIRE_RESULT "):])
    return {"error": (r.stderr or r.stdout)[-2000:]}


# =================================================================================================
# cryoprism side
# =================================================================================================

def _rss_child(code: str, timeout: int = 3000) -> dict:
    """Run ``code`` in a fresh interpreter; return its printed JSON plus peak RSS (GB)."""
    wrapper = code + "\nimport resource, json as _j\n" \
        "print('RESULT ' + _j.dumps({**RESULT, 'peak_rss_GB': resource.getrusage(resource.RUSAGE_SELF)" \
        ".ru_maxrss / 1e6}))\n"
    r = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout,
                       cwd=str(REPO))
    for line in r.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": r.stderr[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, a minute or two")
    ap.add_argument("--no-aspire", action="store_true", help="skip the ASPIRE comparisons")
    ap.add_argument("--no-scale", action="store_true", help="skip the n=20000, L=128 scale run")
    ap.add_argument("--aspire-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.aspire_worker:
        _aspire_worker(args.aspire_worker)
        return

    import numpy as np

    from cryoprism.ctf.model import CTFParams, ctf_2d
    from cryoprism.forward import backproject, gaussian_blob_volume, project, simulate_particles
    from cryoprism.fourier import downsample
    from cryoprism.geometry import uniform_rotations
    from cryoprism.io import ParticleStack, read_mrc, read_particles
    from cryoprism.metrics.fsc import fsc
    from cryoprism.reconstruct import reconstruct_mean

    quick = args.quick
    use_aspire = not args.no_aspire
    rng = np.random.default_rng(0)
    res: dict = {"benchmark": "forward", "quick": quick, "cpus": os.cpu_count()}
    work = Path(tempfile.mkdtemp(prefix="forward_bench_"))
    vol50s, px50s = read_mrc(REPO / "tests/data/maps/50S_states/vol_018.mrc")
    vol50s = vol50s.astype(np.float32)

    # ---------------------------------------------------------------- 1. analytic blob, adjoint
    L = 64
    c0, sig = np.array([3.0, -5.0, 2.0]), 4.0
    A = uniform_rotations(100, rng)
    org = rng.normal(0, 3, (100, 2))
    g = np.arange(L) - L // 2
    Y, X = np.meshgrid(g, g, indexing="ij")
    c = A @ c0
    c[:, :2] -= org
    ana = np.sqrt(2 * np.pi) * sig * np.exp(-((X - c[:, 0, None, None]) ** 2 + (Y - c[:, 1, None, None]) ** 2)
                                            / (2 * sig**2))
    blob = {}
    for dt in (np.float32, np.float64):
        img = project(gaussian_blob_volume(L, [c0], [sig], dtype=dt), A, org)
        blob[np.dtype(dt).name] = float(np.abs(img - ana).max() / np.abs(ana).max())
    x = rng.standard_normal((32, 32, 32))
    y = rng.standard_normal((50, 32, 32))
    A50 = uniform_rotations(50, rng)
    o50 = rng.normal(0, 2, (50, 2))
    cg = rng.standard_normal((50, 32, 32))
    lhs = float(np.vdot(project(x, A50, o50, cg), y))
    rhs = float(np.vdot(x, backproject(y, A50, o50, cg)))
    res["blob_projection_max_rel_error"] = blob
    res["blob_projection_pass_1e-4"] = max(blob.values()) <= 1e-4
    res["adjoint_rel_error_float64"] = abs(lhs - rhs) / abs(lhs)

    # ---------------------------------------------------------------- 2. convention vs ASPIRE
    n_conv = 50 if quick else 200
    simulate_particles(vol50s, n_conv, px50s, snr=None, shift_std_A=3 * px50s, rng=1,
                       out_star=work / "conv.star", out_mrcs=work / "conv.mrcs", n_defocus_groups=8,
                       progress=False, dtype=np.float64)
    np.save(work / "vol50s.npy", vol50s)
    if use_aspire:
        conv = run_aspire({"kind": "convention", "star": str(work / "conv.star"),
                           "stack": str(work / "conv.mrcs"), "volume": str(work / "vol50s.npy")}, work)
        if "error" not in conv:
            summ = {k: {kk: {"min": float(np.min(vv)), "median": float(np.median(vv))}
                        for kk, vv in v.items()} for k, v in conv.items()}
            best = summ["offsets_as_read"]["corr_aspire_negated"]["min"]
            res["convention"] = {
                "n_images": n_conv, "box": int(vol50s.shape[0]),
                "per_image_correlation": summ,
                "min_correlation_aspire_negated_offsets_as_read": best,
                "pass_0.99": best >= 0.99,
                "ctf_sign": "ASPIRE images multiplied by -1 (ASPIRE's CTF = -RELION's)",
                "offset_sign": ("ASPIRE applies RelionSource offsets (rlnOriginX/YAngst / pixel) with "
                                "RELION's meaning: image = shift(projection, -origin)"
                                if best > summ["offsets_negated"]["corr_aspire_negated"]["min"] else
                                "ASPIRE's offsets have the opposite sign of RELION's origins"),
            }
        else:
            res["convention"] = conv

    # ---------------------------------------------------------------- 3. real map from noiseless projections
    n_real = 2000 if quick else 5000
    Lr = vol50s.shape[0]
    Ar = uniform_rotations(n_real, rng)
    orr = rng.normal(0, 2, (n_real, 2))
    pr = CTFParams(rng.uniform(1e4, 3e4, n_real), rng.uniform(1e4, 3e4, n_real), rng.uniform(0, 180, n_real))
    imgs = project(vol50s, Ar, orr, ctf_2d(Lr, px50s, pr))
    t0 = time.perf_counter()
    src = ParticleStack.from_arrays(imgs, pixel_size_A=px50s, rotations=Ar, origins_A=orr * px50s, ctf=pr)
    rec = reconstruct_mean(src, tol=1e-5, maxiter=100, progress=False)
    t_real = time.perf_counter() - t0
    f = fsc(rec.volume, vol50s, px50s)
    k09 = int(np.floor(0.9 * (Lr // 2)))
    res["real_map_noiseless"] = {
        "map": "tests/data/maps/50S_states/vol_018.mrc", "box": Lr, "pixel_size_A": px50s, "n": n_real,
        "ctf": True, "shifts": True, "seconds": t_real, "cg_iterations": rec.iterations,
        "min_fsc_to_0.9_nyquist": float(np.min(f.curve[1:k09 + 1])),
        "pass_0.99": bool(np.min(f.curve[1:k09 + 1]) >= 0.99),
    }

    # ---------------------------------------------------------------- 4. projection throughput
    n_tp = 1000
    vol64 = vol50s
    Atp = uniform_rotations(n_tp, rng)
    project(vol64, Atp[:8])
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        project(vol64, Atp)
        ts.append(time.perf_counter() - t0)
    ours_proj = n_tp / min(ts)
    res["projection_throughput"] = {"n": n_tp, "box": 64, "dtype": "float32",
                                    "cryoprism_images_per_s": ours_proj}
    if use_aspire:
        a = run_aspire({"kind": "project", "volume": str(work / "vol50s.npy"), "n": n_tp, "repeats": 3}, work)
        res["projection_throughput"]["aspire"] = a
        if "images_per_s" in a:
            res["projection_throughput"]["speedup_vs_aspire"] = ours_proj / a["images_per_s"]
            res["projection_throughput"]["pass_2x"] = ours_proj / a["images_per_s"] >= 2

    # ---------------------------------------------------------------- 5. simulation throughput
    t0 = time.perf_counter()
    simulate_particles(vol64, n_tp, px50s, snr=0.1, n_defocus_groups=10, rng=2, progress=False)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulate_particles(vol64, n_tp, px50s, snr=0.1, n_defocus_groups=10, rng=2, progress=False,
                       out_star=work / "sim.star", out_mrcs=work / "sim.mrcs")
    t_sim_disk = time.perf_counter() - t0
    res["simulation_throughput"] = {"n": n_tp, "box": 64, "ctf": True, "snr": 0.1,
                                    "cryoprism_images_per_s": n_tp / t_sim,
                                    "cryoprism_to_star_mrcs_images_per_s": n_tp / t_sim_disk}
    if use_aspire:
        a = run_aspire({"kind": "simulate", "volume": str(work / "vol50s.npy"), "n": n_tp, "groups": 10,
                        "snr": 0.1, "pixel_size_A": px50s}, work)
        res["simulation_throughput"]["aspire"] = a
        if "images_per_s" in a:
            sp = (n_tp / t_sim) / a["images_per_s"]
            res["simulation_throughput"]["speedup_vs_aspire"] = sp
            res["simulation_throughput"]["pass_3x"] = sp >= 3

    # ---------------------------------------------------------------- 6. mean reconstruction vs ASPIRE
    n_mean, L_mean = 2000, 32
    v32, px32 = downsample(vol50s.astype(np.float64), L_mean, ndim=3, pixel_size_A=px50s)
    v32 = v32.astype(np.float32)
    simulate_particles(v32, n_mean, px32, snr=0.1, shift_std_A=0.0, n_defocus_groups=20, rng=3,
                       defocus_range_A=(1.0e4, 3.0e4), out_star=work / "mean.star",
                       out_mrcs=work / "mean.mrcs",
                       progress=False)
    t0 = time.perf_counter()
    stack = read_particles(work / "mean.star")
    mask_r = L_mean / 2 + 2  # a sphere slightly larger than the inscribed one: the box corners only
    rm = reconstruct_mean(stack, regularization="auto", mask_radius_px=mask_r, progress=False)
    t_mean = time.perf_counter() - t0
    f_ours = fsc(rm.volume, v32, px32).curve
    kk = int(np.floor(0.8 * (L_mean // 2)))
    mean_res = {"n": n_mean, "box": L_mean, "snr": 0.1, "ctf": True, "cryoprism_seconds": t_mean,
                "cryoprism_iterations": rm.iterations, "regularization": rm.info.get("regularization"),
                "cryoprism_mask_radius_px": mask_r,
                "fsc_vs_truth_cryoprism": f_ours[: L_mean // 2 + 1].tolist()}
    if use_aspire:
        a = run_aspire({"kind": "mean", "star": str(work / "mean.star"),
                        "out": str(work / "aspire_mean.npy")},
                       work)
        mean_res["aspire"] = a
        if "seconds" in a:
            va = np.load(work / "aspire_mean.npy")
            f_asp = fsc(va, v32, px32).curve
            mean_res["fsc_vs_truth_aspire"] = f_asp[: L_mean // 2 + 1].tolist()
            diff = f_ours[1:kk + 1] - f_asp[1:kk + 1]
            mean_res["fsc_difference_cryoprism_minus_aspire"] = diff.tolist()
            mean_res["min_fsc_difference_to_0.8_nyquist"] = float(diff.min())
            mean_res["shells_below_aspire"] = [int(k) + 1 for k in np.flatnonzero(diff < 0)]
            mean_res["pass_fsc_every_shell"] = bool((diff >= 0).all())
            mean_res["speedup_vs_aspire"] = a["seconds"] / t_mean
            mean_res["pass_3x"] = a["seconds"] / t_mean >= 3
    res["mean_reconstruction"] = mean_res

    # ---------------------------------------------------------------- 7. scale
    if not args.no_scale:
        n_s, L_s = (4000, 128) if quick else (20000, 128)
        v128, px128 = read_mrc(REPO / "tests/data/maps/emd_3488_hemoglobin.mrc")
        from cryoprism.fourier import pad as _pad

        v128 = _pad(v128.astype(np.float32), L_s, ndim=3)
        t0 = time.perf_counter()
        simulate_particles(v128, n_s, px128, snr=0.1, n_defocus_groups=20, rng=4, progress=False,
                           out_star=work / "scale.star", out_mrcs=work / "scale.mrcs")
        t_sim_s = time.perf_counter() - t0
        code = (
            "import time\nfrom cryoprism.io import read_particles\n"
            "from cryoprism.reconstruct import reconstruct_mean\n"
            f"t0 = time.perf_counter()\ns = read_particles({str(work / 'scale.star')!r})\n"
            f"r = reconstruct_mean(s, regularization='auto', mask_radius_px={L_s / 2 + 2}, progress=False)\n"
            "RESULT = {'seconds': time.perf_counter() - t0, 'iterations': r.iterations}\n")
        sc = _rss_child(code)
        res["scale"] = {"n": n_s, "box": L_s, "simulate_seconds": t_sim_s, "reconstruct": sc,
                        "pass_rss_below_6GB": bool(sc.get("peak_rss_GB", 99) < 6)}
        for p in ("scale.mrcs", "scale.star"):
            (work / p).unlink(missing_ok=True)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
