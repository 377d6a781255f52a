"""Heterogeneity side by side with RECOVAR and cryoDRGN on the 2- and 4-state 50S sets (CPU, one run).

Data (the sets of ``benchmarks/heterogeneity_bench.py``): n images of 64 × 64 (6.55 Å/px) from the
first two 50S states (vol_018, vol_287) or four (those, vol_383 and the synthetic fourth state of
``heterogeneity_bench.fourth_state``), uniform random views, 7 CTF defocus groups 1.5–2.5 µm, white
noise at SNR_het = E‖M_s(X_s − μ)‖² / E‖noise‖² (``heterogeneity_bench.simulate``). cryoprism writes
them to a RELION 3.1 STAR + MRCS with the true poses and CTF and *no* class column (the truth is kept
in ``truth.npy``). Every program reads that same STAR, in its own process:

* cryoprism: ``cryoprism heterogeneity STAR -o OUT --json`` at its defaults (``auto``) and with
  ``--classes k`` (the same information the peers get; the run the time ratio uses); the labels are
  ``rlnClassNumber`` of ``OUT/classes.star``.
* RECOVAR (Gilles & Singer 2024; its own venv, JAX on CPU): ``recovar pipeline`` on the STAR with the
  poses and CTF, then its latent coordinates at ``zdim`` (4 by default) clustered by k-means and by a
  Gaussian mixture with the true k (scikit-learn, in this process).
* cryoDRGN (Zhong et al. 2021; its own venv, torch CPU): ``cryodrgn downsample`` to ``--drgn-box``,
  ``parse_pose_star`` / ``parse_ctf_star``, ``train_vae`` with the poses fixed (zdim 8, a small
  network and few epochs to fit the CPU budget: ``--drgn-*``), then the same k-means / mixture on the
  final ``z``, and on each epoch's ``z`` beside the epoch's losses from ``run.log`` (is it still
  learning?).

Accuracy: best permutation of the labels against the truth (``matched_accuracy``), with the confusion
matrix (rows the true states); each set carries a SHA-256 prefix of its images and truth. Time: wall and
CPU (``RUSAGE_CHILDREN`` user + system of the subprocesses, which waited for their own children), each
program alone, one after the other, nice'd, with 2 threads (OMP_NUM_THREADS, XLA_FLAGS,
torch.set_num_threads via the env). Prints one JSON object.

Set-up of the peers' venvs (ignored folders in the repository root), also ``--setup``::

    python3 -m venv .bench-venv-recovar && .bench-venv-recovar/bin/pip install recovar
    python3 -m venv .bench-venv-cryodrgn && .bench-venv-cryodrgn/bin/pip install torch==2.13.0 \\
        && .bench-venv-cryodrgn/bin/pip install cryodrgn

    python benchmarks/heterogeneity_peers_bench.py [--quick] [--n 2000] [--sets 2,4] [--snrs 0.01]

``--programs`` runs a subset (cryoprism, cryoprism_k, cryoprism_auto, recovar, cryodrgn); ``--reuse``
keeps the sets and the runs recorded in ``--work`` (``NAME.json`` beside each log) and redoes only the
clustering and the JSON, so runs can be made in separate processes and assembled afterwards. A run
stopped at ``--limit-s`` is recorded with its error and times; cryoDRGN's is then scored on the last
epoch it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
RECOVAR_VENV = ROOT / ".bench-venv-recovar"
DRGN_VENV = ROOT / ".bench-venv-cryodrgn"
SETUP = [
    [sys.executable, "-m", "venv", str(RECOVAR_VENV)],
    [str(RECOVAR_VENV / "bin" / "pip"), "install", "recovar"],
    [sys.executable, "-m", "venv", str(DRGN_VENV)],
    [str(DRGN_VENV / "bin" / "pip"), "install", "torch==2.13.0"],
    [str(DRGN_VENV / "bin" / "pip"), "install", "cryodrgn"],
]
THREADS = 2
REUSE = False  # --reuse: keep the finished runs' outputs and records in --work, redo only the clustering


def peer_env(threads: int = THREADS) -> dict:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads),
        "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}",
        "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg",
    })
    return env


def nice_prefix() -> list[str]:
    """``nice -n`` up to niceness 10 (nothing when this process already runs at 10 or more)."""
    now = os.nice(0)
    return ["nice", "-n", str(10 - now)] if now < 10 else []


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmds: list[list[str]], log: Path, limit_s: float, env: dict | None = None, cwd=None) -> dict:
    """Run ``cmds`` one after the other (nice'd); wall and children's CPU seconds; stop at the first
    failure, reporting the command and the tail of its output. With ``REUSE`` the record of a run that
    finished or stopped (``log`` with ``.json``) is read instead of running again."""
    record = log.with_suffix(".json")
    if REUSE and record.exists():
        return json.loads(record.read_text())
    r = _timed(cmds, log, limit_s, env, cwd)
    record.write_text(json.dumps(r))
    return r


def _timed(cmds, log, limit_s, env, cwd) -> dict:
    t0, c0 = time.perf_counter(), child_cpu()
    steps = []
    with open(log, "a") as fh:
        for cmd in cmds:
            s0, sc0 = time.perf_counter(), child_cpu()
            left = limit_s - (s0 - t0)
            fh.write("$ " + " ".join(map(str, cmd)) + "\n")
            fh.flush()
            try:
                p = subprocess.run([*nice_prefix(), *map(str, cmd)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env or peer_env(), cwd=cwd,
                                   timeout=max(left, 1.0))
            except subprocess.TimeoutExpired as e:
                out = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
                fh.write(out)
                return {"error": f"timed out after {limit_s:.0f} s in: {Path(str(cmd[0])).name} {cmd[1]}",
                        "tail": out[-1500:], "seconds": round(time.perf_counter() - t0, 1),
                        "cpu_seconds": round(child_cpu() - c0, 1), "steps": steps}
            fh.write(p.stdout)
            steps.append({"cmd": Path(str(cmd[0])).name + " " + " ".join(map(str, cmd[1:2])),
                          "seconds": round(time.perf_counter() - s0, 1),
                          "cpu_seconds": round(child_cpu() - sc0, 1)})
            if p.returncode != 0:
                return {"error": f"exit {p.returncode} in: {Path(str(cmd[0])).name} {cmd[1]}",
                        "tail": p.stdout[-3000:], "seconds": round(time.perf_counter() - t0, 1),
                        "cpu_seconds": round(child_cpu() - c0, 1), "steps": steps, "stdout": p.stdout}
            last = p.stdout
    return {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(child_cpu() - c0, 1),
            "steps": steps, "stdout": last}


# ---------------------------------------------------------------------------------------------- data

def make_set(k: int, n: int, snr_het: float, folder: Path, seed: int = 0) -> dict:
    """Simulate the k-state set and write STAR + MRCS (poses, CTF, no class column) and truth.npy."""
    if REUSE and (folder / "truth.npy").exists():
        oracle = json.loads((folder / "oracle.json").read_text()) if (folder / "oracle.json").exists() else {}
        return {"star": folder / "particles.star", "labels": np.load(folder / "truth.npy"),
                "pixel_size_A": 6.55, "box": 64, "noise_var": None, **oracle, **fingerprint(folder)}
    from heterogeneity_bench import fourth_state, load_states, oracle_accuracy, simulate

    from cryoprism.io import ParticleStack
    from cryoprism.io.particles import write_particles

    vols3, px = load_states(3)
    vols = np.concatenate([vols3, fourth_state(vols3)[None]])[:k] if k == 4 else vols3[:k]
    imgs, rot, ctf, lab, sigma2, clean = simulate(vols, px, n, snr_het, seed)
    oracle = {"oracle_accuracy_nres32": oracle_accuracy(imgs, clean, lab, 32)}
    del clean
    (folder / "oracle.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "oracle.json").write_text(json.dumps(oracle))
    folder.mkdir(parents=True, exist_ok=True)
    src = ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, ctf=ctf)
    write_particles(folder / "particles.star", folder / "particles.mrcs", src)
    np.save(folder / "truth.npy", lab)
    return {"star": folder / "particles.star", "labels": lab, "pixel_size_A": px, "box": imgs.shape[-1],
            "noise_var": sigma2, **oracle, **fingerprint(folder)}


def fingerprint(folder: Path) -> dict:
    """SHA-256 (first 16 hex digits) of the images and of the truth, to tell identical sets apart."""
    import hashlib

    out = {}
    for key, name in (("sha256_images", "particles.mrcs"), ("sha256_truth", "truth.npy")):
        h = hashlib.sha256()
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        out[key] = h.hexdigest()[:16]
    return out


def cluster(z: np.ndarray, k: int, truth: np.ndarray, seed: int = 0) -> dict:
    """k-means and a full-covariance Gaussian mixture with the true k on latent coordinates."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from cryoprism.heterogeneity.classify import matched_accuracy

    z = np.asarray(z, np.float64).reshape(len(truth), -1)
    km = KMeans(k, n_init=10, random_state=seed).fit_predict(z)
    gm = GaussianMixture(k, covariance_type="full", n_init=5, random_state=seed).fit(z).predict(z)
    a_km, a_gm = matched_accuracy(truth, km), matched_accuracy(truth, gm)
    return {"accuracy_kmeans": a_km, "accuracy_gmm": a_gm, "accuracy": max(a_km, a_gm), "zdim": z.shape[1],
            "confusion": confusion(truth, gm if a_gm >= a_km else km)}


def confusion(truth: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """Counts: rows the true states, columns the labels found (in their own numbering)."""
    t, c = np.unique(truth, return_inverse=True)[1], np.unique(labels, return_inverse=True)[1]
    m = np.zeros((t.max() + 1, c.max() + 1), int)
    np.add.at(m, (t, c), 1)
    return m.tolist()


# ------------------------------------------------------------------------------------------ programs

def run_cryoprism(data: dict, k: int | None, work: Path, limit_s: float) -> dict:
    from cryoprism.heterogeneity.classify import matched_accuracy
    from cryoprism.io import read_particles

    out = work / ("cryoprism_auto" if k is None else f"cryoprism_k{k}")
    cmd = [ROOT / ".venv" / "bin" / "cryoprism", "heterogeneity", data["star"], "-o", out, "--json"]
    if k is not None:
        cmd += ["--classes", str(k)]
    r = timed([cmd], work / f"{out.name}.log", limit_s, env=peer_env())
    if "error" in r:
        r.pop("stdout", None)
        return r
    summary = json.loads(r.pop("stdout").strip().splitlines()[-1])
    lab = read_particles(out / "classes.star").table["rlnClassNumber"].to_numpy().astype(int)
    r.update({"classes": "auto" if k is None else k, "states_found": summary.get("states"),
              "n_res": summary.get("n_res"), "accuracy": matched_accuracy(data["labels"], lab),
              "state_test": summary.get("state_test"), "p_values": summary.get("p_values"),
              "states_from_eigenvalues": summary.get("states_from_eigenvalues"),
              "states_from_bic": summary.get("states_from_bic"), "states_from_gap": summary.get("states_from_gap"),
              "eigenvalues": summary.get("eigenvalues", [])[:6], "gap_ratios": summary.get("gap_ratios", [])[:3],
              "class_sizes": summary.get("class_sizes"), "confusion": confusion(data["labels"], lab)})
    return r


def run_recovar(data: dict, k: int, work: Path, limit_s: float, zdim: int, box: int) -> dict:
    py = RECOVAR_VENV / "bin" / "python"
    if not py.exists():
        return {"error": f"not installed: {RECOVAR_VENV} (run --setup)"}
    out = work / "recovar"
    cmd = [RECOVAR_VENV / "bin" / "recovar", "pipeline", data["star"], "-o", out, "--zdim", str(zdim),
           "--mask", "from_halfmaps", "--accept-cpu"]
    cmd += ["--no-downsample"] if box >= data["box"] else ["--downsample", str(box)]
    r = timed([cmd], work / "recovar.log", limit_s)
    r.pop("stdout", None)
    r["settings"] = {"zdim": zdim, "box": box,
                     "command": " ".join(["recovar pipeline STAR -o OUT", *map(str, cmd[5:])])}
    if "error" in r:
        return r
    try:
        z = load_recovar_latents(out, zdim)
    except subprocess.CalledProcessError as e:
        r["error"] = "reading the latent coordinates failed: " + e.stderr[-1500:]
        return r
    r.update(cluster(z, k, data["labels"]))
    return r


def load_recovar_latents(out: Path, zdim: int) -> np.ndarray:
    """The per-image latent coordinates at ``zdim`` written by ``recovar pipeline``."""
    script = ("import sys, numpy as np; from recovar.output.output import PipelineOutput; "
              "po = PipelineOutput(sys.argv[1]); "
              "np.save(sys.argv[3], np.asarray(po.get_embedding_component('latent_coords', int(sys.argv[2]))))")
    dest = out / f"z{zdim}.npy"
    subprocess.run([RECOVAR_VENV / "bin" / "python", "-c", script, out, str(zdim), dest], check=True,
                   env=peer_env(), capture_output=True, text=True)
    return np.load(dest)


def run_cryodrgn(data: dict, k: int, work: Path, limit_s: float, box: int, zdim: int, epochs: int,
                 enc: tuple[int, int], dec: tuple[int, int], batch: int) -> dict:
    exe = DRGN_VENV / "bin" / "cryodrgn"
    if not exe.exists():
        return {"error": f"not installed: {DRGN_VENV} (run --setup)"}
    out = work / "cryodrgn"
    out.mkdir(exist_ok=True)
    star, px = data["star"], data["pixel_size_A"]
    D = data["box"]
    mrcs = out / f"particles.{box}.mrcs"
    cmds = []
    if box != D:
        cmds.append([exe, "downsample", star, "-D", str(box), "-o", mrcs, "--datadir", star.parent])
    particles = mrcs if box != D else star
    cmds += [
        [exe, "parse_pose_star", star, "-o", out / "pose.pkl", "-D", str(D), "--Apix", str(px)],
        [exe, "parse_ctf_star", star, "-o", out / "ctf.pkl", "-D", str(D), "--Apix", str(px)],
        [exe, "train_vae", particles, "--poses", out / "pose.pkl", "--ctf", out / "ctf.pkl",
         "--zdim", str(zdim), "-n", str(epochs), "-b", str(batch),
         "--enc-dim", str(enc[0]), "--enc-layers", str(enc[1]),
         "--dec-dim", str(dec[0]), "--dec-layers", str(dec[1]), "-o", out / "train", "--seed", "0", "--no-analysis"],
    ]
    if box == D:
        cmds[-1] += ["--datadir", str(star.parent)]
    r = timed(cmds, work / "cryodrgn.log", limit_s)
    r.pop("stdout", None)
    r["settings"] = {"box": box, "zdim": zdim, "epochs": epochs, "enc": list(enc), "dec": list(dec),
                     "batch": batch}
    final = out / "train" / "z.pkl"  # the last epoch's z
    done = sorted(((int(p.stem.split(".")[1]), p) for p in (out / "train").glob("z.*.pkl")
                   if p.stem.split(".")[1].isdigit()), key=lambda t: t[0])  # z.EPOCH.pkl, 1-based
    if "error" in r or not final.exists():
        # stopped at the time limit: the z of the last epoch it finished, if any
        if not done:
            return r
        r["epochs_completed"] = done[-1][0]
        final = done[-1][1]
    else:
        r["epochs_completed"] = epochs
    with open(final, "rb") as fh:
        z = pickle.load(fh)
    r.update(cluster(z, k, data["labels"]))
    r["loss_per_epoch"] = drgn_losses(out / "train" / "run.log")
    acc = {}
    for epoch, path in done:
        with open(path, "rb") as fh:
            acc[epoch] = cluster(pickle.load(fh), k, data["labels"])["accuracy"]
    r["accuracy_per_epoch"] = acc
    return r


def drgn_losses(log: Path) -> dict:
    """The epoch's average losses from cryoDRGN's ``run.log`` ("====> Epoch: N Average gen loss = …")."""
    import re

    out = {}
    if not log.exists():
        return out
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"Epoch: (\d+) Average gen loss = ([-+.\deE]+), KLD = ([-+.\deE]+), "
                      r"total loss = ([-+.\deE]+)", line)
        if m:
            out[int(m.group(1))] = {"gen": float(m.group(2)), "kld": float(m.group(3)),
                                    "total": float(m.group(4))}
    return out


# ---------------------------------------------------------------------------------------------- main

def run_set(k: int, n: int, snr: float, work: Path, args) -> dict:
    t0 = time.perf_counter()
    data = make_set(k, n, snr, work, seed=args.seed)
    res = {"states": k, "n": n, "L": data["box"], "snr_het": snr, "defocus_groups": 7,
           "oracle_accuracy_nres32": data.get("oracle_accuracy_nres32"),
           "sha256_images": data.get("sha256_images"), "sha256_truth": data.get("sha256_truth"),
           "simulate_seconds": round(time.perf_counter() - t0, 1)}
    for prog in [p.strip() for p in args.programs.split(",")]:
        if prog in ("cryoprism", "cryoprism_k"):
            res["cryoprism_k"] = run_cryoprism(data, k, work, args.limit_s)
        if prog in ("cryoprism", "cryoprism_auto"):
            res["cryoprism_auto"] = run_cryoprism(data, None, work, args.limit_s)
        if prog == "recovar":
            res["recovar"] = run_recovar(data, k, work, args.limit_s, args.recovar_zdim, args.recovar_box)
        elif prog == "cryodrgn":
            res["cryodrgn"] = run_cryodrgn(data, k, work, args.limit_s, args.drgn_box, args.drgn_zdim,
                                           args.drgn_epochs, tuple(args.drgn_enc), tuple(args.drgn_dec),
                                           args.drgn_batch)
        print(json.dumps(res), file=sys.stderr, flush=True)
    ck = res.get("cryoprism_k", {})
    for peer in ("recovar", "cryodrgn"):
        p = res.get(peer, {})
        if "accuracy" in ck and "accuracy" in p:
            res[f"accuracy_diff_vs_{peer}"] = round(ck["accuracy"] - p["accuracy"], 4)
            res[f"speedup_wall_vs_{peer}"] = round(p["seconds"] / ck["seconds"], 1)
            res[f"speedup_cpu_vs_{peer}"] = round(p["cpu_seconds"] / ck["cpu_seconds"], 1)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help="create the peers' venvs and exit")
    ap.add_argument("--quick", action="store_true", help="n = 1000, 2 states, 1 epoch")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--sets", default="2,4", help="numbers of states")
    ap.add_argument("--snrs", default="0.01", help="SNR_het values")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--programs", default="cryoprism,cryodrgn,recovar")
    ap.add_argument("--limit-s", type=float, default=3000.0, help="per program and set")
    ap.add_argument("--work", default=str(ROOT / "bench_out" / "peers"), help="folder for the sets and outputs")
    ap.add_argument("--recovar-zdim", type=int, default=4)
    ap.add_argument("--recovar-box", type=int, default=32, help="recovar --downsample (64: none)")
    ap.add_argument("--drgn-box", type=int, default=32)
    ap.add_argument("--drgn-zdim", type=int, default=8)
    ap.add_argument("--drgn-epochs", type=int, default=8)
    ap.add_argument("--drgn-enc", type=int, nargs=2, default=[256, 3], metavar=("DIM", "LAYERS"))
    ap.add_argument("--drgn-dec", type=int, nargs=2, default=[256, 3], metavar=("DIM", "LAYERS"))
    ap.add_argument("--drgn-batch", type=int, default=16)
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the sets and finished runs in --work (only the clustering is redone)")
    args = ap.parse_args(argv)
    global REUSE
    REUSE = args.reuse
    if args.setup:
        for cmd in SETUP:
            print("$", " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
        return
    if args.quick:
        args.n, args.sets, args.drgn_epochs = 1000, "2", 1
    out = {"benchmark": "heterogeneity_peers", "cores": len(os.sched_getaffinity(0)), "threads": THREADS,
           "load_average_start": os.getloadavg()[0], "versions": versions(), "sets": {}}
    t0 = time.perf_counter()
    for snr in map(float, args.snrs.split(",")):
        for k in map(int, args.sets.split(",")):
            name = f"{k}_states_snr{snr}_n{args.n}"
            out["sets"][name] = run_set(k, args.n, snr, Path(args.work) / name, args)
    out["load_average_end"] = os.getloadavg()[0]
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


def versions() -> dict:
    v = {}
    for name, venv, pkg in (("recovar", RECOVAR_VENV, "recovar"), ("cryodrgn", DRGN_VENV, "cryodrgn"),
                            ("torch", DRGN_VENV, "torch"), ("jax", RECOVAR_VENV, "jax")):
        py = venv / "bin" / "python"
        if py.exists():
            p = subprocess.run([py, "-c", f"import importlib.metadata as m; print(m.version('{pkg}'))"],
                               capture_output=True, text=True)
            v[name] = p.stdout.strip() or p.stderr.strip()[-200:]
        else:
            v[name] = "not installed"
    return v


if __name__ == "__main__":
    main()
