"""Post-processing benchmark: cryoprism ``postprocess`` against RELION 3.1 ``relion_postprocess`` on
half-maps made from a known map.

Data (made here from ``--map``, default EMD-3488 haemoglobin, 100³ at 1.05 Å/px):

* global set: ``half_i = blur(truth, B) + σ·noise_i`` (white noise, σ = ``--noise`` × the blurred map's
  standard deviation). The truth's resolution is where the FSC between the masked half-map average and
  the masked truth falls to 0.5 (the full-map criterion equivalent to the half-map FSC at 0.143,
  Rosenthal & Henderson 2003; ``resolution_error_shells`` = claimed minus true frequency in Fourier
  shells, positive = claims finer than the truth); the truth's B-factor is the Guinier fit of the masked, noise-free
  ``blur(truth, B)`` between 10 Å and that resolution (sharpening B = minus that).
* local set: the same with an extra blur ``--extra-blur`` on one side of the box only
  (``w(x) = 1/(1 + exp(−x/3 px))`` mixes the sharp and the blurred map). Local resolution should be
  worse on the blurred side; both programs' maps are compared inside the mask with each other and with
  the local truth: the FSC at 0.5 between the half-map average and the truth in cryoprism's windows.

With ``--half-maps H1 H2`` (e.g. a refinement's half-maps of ``--map``, the truth, same box and pixel size)
the benchmark instead measures the mask-corrected FSC on two sets, against the truth: ``refined``, the
given half-maps, and ``synthetic``, the truth attenuated per shell as in the half-maps plus independent
noise with the per-shell spectrum of ``(H1 − H2)/√2`` and its radial envelope in real space (each half's
noise when the two are independent: a reconstruction's noise, inside its support, rising relative to the
signal with frequency; the truth-implied
half-map FSC ``T²/(2 − T²)`` holds exactly in expectation). For each: the truth's crossing (FSC 0.5 of
the masked half-map average against the masked truth), cryoprism's (the randomised FSC in expectation
over the phases), cryoprism with one phase draw per seed and RELION with ``--random_seed`` over
``--draws`` seeds (mean, sd, range, in Fourier shells), and the corrected curve against the
truth-implied one (mean and RMS difference beyond the randomisation cut).

Both programs get the same half-maps and the same mask (cryoprism's automatic mask). RELION runs
twice, as it requires: ``--auto_bfac`` (global) and ``--locres --adhoc_bfac`` (local; sampling, window
radius and edge: twice cryoprism's grid step, cryoprism's window radius and edge; RELION computes a
full-box FFT per window, so a grid as fine as cryoprism's would take ~10 min here). Both local-resolution
runs include the global post-processing. Prints ONE JSON object.

    .venv/bin/python benchmarks/postprocess_bench.py [--map M.mrc] [--no-relion]
    .venv/bin/python benchmarks/postprocess_bench.py --map truth.mrc --half-maps half1.mrc half2.mrc [--draws 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MAP = REPO / "tests" / "data" / "maps" / "emd_3488_hemoglobin.mrc"


def _halves(truth, sigma, rng):
    return [truth + sigma * rng.standard_normal(truth.shape).astype(np.float32) for _ in range(2)]


def _relion(args: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(["nice", "-n", "10", "relion_postprocess", *args], cwd=cwd, capture_output=True,
                       text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"relion_postprocess failed: {(p.stdout + p.stderr)[-2000:]}")
    return dt, p.stdout


def _relion_general(star: Path) -> dict:
    import starfile

    d = starfile.read(star, always_dict=True)["general"]
    return {k: (d[k].iloc[0] if hasattr(d[k], "iloc") else d[k]) for k in d}


def _side_stats(locres, mask, x):
    inside = mask >= 0.5
    sharp = inside & (x > 4)
    blurred = inside & (x < -4)
    return {"median_sharp_side_A": float(np.median(locres[sharp])),
            "median_blurred_side_A": float(np.median(locres[blurred])),
            "median_A": float(np.median(locres[inside]))}


def _shell_stats(shells, truth_shell) -> dict:
    e = np.asarray(shells) - truth_shell
    return {"error_shells_mean": float(e.mean()), "error_shells_sd": float(e.std()),
            "error_shells_min": float(e.min()), "error_shells_max": float(e.max())}


def _relion_seeds(h1, h2, mask, px, seeds, L) -> dict:
    """``relion_postprocess --auto_bfac`` on the same half-maps and mask, once per ``--random_seed``."""
    from cryoprism.io import write_mrc

    shells, t = [], 0.0
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        for name, vol in [("h1", h1), ("h2", h2), ("mask", mask)]:
            write_mrc(d / f"{name}.mrc", np.asarray(vol, np.float32), px)
        for sd in seeds:
            (d / f"pp{sd}").mkdir()
            dt, _ = _relion(["--i", "h1.mrc", "--i2", "h2.mrc", "--o", f"pp{sd}/postprocess", "--angpix", f"{px}",
                             "--mask", "mask.mrc", "--auto_bfac", "--random_seed", str(sd)], d)
            t += dt
            shells.append(L * px / float(_relion_general(d / f"pp{sd}" / "postprocess.star")["rlnFinalResolution"]))
    return {"shells": shells, "time_s_per_run": t / len(seeds)}


def half_map_set(h1, h2, truth, px, draws: int, relion: bool) -> dict:
    """The mask-corrected FSC of ``h1``, ``h2`` against the truth-implied curve (see the module text)."""
    from cryoprism.image import auto_mask
    from cryoprism.metrics import fsc, resolution_at
    from cryoprism.metrics.postprocess import mask_corrected_fsc

    L = truth.shape[0]
    mask = auto_mask(0.5 * (h1 + h2), px)
    T = fsc(0.5 * (h1 + h2), truth, px, mask=mask)
    truth_shell = L * px / resolution_at(T, 0.5)
    implied = T.curve ** 2 / (2 - T.curve ** 2)
    t0, c0 = time.perf_counter(), time.process_time()
    r = mask_corrected_fsc(h1, h2, mask, px)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    k0 = r.randomize_shell
    sel = (np.arange(len(implied)) >= k0 + 3) & (implied > 0.05)
    dev = (r.corrected.curve - implied)[sel]
    one = [mask_corrected_fsc(h1, h2, mask, px, rng=sd, n_draws=1) for sd in range(draws)]
    one_dev = [(o.corrected.curve - implied)[sel] for o in one]
    out = {"truth_fsc05_shell": truth_shell, "truth_fsc05_A": L * px / truth_shell,
           "mask_volume_fraction": float((mask >= 0.5).mean()), "randomize_shell": k0,
           "cryoprism": {"resolution_A": r.resolution_A(), "error_shells": L * px / r.resolution_A() - truth_shell,
                         "masked_uncorrected_error_shells": L * px / resolution_at(r.masked, 0.143) - truth_shell,
                         "curve_minus_truth_implied_mean": float(dev.mean()),
                         "curve_minus_truth_implied_rms": float(np.sqrt(np.mean(dev ** 2))),
                         "shells_compared": int(sel.sum()), "wall_s": wall, "cpu_s": cpu},
           "cryoprism_one_phase_draw": {
               "draws": draws, **_shell_stats([L * px / o.resolution_A() for o in one], truth_shell),
               "curve_minus_truth_implied_rms_mean": float(np.mean([np.sqrt(np.mean(d ** 2)) for d in one_dev]))}}
    if relion and shutil.which("relion_postprocess") is not None:
        rel = _relion_seeds(h1, h2, mask, px, range(draws), L)
        out["relion"] = {"seeds": draws, **_shell_stats(rel["shells"], truth_shell),
                         "time_s_per_run": rel["time_s_per_run"]}
    return out


def mean_of_sets(sets, field) -> dict:
    v = [st[field] for st in sets]
    return {"mean": float(np.mean(v)), "sd": float(np.std(v))}


def half_maps_main(args) -> int:
    from cryoprism.fourier import fftnc, ifftnc, radial_index
    from cryoprism.io import read_mrc

    truth, px = read_mrc(args.map, ndim=3, finite=True)
    h1, _ = read_mrc(args.half_maps[0], ndim=3, finite=True)
    h2, _ = read_mrc(args.half_maps[1], ndim=3, finite=True)
    if h1.shape != truth.shape or h2.shape != truth.shape:
        raise SystemExit("half-maps and --map must have one box")
    # synthetic: the truth, attenuated per shell as in the half-maps (g = Σ Re(A T*) / Σ |T|² of the
    # half-map average A against the truth T), plus independent noise with the half-maps' noise spectrum
    # |FT((h1 − h2)/√2)|² (one half's noise if independent), both averaged per shell
    k = radial_index(truth.shape)
    n_sh = truth.shape[0] // 2 + 1
    kc = np.minimum(k, n_sh - 1).ravel()
    cnt = np.bincount(kc, minlength=n_sh)
    FT, FA = fftnc(truth, 3), fftnc(0.5 * (h1 + h2), 3)
    g = np.bincount(kc, (FA * FT.conj()).real.ravel(), n_sh) / np.bincount(kc, (np.abs(FT) ** 2).ravel(), n_sh)
    truth_att = ifftnc(FT * np.clip(g, 0, None)[kc].reshape(truth.shape), 3).real.astype(np.float32)
    p = np.abs(fftnc((h1 - h2) / np.sqrt(2.0), 3)) ** 2
    amp = np.sqrt(np.bincount(kc, p.ravel(), n_sh) / cnt)[kc].reshape(truth.shape)
    # a reconstruction's noise lies inside its support: the same radial envelope (rms of the difference
    # map per integer radius, normalised to mean square 1 so that the spectrum keeps its level)
    d2 = ((h1 - h2) ** 2 / 2.0).ravel()
    c = truth.shape[0] // 2
    zz, yy, xx = np.indices(truth.shape)
    r = np.rint(np.sqrt((zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2)).astype(int).ravel()
    env = np.sqrt(np.bincount(r, d2) / np.bincount(r))[r].reshape(truth.shape)
    env /= np.sqrt(np.mean(env ** 2))
    rng = np.random.default_rng(args.seed)

    def noise():
        w = fftnc(rng.standard_normal(truth.shape), 3)
        return (env * ifftnc(w / np.sqrt(w.size) * amp, 3).real).astype(np.float32)

    sets = [half_map_set(truth_att + noise(), truth_att + noise(), truth_att, px, args.draws, not args.no_relion)
            for _ in range(args.synthetic_sets)]

    def mean_of(key, field):
        v = [st[key][field] for st in sets if key in st]
        return {"mean": float(np.mean(v)), "sd": float(np.std(v))} if v else None

    out = {"map": args.map.name, "half_maps": [Path(h).name for h in args.half_maps], "box": truth.shape[0],
           "pixel_size_A": px, "load_avg": list(__import__("os").getloadavg()),
           "refined": half_map_set(h1, h2, truth, px, args.draws, not args.no_relion),
           "synthetic_summary": {
               "sets": len(sets), "truth_fsc05_shell": mean_of_sets(sets, "truth_fsc05_shell"),
               "cryoprism_error_shells": mean_of("cryoprism", "error_shells"),
               "masked_uncorrected_error_shells": mean_of("cryoprism", "masked_uncorrected_error_shells"),
               "cryoprism_curve_minus_truth_implied_mean": mean_of("cryoprism", "curve_minus_truth_implied_mean"),
               "cryoprism_curve_minus_truth_implied_rms": mean_of("cryoprism", "curve_minus_truth_implied_rms"),
               "one_phase_draw_error_shells": mean_of("cryoprism_one_phase_draw", "error_shells_mean"),
               "one_phase_draw_sd_within_set": mean_of("cryoprism_one_phase_draw", "error_shells_sd"),
               "relion_error_shells": mean_of("relion", "error_shells_mean"),
               "relion_sd_within_set": mean_of("relion", "error_shells_sd")},
           "synthetic": sets}
    print(json.dumps(out, default=float))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--map", type=Path, default=DEFAULT_MAP, help="known map (MRC, cubic)")
    ap.add_argument("--bfactor", type=float, default=80.0, help="blur applied to the truth (Å²)")
    ap.add_argument("--extra-blur", type=float, default=250.0,
                    help="extra blur on one side for the local-resolution set (Å²)")
    ap.add_argument("--noise", type=float, default=3.0, help="noise σ / blurred map's std")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-relion", action="store_true", help="skip RELION")
    ap.add_argument("--half-maps", nargs=2, type=Path, metavar=("H1", "H2"),
                    help="measure the corrected FSC of these half-maps of --map (see the module text)")
    ap.add_argument("--draws", type=int, default=10, help="phase seeds for the one-draw statistics")
    ap.add_argument("--synthetic-sets", type=int, default=8, help="noise realisations of the synthetic set")
    args = ap.parse_args(argv)

    warnings.simplefilter("ignore")
    if args.half_maps:
        return half_maps_main(args)
    from cryoprism.image import auto_mask
    from cryoprism.io import read_mrc, write_mrc
    from cryoprism.metrics import apply_bfactor, fsc, guinier_bfactor, resolution_at
    from cryoprism.metrics.postprocess import local_resolution, postprocess

    truth, px = read_mrc(args.map, ndim=3, finite=True)
    L = truth.shape[0]
    rng = np.random.default_rng(args.seed)
    blurred = apply_bfactor(truth, px, args.bfactor)
    sigma = args.noise * float(blurred.std())
    h1, h2 = _halves(blurred, sigma, rng)
    x = (np.arange(L) - L // 2)[None, None, :].astype(np.float32)
    w = 1.0 / (1.0 + np.exp(-x / 3.0))
    side = w * blurred + (1 - w) * apply_bfactor(truth, px, args.bfactor + args.extra_blur)
    s1, s2 = _halves(side, sigma, rng)

    out = {"map": args.map.name, "box": L, "pixel_size_A": px, "blur_bfactor_A2": args.bfactor,
           "noise_over_std": args.noise, "extra_blur_A2": args.extra_blur}

    # ---- cryoprism
    t0 = time.perf_counter()
    mask = auto_mask(0.5 * (h1 + h2), px)
    t_mask = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = postprocess(h1, h2, px, mask)  # RELION gets the same mask: time both without making it
    t_global = time.perf_counter() - t0
    mask_side = auto_mask(0.5 * (s1 + s2), px)
    t0 = time.perf_counter()
    lr = postprocess(s1, s2, px, mask_side, locres=True).locres
    t_locres = time.perf_counter() - t0
    n_windows = int(np.isfinite(lr.grid_A).sum())
    # local truth: the same windows, FSC of the half-map average against the truth at 0.5
    truth_lr = local_resolution(0.5 * (s1 + s2), truth, px, mask_side, threshold=0.5).map_A
    inside = mask_side >= 0.5

    # ---- truth
    avg = 0.5 * (h1 + h2)
    truth_fsc = fsc(avg, truth, px, mask=mask)
    res_truth = resolution_at(truth_fsc, 0.5)
    shell_A = L * px  # frequency step 1/(L px): resolution differences are reported in shells too
    fit_truth = guinier_bfactor(blurred * mask, px, d_low_A=10.0, d_high_A=res_truth)
    ours = {"resolution_A": r.resolution_A,
            "resolution_error_shells": shell_A / r.resolution_A - shell_A / res_truth,
            "bfactor_A2": r.bfactor_A2, "randomize_resolution_A": 1 / r.fsc.randomize_freq_invA,
            "resolution_unmasked_A": resolution_at(r.fsc.unmasked, 0.143),
            "resolution_masked_uncorrected_A": resolution_at(r.fsc.masked, 0.143),
            "time_s": t_global, "auto_mask_time_s": t_mask, "locres_time_s": t_locres, "locres_windows": n_windows,
            "locres_window_radius_px": lr.radius_px, "locres_step_px": lr.step_px,
            "locres": _side_stats(lr.map_A, mask_side, x),
            "locres_pearson_vs_truth": float(np.corrcoef(lr.map_A[inside], truth_lr[inside])[0, 1])}
    out["truth"] = {"resolution_fsc_0.5_vs_truth_A": res_truth, "sharpening_bfactor_A2": -fit_truth.bfactor_A2,
                    "mask_volume_fraction": float((mask >= 0.5).mean()),
                    "locres": _side_stats(truth_lr, mask_side, x)}
    out["cryoprism"] = ours

    # ---- RELION
    if not args.no_relion:
        if shutil.which("relion_postprocess") is None:
            out["relion"] = {"error": "relion_postprocess not found"}
        else:
            with tempfile.TemporaryDirectory() as td:
                d = Path(td)
                for name, vol in [("h1", h1), ("h2", h2), ("mask", mask), ("s1", s1), ("s2", s2),
                                  ("mask_side", mask_side)]:
                    write_mrc(d / f"{name}.mrc", vol.astype(np.float32), px)
                (d / "pp").mkdir()
                (d / "lr").mkdir()
                t_rel, _ = _relion(["--i", "h1.mrc", "--i2", "h2.mrc", "--o", "pp/postprocess", "--angpix", f"{px}",
                                    "--mask", "mask.mrc", "--auto_bfac", "--autob_lowres", "10"], d)
                g = _relion_general(d / "pp" / "postprocess.star")
                res_rel = float(g["rlnFinalResolution"])
                step_A = 2 * lr.step_px * px
                t_rel_lr, _ = _relion(["--i", "s1.mrc", "--i2", "s2.mrc", "--o", "lr/postprocess", "--angpix", f"{px}",
                                       "--mask", "mask_side.mrc", "--adhoc_bfac", f"{r.bfactor_A2:.2f}",
                                       "--locres", "--locres_sampling", f"{step_A:.3f}",
                                       "--locres_maskrad", f"{lr.radius_px * px:.3f}",
                                       "--locres_edgwidth", f"{lr.edge_px * px:.3f}"], d)
                rl, _ = read_mrc(d / "lr" / "postprocess_locres.mrc", ndim=3)
            from scipy.stats import pearsonr, spearmanr

            out["relion"] = {
                "resolution_A": res_rel, "resolution_error_shells": shell_A / res_rel - shell_A / res_truth,
                "bfactor_A2": float(g["rlnBfactorUsedForSharpening"]),
                "randomize_resolution_A": float(g.get("rlnRandomiseFrom", np.nan)),
                "time_s": t_rel, "locres_time_s": t_rel_lr, "locres_sampling_A": step_A,
                "locres": _side_stats(rl, mask_side, x),
                "locres_pearson_vs_truth": float(np.corrcoef(rl[inside], truth_lr[inside])[0, 1])}
            out["comparison"] = {
                "locres_pearson": float(pearsonr(rl[inside], lr.map_A[inside])[0]),
                "locres_spearman": float(spearmanr(rl[inside], lr.map_A[inside])[0]),
                "time_ratio_relion_over_cryoprism": t_rel / t_global,
                "locres_time_ratio_relion_over_cryoprism": t_rel_lr / t_locres,
                "bfactor_error_cryoprism_A2": r.bfactor_A2 - out["truth"]["sharpening_bfactor_A2"],
                "bfactor_error_relion_A2": out["relion"]["bfactor_A2"] - out["truth"]["sharpening_bfactor_A2"],
            }
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
