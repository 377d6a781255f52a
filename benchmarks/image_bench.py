"""Image/CTF benchmark: CTF estimation accuracy and speed, Fourier downsampling, alignment, against ASPIRE.

* CTF estimation on simulated micrographs (2048², smooth random texture convolved with a known
  astigmatic CTF, white noise; made here with numpy FFTs) and on the real micrograph
  ``tests/data/micrographs/fei_crop2048.mrc`` (0.8538 Å/px, 300 kV, Cs 2.7 mm, Q 0.1; reference
  fitted defocus ≈ 1.07 µm). Error = relative error of U and V (the larger of the two). ASPIRE's
  ``aspire.ctf.estimate_ctf`` runs on the same files (same band 30–5 Å, same 512² tiles).
* Downsampling: a stack of band-limited images (sums of cosines below the new Nyquist) Fourier-cropped
  256 → 128; error against the analytic samples; ASPIRE ``Image.downsample`` on the same stack.
* Translational alignment: 500 noisy 128² images shifted by known sub-pixel amounts; error in px.

ASPIRE runs in ``.bench-venv`` as a subprocess of this script (``--aspire-worker TASK.json``) in the
same run. Prints ONE JSON object.

    .venv/bin/python benchmarks/image_bench.py [--quick] [--no-aspire]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_PY = REPO / ".bench-venv" / "bin" / "python"
MIC = REPO / "tests" / "data" / "micrographs" / "fei_crop2048.mrc"
REAL = {"pixel_size_A": 0.8538, "voltage_kV": 300.0, "cs_mm": 2.7, "amp": 0.1, "reference_defocus_A": 10700.0}

CASES = [  # U, V, angle (deg), pixel size (Å), SNR, B (Å²)
    (15000.0, 13500.0, 30.0, 1.0, 0.1, 80.0),
    (8000.0, 7600.0, 120.0, 1.2, 0.05, 60.0),
    (25000.0, 24000.0, 75.0, 0.9, 0.1, 100.0),
    (6100.0, 4500.0, 143.0, 1.13, 0.07, 56.0),
    (11000.0, 10000.0, 10.0, 0.85, 0.02, 120.0),
    (18000.0, 17900.0, 60.0, 1.06, 0.05, 80.0),
]


# --------------------------------------------------------------------------------------------------
# ASPIRE side (inside .bench-venv; imports only aspire / numpy / mrcfile)


def _aspire_worker(task_path: str) -> None:
    import logging

    logging.disable(logging.WARNING)
    import numpy as np
    from aspire.ctf import estimate_ctf
    from aspire.image import Image

    task = json.loads(Path(task_path).read_text())
    out = {"ctf": []}
    for job in task["ctf"]:
        t0 = time.perf_counter()
        res = estimate_ctf(data_folder=job["folder"], pixel_size=job["pixel_size_A"], cs=job["cs_mm"],
                           amplitude_contrast=job["amp"], voltage=job["voltage_kV"], psd_size=512, g_min=30,
                           g_max=5, output_dir=job["out"], dtype=np.float64)
        r = list(res.values())[0]
        out["ctf"].append({"defocus_u_A": float(r["defocus_u"]), "defocus_v_A": float(r["defocus_v"]),
                           "angle_rad": float(r["defocus_ang"]), "seconds": time.perf_counter() - t0})
    x = np.load(task["ds_in"])
    t0 = time.perf_counter()
    y = Image(x).downsample(task["ds_box"]).asnumpy()
    out["downsample"] = {"seconds": time.perf_counter() - t0}
    np.save(task["ds_out"], y)
    print(json.dumps(out))


def run_aspire(task: dict, timeout: int = 3600) -> dict:
    if not BENCH_PY.exists():
        return {"error": "no .bench-venv (python3 -m venv .bench-venv && .bench-venv/bin/pip install aspire)"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(task, f)
    p = subprocess.run([str(BENCH_PY), __file__, "--aspire-worker", f.name], capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# cryoprism side


def simulate_micrograph(N, px, p, snr, seed):
    from cryoprism.ctf import ctf_2d

    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(N, d=px)
    s = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    tex = np.fft.fft2(rng.standard_normal((N, N))) / np.sqrt(1 + (s / 0.02) ** 2)
    img = np.fft.ifft2(tex * np.fft.ifftshift(ctf_2d(N, px, p))).real
    return (img / img.std() + rng.standard_normal((N, N)) / np.sqrt(snr) + 10.0).astype(np.float32)


def _cosines(L, waves, n):
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    base = [a * np.cos(2 * np.pi * (ky * yy + kx * xx) / L + ph) for a, (ky, kx), ph in waves]
    return np.stack([sum(b * (1 + 0.01 * i) ** j for j, b in enumerate(base)) for i in range(n)])


def _rel_err(u, v, tu, tv):
    u, v = max(u, v), min(u, v)
    return max(abs(u / tu - 1), abs(v / tv - 1))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="two simulated micrographs, small stacks")
    ap.add_argument("--no-aspire", action="store_true")
    ap.add_argument("--aspire-worker")
    a = ap.parse_args(argv)
    if a.aspire_worker:
        _aspire_worker(a.aspire_worker)
        return {}

    import mrcfile

    from cryoprism.ctf import CTFParams, estimate_ctf
    from cryoprism.fourier import downsample
    from cryoprism.image import align_translation, circular_mask, fourier_shift, gaussian_blur

    cases = CASES[:2] if a.quick else CASES
    tmp = Path(tempfile.mkdtemp(prefix="cryoprism-image-bench-"))
    result = {"benchmark": "image", "quick": a.quick, "ctf": {"simulated": [], "real": None}}
    jobs = []
    for i, (u, v, ang, px, snr, B) in enumerate(cases):
        p = CTFParams(u, v, ang, 300.0, 2.7, 0.1, bfactor_A2=B)
        m = simulate_micrograph(2048, px, p, snr, seed=100 + i)
        t0 = time.perf_counter()
        fit = estimate_ctf(m, px, 300.0, 2.7, 0.1)
        dt = time.perf_counter() - t0
        d = (fit.defocus_angle_deg - ang + 90) % 180 - 90
        result["ctf"]["simulated"].append({
            "truth": {"u": u, "v": v, "angle_deg": ang, "pixel_size_A": px, "snr": snr, "bfactor": B},
            "cryoprism": {"u": round(fit.defocus_u_A, 1), "v": round(fit.defocus_v_A, 1),
                          "angle_deg": round(fit.defocus_angle_deg, 2), "rel_err": _rel_err(
                              fit.defocus_u_A, fit.defocus_v_A, u, v), "angle_err_deg": abs(d),
                          "fit_resolution_A": round(fit.fit_resolution_A, 2), "seconds": round(dt, 3)}})
        folder = tmp / f"sim{i}"
        folder.mkdir()
        with mrcfile.new(folder / "mic.mrc") as f:
            f.set_data(m)
            f.voxel_size = px
        jobs.append({"folder": str(folder), "out": str(tmp / f"out{i}"), "pixel_size_A": px, "cs_mm": 2.7,
                     "amp": 0.1, "voltage_kV": 300.0})
    with mrcfile.open(MIC, permissive=True) as f:
        real = f.data.astype(np.float32)
    t0 = time.perf_counter()
    fit = estimate_ctf(real, REAL["pixel_size_A"], REAL["voltage_kV"], REAL["cs_mm"], REAL["amp"])
    dt = time.perf_counter() - t0
    mean = 0.5 * (fit.defocus_u_A + fit.defocus_v_A)
    result["ctf"]["real"] = {"file": "tests/data/micrographs/fei_crop2048.mrc",
                             "reference_defocus_A": REAL["reference_defocus_A"],
                             "cryoprism": {"u": round(fit.defocus_u_A, 1), "v": round(fit.defocus_v_A, 1),
                                           "angle_deg": round(fit.defocus_angle_deg, 2),
                                           "mean_rel_to_reference": mean / REAL["reference_defocus_A"] - 1,
                                           "fit_resolution_A": round(fit.fit_resolution_A, 2),
                                           "seconds": round(dt, 3)}}
    folder = tmp / "real"
    folder.mkdir()
    (folder / "mic.mrc").symlink_to(MIC)
    jobs.append({"folder": str(folder), "out": str(tmp / "out_real"), "pixel_size_A": REAL["pixel_size_A"],
                 "cs_mm": 2.7, "amp": 0.1, "voltage_kV": 300.0})

    # downsampling 256 → 128 of band-limited images
    n = 200 if a.quick else 1000
    waves = [(1.0, (3, -5), 0.3), (0.5, (-20, 11), 1.0), (0.3, (40, 7), -0.4), (2.0, (0, 0), 0.0)]
    x = _cosines(256, waves, n).astype(np.float32)
    expect = _cosines(128, waves, n)
    t0 = time.perf_counter()
    y, _ = downsample(x, 128)
    t_ds = time.perf_counter() - t0
    rel = float(np.abs(y - expect).max() / np.abs(expect).max())
    result["downsample"] = {"n": n, "box": [256, 128],
                            "cryoprism": {"max_rel_err": rel, "seconds": round(t_ds, 3)}}
    np.save(tmp / "ds_in.npy", x)

    # translational alignment
    rng = np.random.default_rng(0)
    L, na = 128, (100 if a.quick else 500)
    ref = gaussian_blur(rng.standard_normal((L, L)), 2.0) * circular_mask(L, 45, 5)
    t_true = rng.uniform(-8, 8, size=(na, 2))
    imgs = fourier_shift(np.broadcast_to(ref, (na, L, L)), t_true) + 0.5 * ref.std() * rng.standard_normal(
        (na, L, L))
    t0 = time.perf_counter()
    al = align_translation(imgs, ref)
    t_al = time.perf_counter() - t0
    err = np.hypot(*(al.shifts_px - t_true).T)
    result["align_translation"] = {"n": na, "box": L, "noise_sigma_over_signal": 0.5,
                                   "median_err_px": float(np.median(err)), "max_err_px": float(err.max()),
                                   "seconds": round(t_al, 3)}

    if not a.no_aspire:
        asp = run_aspire({"ctf": jobs, "ds_in": str(tmp / "ds_in.npy"), "ds_box": 128,
                          "ds_out": str(tmp / "ds_out.npy")})
        if "error" in asp:
            result["aspire"] = asp
        else:
            for rec, r in zip(result["ctf"]["simulated"], asp["ctf"]):
                t = rec["truth"]
                rec["aspire"] = {"u": round(r["defocus_u_A"], 1), "v": round(r["defocus_v_A"], 1),
                                 "rel_err": _rel_err(r["defocus_u_A"], r["defocus_v_A"], t["u"], t["v"]),
                                 "seconds": round(r["seconds"], 3)}
            r = asp["ctf"][-1]
            result["ctf"]["real"]["aspire"] = {
                "u": round(r["defocus_u_A"], 1), "v": round(r["defocus_v_A"], 1),
                "mean_rel_to_reference": (0.5 * (r["defocus_u_A"] + r["defocus_v_A"])
                                          / REAL["reference_defocus_A"] - 1),
                "seconds": round(r["seconds"], 3)}
            ya = np.load(tmp / "ds_out.npy")
            result["downsample"]["aspire"] = {"max_rel_err": float(np.abs(ya - expect).max()
                                                                   / np.abs(expect).max()),
                                              "seconds": round(asp["downsample"]["seconds"], 3)}
            result["downsample"]["speed_ratio_aspire_over_cryoprism"] = (
                asp["downsample"]["seconds"] / max(t_ds, 1e-9))
            ts_c = [s["cryoprism"]["seconds"] for s in result["ctf"]["simulated"]]
            ts_a = [s["aspire"]["seconds"] for s in result["ctf"]["simulated"]]
            result["ctf"]["speed_ratio_aspire_over_cryoprism"] = float(np.median(ts_a) / np.median(ts_c))
    sim = result["ctf"]["simulated"]
    result["ctf"]["summary"] = {
        "cryoprism_max_rel_err": max(s["cryoprism"]["rel_err"] for s in sim),
        "cryoprism_median_seconds": float(np.median([s["cryoprism"]["seconds"] for s in sim])),
        "aspire_max_rel_err": (max(s["aspire"]["rel_err"] for s in sim) if all("aspire" in s for s in sim)
                               else None),
        "target_rel_err": 0.02, "target_real_rel_err": 0.10}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
