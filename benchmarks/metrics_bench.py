"""Metrics benchmark: FSC accuracy/speed and volume alignment accuracy/speed, against ASPIRE.

* FSC: two noisy copies of EMD-3488 (haemoglobin, 100³, 1.05 Å/px, white noise σ = 0.06). Our curve is
  checked against the prediction S/(S+N) computed here from the clean map; resolution at 0.143 is
  compared with ASPIRE's ``Volume.fsc`` and with the predicted crossing; time per FSC for both.
* Alignment: the 50S map (vol_018, downsampled to ``box``) moved by Haar-random rotations. Two sets:
  (a) rotation + shift + hand (only cryoprism handles these), (b) rotation only, run by both cryoprism
  ``align_volumes`` and ASPIRE ``align_BO`` (rotation only, Bayesian optimisation). Error = geodesic
  angle to the known rotation; ASPIRE's returned matrix is compared under the four fixed conventions
  (R, Rᵀ, and both with x↔z axis order) and the best convention (by median) is reported.

ASPIRE runs in ``.bench-venv`` as a subprocess of this script (``--aspire-worker TASK.json``) in the
same run. Prints ONE JSON object.

    .venv/bin/python benchmarks/metrics_bench.py [--quick] [--no-aspire]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_PY = REPO / ".bench-venv" / "bin" / "python"
HB = REPO / "tests" / "data" / "maps" / "emd_3488_hemoglobin.mrc"
S50 = REPO / "tests" / "data" / "maps" / "50S_states" / "vol_018.mrc"


# --------------------------------------------------------------------------------------------------
# ASPIRE side (inside .bench-venv; imports only aspire / numpy)


def _aspire_worker(task_path: str) -> None:
    import numpy as np
    from aspire.utils import align_BO
    from aspire.volume import Volume

    task = json.loads(Path(task_path).read_text())
    out = {}
    a = np.load(task["fsc_a"])
    b = np.load(task["fsc_b"])
    va = Volume(a.astype(np.float64), pixel_size=task["pixel_size_A"])
    vb = Volume(b.astype(np.float64), pixel_size=task["pixel_size_A"])
    res, curve = va.fsc(vb, cutoff=0.143)
    t = []
    for _ in range(task["repeats"]):
        t0 = time.perf_counter()
        va.fsc(vb, cutoff=0.143)
        t.append(time.perf_counter() - t0)
    out["fsc"] = {"resolution_0143_A": float(np.ravel(res)[0]), "curve": np.ravel(curve).tolist(),
                  "seconds": float(np.median(t))}
    ref = np.load(task["align_ref"])
    rots, secs = [], []
    for path in task["align_given"]:
        g = np.load(path)
        t0 = time.perf_counter()
        R = align_BO(Volume(ref.astype(np.float32)), Volume(g.astype(np.float32)), seed=0)
        secs.append(time.perf_counter() - t0)
        R = R[1] if isinstance(R, tuple) else R  # (R_init, R_refined) with refinement
        rots.append(np.asarray(R, dtype=np.float64).reshape(3, 3).tolist())
    out["align"] = {"rotations": rots, "seconds": secs}
    print(json.dumps(out))


def run_aspire(task: dict, timeout: int = 3000) -> dict:
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


def _transform(vol, Q, t_xyz, flip):
    """out(p) = vol(H Qᵀ (p − t)) with scipy's affine_transform (independent of cryoprism)."""
    from scipy import ndimage

    L = vol.shape[0]
    c = np.full(3, L // 2, dtype=float)
    H = np.diag([1.0, 1.0, -1.0]) if flip else np.eye(3)
    P = np.eye(3)[::-1]
    mat = P @ (H @ Q.T) @ P
    return ndimage.affine_transform(vol, mat, offset=c - mat @ (c + np.asarray(t_xyz)[::-1]), order=3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-aspire", action="store_true")
    ap.add_argument("--aspire-worker")
    args = ap.parse_args()
    if args.aspire_worker:
        _aspire_worker(args.aspire_worker)
        return
    warnings.simplefilter("ignore")
    from cryoprism.fourier import downsample
    from cryoprism.geometry import angular_distance_deg, uniform_rotations
    from cryoprism.io import read_mrc
    from cryoprism.metrics import align_volumes, fsc, resolution_at

    rng = np.random.default_rng(2024)
    out = {"quick": args.quick}
    work = Path(tempfile.mkdtemp(prefix="metrics_bench_"))

    # ---------------- FSC
    v, px = read_mrc(HB)
    v = v.astype(np.float64)
    L = v.shape[0]
    sigma = 0.06
    a = v + sigma * rng.standard_normal(v.shape)
    b = v + sigma * rng.standard_normal(v.shape)
    repeats = 3 if args.quick else 10
    r = fsc(a, b, px)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fsc(a, b, px)
        t.append(time.perf_counter() - t0)
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v)))
    k = np.meshgrid(*[np.arange(L) - L // 2] * 3, indexing="ij")
    kr = np.rint(np.sqrt(sum(g.astype(float) ** 2 for g in k))).astype(int).ravel()
    S = np.bincount(kr, (np.abs(F) ** 2).ravel())[: L // 2 + 1]
    n = np.bincount(kr)[: L // 2 + 1]
    expect = S / (S + n * sigma ** 2 * L ** 3)
    sig = 1 / np.sqrt(n[3:] / 2)
    j = np.nonzero(expect[1:] < 0.143)[0][0] + 1
    s_pred = (j - 1 + (expect[j - 1] - 0.143) / (expect[j - 1] - expect[j])) / (L * px)
    out["fsc"] = {
        "map": "EMD-3488 100³ 1.05 Å/px + 2 × white noise σ=0.06",
        "resolution_0143_A": resolution_at(r, 0.143), "resolution_0143_predicted_A": 1 / s_pred,
        "resolution_05_A": resolution_at(r, 0.5),
        "max_dev_from_prediction_sigmas": float(np.max(np.abs(r.curve[3:] - expect[3:]) / sig)),
        "rms_dev_from_prediction": float(np.sqrt(np.mean((r.curve[3:] - expect[3:]) ** 2))),
        "seconds": float(np.median(t)),
    }

    # ---------------- alignment
    box = 32 if args.quick else 64
    n_full = 4 if args.quick else 8
    n_rot = 2 if args.quick else 4
    s50, _ = read_mrc(S50)
    s50 = s50.astype(np.float64)
    if box < s50.shape[0]:
        s50 = downsample(s50, box, ndim=3)[0]
    full = {"err_deg": [], "shift_err_px": [], "hand_ok": [], "seconds": []}
    for i in range(n_full):
        Q = uniform_rotations(1, rng)[0]
        t = rng.uniform(-3, 3, 3)
        flip = bool(i % 2)
        tgt = _transform(s50, Q, t, flip)
        t0 = time.perf_counter()
        res = align_volumes(tgt, s50)
        full["seconds"].append(time.perf_counter() - t0)
        full["err_deg"].append(float(angular_distance_deg(res.rotation, Q)))
        full["shift_err_px"].append(float(np.linalg.norm(res.shift_px - t)))
        full["hand_ok"].append(res.flipped == flip)
    out["align_rotation_shift_hand"] = {
        "box": box, "trials": n_full, "median_err_deg": float(np.median(full["err_deg"])),
        "max_err_deg": float(np.max(full["err_deg"])),
        "max_shift_err_px": float(np.max(full["shift_err_px"])),
        "hand_correct": int(sum(full["hand_ok"])), "median_seconds": float(np.median(full["seconds"])),
    }

    rot = {"err_deg": [], "seconds": []}
    Qs, given = [], []
    for i in range(n_rot):
        Q = uniform_rotations(1, rng)[0]
        g = _transform(s50, Q.T, np.zeros(3), False)  # g = s50 rotated by Qᵀ; aligning g onto s50 gives Q
        Qs.append(Q)
        p = work / f"given_{i}.npy"
        np.save(p, g)
        given.append(str(p))
        t0 = time.perf_counter()
        res = align_volumes(s50, g)
        rot["seconds"].append(time.perf_counter() - t0)
        rot["err_deg"].append(float(angular_distance_deg(res.rotation, Q)))
    out["align_rotation_only"] = {
        "box": box, "trials": n_rot,
        "cryoprism": {"median_err_deg": float(np.median(rot["err_deg"])),
                      "max_err_deg": float(np.max(rot["err_deg"])),
                      "median_seconds": float(np.median(rot["seconds"]))},
    }

    if not args.no_aspire:
        np.save(work / "a.npy", a)
        np.save(work / "b.npy", b)
        np.save(work / "ref.npy", s50)
        asp = run_aspire({"fsc_a": str(work / "a.npy"), "fsc_b": str(work / "b.npy"), "pixel_size_A": px,
                          "repeats": repeats, "align_ref": str(work / "ref.npy"), "align_given": given})
        if "error" in asp:
            out["aspire"] = asp
        else:
            out["fsc"]["aspire_resolution_0143_A"] = asp["fsc"]["resolution_0143_A"]
            out["fsc"]["aspire_seconds"] = asp["fsc"]["seconds"]
            out["fsc"]["speed_ratio_aspire_over_ours"] = asp["fsc"]["seconds"] / out["fsc"]["seconds"]
            P = np.eye(3)[::-1]
            conv = {"R": lambda R: R, "R^T": lambda R: R.T, "PRP": lambda R: P @ R @ P,
                    "PR^TP": lambda R: P @ R.T @ P}
            errs = {name: [float(angular_distance_deg(f(np.array(R)), Q)) for R, Q in
                           zip(asp["align"]["rotations"], Qs)] for name, f in conv.items()}
            best = min(errs, key=lambda c: np.median(errs[c]))
            sec = float(np.median(asp["align"]["seconds"]))
            out["align_rotation_only"]["aspire_align_BO"] = {
                "convention": best, "median_err_deg": float(np.median(errs[best])),
                "max_err_deg": float(np.max(errs[best])), "median_seconds": sec,
            }
            out["align_rotation_only"]["time_ratio_aspire_over_ours"] = (
                sec / out["align_rotation_only"]["cryoprism"]["median_seconds"])
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
