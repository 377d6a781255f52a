"""Ab-initio Gaussian-mixture benchmark: unit-level checks and the experiments of the Gaussian-mixture thesis.

Prints ONE JSON object. ``--quick`` runs small versions of everything (a few minutes).

Unit level: analytic projection vs numerically integrated line projection
log-posterior invariance
under a global rotation and the handedness flip (Gibbs and HMC)
HMC gradients vs central finite
differences
matrix-Fisher moments vs quadrature over SO(3).

Experiments on the simulated 50S ribosome (tests/data/maps/50S_states/vol_018.mrc, 64³ at 6.55 Å):
mixture fit to the map
rotations of 25 projections with the mixture known
the full Gibbs protocol
from 50 projections (25 with --quick; FSC vs the 25 Å-filtered truth, modulo rotation and hand)
HMC with the CTF at
SNR 10 (restarts correct, FSC vs the 20 Å-filtered truth)
fraction of correct rotations vs N_R and K.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "tests" / "data" / "maps" / "50S_states" / "vol_018.mrc"
THRESHOLD = 0.1          # density threshold of the 50S map (≈ 97th percentile; removes solvent noise)
CORRECT_DEG = 10.0       # a rotation counts as correct within this many degrees (after alignment);
                         # a restart counts as correct when >= 90 % of its rotations are

from cryoprism.abinitio import gibbs, gmm, hmc, pipeline, so3  # noqa: E402
from cryoprism.ctf.model import CTFParams, ctf_2d  # noqa: E402
from cryoprism.geometry.rotations import angular_distance_deg, uniform_rotations  # noqa: E402
from cryoprism.io import ParticleStack  # noqa: E402


# ------------------------------------------------------------------------------------------ unit
def unit_projection(rng):
    K, L, px = 20, 32, 3.0
    mix = gmm.GaussianMixture(rng.normal(scale=15, size=(K, 3)), 1 / 30.0, rng.dirichlet(np.ones(K)))
    A = uniform_rotations(3, rng)
    org = rng.normal(scale=4, size=(3, 2))
    img = gmm.project_mixture(mix, A, L, px, org)
    x = (np.arange(L) - L // 2) * px
    z = np.linspace(-160, 160, 3201)
    X, Y = np.meshgrid(x, x, indexing="xy")
    s = mix.precision_invA2
    err = 0.0
    for i in range(3):
        p = np.stack([np.broadcast_to(X[..., None] + org[i, 0], X.shape + z.shape),
                      np.broadcast_to(Y[..., None] + org[i, 1], X.shape + z.shape),
                      np.broadcast_to(z, X.shape + z.shape)], -1) @ A[i]
        d2 = ((p[..., None, :] - mix.means_A) ** 2).sum(-1)
        h = (mix.weights * (s / (2 * np.pi)) ** 1.5 * np.exp(-0.5 * s * d2)).sum(-1)
        num = np.trapezoid(h, z, axis=-1)
        err = max(err, float(np.linalg.norm(num - img[i]) / np.linalg.norm(num)))
    out = {"analytic_vs_line_integral_rel_err": err}
    try:  # cross-module check: Fourier-slice projection of the rendered volume
        from cryoprism.forward import projection as fp

        mix2 = gmm.GaussianMixture(rng.normal(scale=8, size=(K, 3)), 1 / 36.0, rng.dirichlet(np.ones(K)))
        L2, px2 = 48, 2.0
        vol = gmm.render_volume(mix2, L2, px2).astype(np.float64)
        A2 = uniform_rotations(4, rng)
        o2 = rng.normal(scale=3, size=(4, 2))
        a = gmm.project_mixture(mix2, A2, L2, px2, o2)
        b = fp.project(vol, A2, origins_px=o2 / px2) * px2
        out["analytic_vs_voxel_projection_rel_err"] = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    except ImportError:
        pass
    return out


def unit_invariance(rng):
    J = np.diag([1.0, 1.0, -1.0])
    K, L, px, n = 30, 32, 4.0, 6
    mix = gmm.GaussianMixture(rng.normal(scale=15, size=(K, 3)), 1 / 36.0, rng.dirichlet(np.ones(K) * 3))
    R = uniform_rotations(n, rng)
    G = uniform_rotations(1, rng)[0]
    data = gibbs.count_data(gibbs.images_to_counts(gmm.project_mixture(mix, R, L, px), 1000), px)
    pri = gibbs.default_priors(data)
    t0 = rng.normal(size=(n, 2))
    mk = lambda m, r: gibbs.ChainState(m, mix.precision_invA2, mix.weights, r, t0)  # noqa: E731
    lp = gibbs.log_posterior(mk(mix.means_A, R), data, pri)
    lr = gibbs.log_posterior(mk(mix.means_A @ G.T, R @ G.T), data, pri)
    lm = gibbs.log_posterior(mk(mix.means_A @ J, J @ R @ J), data, pri)
    ctf = ctf_2d(L, px, CTFParams(np.full(n, 15000.0), np.full(n, 16000.0), np.zeros(n))).astype(np.float64)
    gd = hmc.GaussData(gmm.project_mixture(mix, R, L, px) * 1e3 + rng.normal(size=(n, L, L)), px, ctf)
    hp = hmc.HMCPriors(pri.mean_precision_invA2)
    hs = hmc.HMCState(mix.means_A, mix.precision_invA2, np.ones(n), 1.0, R, t0)
    h0 = hmc.log_posterior(hs, gd, hp)
    a = hs.copy()
    a.means_A = mix.means_A @ G.T
    a.rotations = R @ G.T
    b = hs.copy()
    b.means_A = mix.means_A @ J
    b.rotations = J @ R @ J
    return {"gibbs_logpost_rel_change_rotation": abs(lr - lp) / abs(lp),
            "gibbs_logpost_rel_change_handedness": abs(lm - lp) / abs(lp),
            "hmc_logpost_rel_change_rotation": abs(hmc.log_posterior(a, gd, hp) - h0) / abs(h0),
            "hmc_logpost_rel_change_handedness": abs(hmc.log_posterior(b, gd, hp) - h0) / abs(h0)}


def unit_gradients(rng):
    n, L, px, K = 4, 24, 4.0, 8
    ctf = ctf_2d(L, px, CTFParams(rng.uniform(1e4, 2.5e4, n), rng.uniform(1e4, 2.5e4, n),
                                  rng.uniform(0, 180, n))).astype(np.float64)
    out = {}
    for name, c in (("no_ctf", None), ("ctf", ctf)):
        data = hmc.GaussData(rng.normal(size=(n, L, L)), px, c)
        st = hmc.HMCState(rng.normal(scale=12, size=(K, 3)), 1 / 40.0, rng.uniform(1, 2, n), 1.5,
                          uniform_rotations(n, rng), rng.normal(size=(n, 2)))
        pri = hmc.HMCPriors(1 / 300.0)
        h = 1e-5
        _, g = hmc.energy_means(st.means_A, st, data, pri)
        num = np.zeros_like(g)
        for k in range(K):
            for j in range(3):
                m = st.means_A.copy()
                m[k, j] += h
                ep = hmc.energy_means(m, st, data, pri)[0]
                m[k, j] -= 2 * h
                num[k, j] = (ep - hmc.energy_means(m, st, data, pri)[0]) / (2 * h)
        out[f"means_{name}_max_rel_err"] = float(np.abs(num - g).max() / np.abs(g).max())
        E, g = hmc.energy_rotations(st.rotations, st, data)
        num = np.zeros_like(g)
        for a in range(3):
            v = np.zeros((n, 3))
            v[:, a] = h
            num[:, a] = (hmc.energy_rotations(so3.expmap(v) @ st.rotations, st, data)[0]
                         - hmc.energy_rotations(so3.expmap(-v) @ st.rotations, st, data)[0]) / (2 * h)
        out[f"rotations_{name}_max_rel_err"] = float(np.abs(num - g).max() / np.abs(g).max())
    return out


def unit_fisher(rng, n_samples):
    from scipy.spatial.transform import Rotation

    m = 72
    a = (np.arange(m) + 0.5) * 2 * np.pi / m
    b = (np.arange(m // 2) + 0.5) * np.pi / (m // 2)
    A, B, C = np.meshgrid(a, b, a, indexing="ij")
    Rq = Rotation.from_euler("ZYZ", np.stack([A.ravel(), B.ravel(), C.ravel()], 1)).as_matrix()
    out = {}
    for scale in (0.5, 3.0, 12.0):
        F = scale * (uniform_rotations(1, rng)[0] @ np.diag([1.0, 0.6, 0.2]) @ uniform_rotations(1, rng)[0])
        lp = np.einsum("ab,nab->n", F, Rq)
        w = np.exp(lp - lp.max()) * np.sin(B.ravel())
        ref = np.einsum("n,nab->ab", w, Rq) / w.sum()
        S = so3.sample_matrix_fisher(np.repeat(F[None], n_samples, 0), rng)
        z = np.abs(S.mean(0) - ref) / (S.std(0) / np.sqrt(n_samples))
        out[f"kappa_{scale}"] = {"max_abs_diff_mean": float(np.abs(S.mean(0) - ref).max()),
                                 "max_z_score": float(z.max())}
    return out


# ------------------------------------------------------------------------------------------ data
def load_truth():
    from cryoprism.io.mrc import read_mrc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol, px = read_mrc(MAP)
    return np.clip(vol - THRESHOLD, 0, None).astype(np.float64), float(px)


def thesis_reference(truth, px, res_A):
    """The thesis' "map at res Å": Gaussian blur with σ = res/(π√2) (transfer e^{-1} at 1/res)."""
    from cryoprism.fourier.core import radius_grid
    from cryoprism.image.filters import apply_radial_filter

    sig = res_A / (np.pi * np.sqrt(2))
    H = np.exp(-2 * np.pi ** 2 * sig ** 2 * radius_grid(truth.shape, px) ** 2)
    return apply_radial_filter(truth, H, 3)


def compare_maps(truth, est, px, filt_A):
    """FSC 0.5 and CC after alignment (rotation, shift, hand: cryoprism.metrics.align_volumes), against
    the truth filtered to ``filt_A`` two ways: the thesis' Gaussian definition (primary) and a 3-D
    low-pass with a cosine edge (transfer 1/2 at 1/filt_A)."""
    from cryoprism.image.filters import lowpass
    from cryoprism.metrics.align import align_volumes
    from cryoprism.metrics.fsc import fsc, resolution_at

    out = {}
    for name, ref in (("thesis_gaussian", thesis_reference(truth, px, filt_A)),
                      ("cosine_lowpass", lowpass(truth, px, resolution_A=filt_A, ndim=3))):
        al = align_volumes(ref, est)
        f = fsc(ref, al.aligned, px)
        out[name] = {"fsc05_A": float(resolution_at(f, 0.5)), "cc": float(al.correlation),
                     "flipped": bool(al.flipped)}
    return out


def rotation_errors(R_true, R_est):
    _, e, mirrored = so3.best_alignment(R_true, R_est)
    return {"median_deg": float(np.median(e)), "max_deg": float(np.max(e)),
            "fraction_correct": float(np.mean(e < CORRECT_DEG)), "mirrored": bool(mirrored)}


# ------------------------------------------------------------------------------------------ experiments
def exp_fit(truth, px, K, n_iter):
    t = time.perf_counter()
    mix = gmm.fit_mixture_em(truth, px, K, n_iter=n_iter, rng=0)
    dt = time.perf_counter() - t
    r = gmm.render_volume(mix, truth.shape[0], px)
    cc = float(np.corrcoef(r.ravel(), truth.ravel())[0, 1])
    return mix, {"K": K, "em_iterations": n_iter, "sigma_A": mix.sigma_A, "cc_with_map": cc,
                 "seconds": dt}


def exp_rotations_known(mix, px, n, n_counts, rng):
    from cryoprism.abinitio.pipeline import fourier_crop
    from cryoprism.forward.projection import project

    truth, _ = load_truth()
    R = uniform_rotations(n, rng)
    imgs = fourier_crop(project(truth, R), 32)
    data = gibbs.count_data(gibbs.images_to_counts(imgs, n_counts), px * 2)
    pri = gibbs.default_priors(data)
    # counts at 13.1 Å pixel centres carry px²/12 extra variance per axis: the known mixture's σ
    s = 1.0 / (mix.sigma_A ** 2 + (2 * px) ** 2 / 12)
    st = gibbs.ChainState(mix.means_A.copy(), s, mix.weights.copy(), uniform_rotations(n, rng),
                          np.zeros((n, 2)))
    t = time.perf_counter()
    st = gibbs.run_initial_stage(data, mix.K, pri, rng, gibbs.StageSettings(
        n_alternations=1, proposal_scales_deg=(5, 3, 2, 1, 1, 0.5, 0.5, 0.25), local_rotation_sweeps=5),
        state=st, known_mixture=True)
    e = angular_distance_deg(st.rotations, R)   # the mixture is known: no alignment needed
    return {"n_images": n, "counts_per_image": n_counts, "median_error_deg": float(np.median(e)),
            "fraction_below_2deg": float(np.mean(e < 2)), "max_error_deg": float(e.max()),
            "seconds": time.perf_counter() - t}


def exp_full_gibbs(truth, px, n, restarts, K_ref, alternations, sweeps, rng, refine_init="reconstruction"):
    from cryoprism.forward.projection import project

    R = uniform_rotations(n, rng)
    imgs = project(truth, R)
    t = time.perf_counter()
    src = ParticleStack.from_arrays(imgs, pixel_size_A=px)
    res = pipeline.run_abinitio(src, method="gibbs", K_initial=100, K_refine=K_ref, restarts=restarts,
                                n_alternations=alternations, refine_sweeps=sweeps, n_counts_refine=20000,
                                thin=5, seed=1, progress=False, refine_init=refine_init)
    out = {"n_images": n, "restarts": restarts, "K_initial": 100, "K_refine": K_ref,
           "refine_init": refine_init,
           "alternations": alternations, "refine_sweeps": sweeps,
           "restart_log_posteriors": res.restart_log_posteriors, "best_restart": res.best_restart,
           "initial_seconds_per_restart": res.timings_s["initial_per_restart_s"],
           "refinement_seconds": res.timings_s["refinement_s"], "total_seconds": time.perf_counter() - t,
           "rotations": rotation_errors(R, res.rotations),
           "restart_table": [dict(log_posterior=lp, **rotation_errors(R, rr))
                             for lp, rr in zip(res.restart_log_posteriors, res.restart_rotations)]}
    out["vs_truth_25A"] = compare_maps(truth, res.volume.astype(np.float64), px, 25.0)
    return out


def exp_hmc_ctf(truth, px, n, restarts, K_ref, alternations, sweeps, rng):
    from cryoprism.forward.simulate import simulate_particles

    sim = simulate_particles(truth.astype(np.float32), n, px, snr=10.0, rng=rng, progress=False,
                             defocus_range_A=(1.0e4, 2.5e4))
    imgs = sim.images.astype(np.float64)
    src = ParticleStack.from_arrays(imgs, pixel_size_A=px, ctf=sim.ctf)
    t = time.perf_counter()
    res = pipeline.run_abinitio(src, method="hmc", K_initial=100, K_refine=K_ref,
                                restarts=restarts, n_alternations=alternations, refine_sweeps=sweeps,
                                refine_box=64, refine_init="reconstruction", seed=2, progress=False)
    out = {"n_images": n, "snr": 10.0, "snr_definition": "mean square of the clean CTF-affected "
           "projection over the noise variance (cryoprism.forward.simulate_particles)",
           "restarts": restarts, "K_refine": K_ref, "alternations": alternations, "refine_sweeps": sweeps,
           "refine_box": 64, "refine_init": "reconstruction",
           "restart_log_posteriors": res.restart_log_posteriors, "best_restart": res.best_restart,
           "initial_seconds_per_restart": res.timings_s["initial_per_restart_s"],
           "refinement_seconds": res.timings_s["refinement_s"], "total_seconds": time.perf_counter() - t,
           "rotations_final": rotation_errors(sim.rotations, res.rotations),
           "restart_table": [dict(log_posterior=lp, **rotation_errors(sim.rotations, rr))
                             for lp, rr in zip(res.restart_log_posteriors, res.restart_rotations)]}
    out["restarts_correct"] = int(sum(r["fraction_correct"] >= 0.9 for r in out["restart_table"]))
    out["vs_truth_20A"] = compare_maps(truth, res.volume.astype(np.float64), px, 20.0)
    return out, sim


def restart_correctness(method, imgs, px, ctf, R_true, restarts, alternations, K=100, n_rotations=1000,
                        n_counts=1000, seed=0):
    """Run the initial stage ``restarts`` times (through cryoprism.parallel)
    per restart: log-posterior,
    median rotation error modulo the invariances, fraction of correct rotations, seconds."""
    from cryoprism.parallel.core import map_batches

    small = pipeline.fourier_crop(imgs, 32)
    L = imgs.shape[-1]
    c = pipeline._crop_ctf(ctf, L, 32) if ctf is not None else None
    px_s = px * L / 32
    jobs = [pipeline.RestartJob(method, small, px_s, c, K, n_counts, seed * 1000 + r, alternations,
                                n_rotations) for r in range(restarts)]
    outs = map_batches(pipeline.run_restart, jobs, progress=False)
    rows = []
    for st, lp, sec in outs:
        e = rotation_errors(R_true, st.rotations)
        rows.append({"log_posterior": float(lp), "median_error_deg": e["median_deg"],
                     "fraction_correct": e["fraction_correct"], "seconds": float(sec)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: "
                    "unit,fit,rotations,gibbs,hmc,sweep")
    args = ap.parse_args(argv)
    q = args.quick
    skip = set(filter(None, args.skip.split(",")))
    rng = np.random.default_rng(2024)
    out = {"benchmark": "abinitio", "quick": q, "correct_threshold_deg": CORRECT_DEG}
    t_all = time.perf_counter()
    if "unit" not in skip:
        t = time.perf_counter()
        out["unit"] = {"projection": unit_projection(rng), "invariance": unit_invariance(rng),
                       "hmc_gradients": unit_gradients(rng),
                       "matrix_fisher": unit_fisher(rng, 20000 if q else 100000),
                       "seconds": time.perf_counter() - t}
    truth, px = load_truth()
    mix = None
    if "fit" not in skip or "rotations" not in skip:
        mix, out["fit_mixture_to_map"] = exp_fit(truth, px, 200 if q else 500, 25 if q else 60)
    if "rotations" not in skip:
        out["rotations_mixture_known"] = exp_rotations_known(mix, px, 25, 3000, rng)
    if "gibbs" not in skip:
        out["full_gibbs"] = exp_full_gibbs(truth, px, 25 if q else 50, 2 if q else 4, 300 if q else 2000,
                                           8 if q else 12, 20, rng)
    if "hmc" not in skip:
        out["hmc_ctf_snr10"], _ = exp_hmc_ctf(truth, px, 25, 2 if q else 4, 200 if q else 2000,
                                              6 if q else 10, 20 if q else 60, rng)
    if "sweep" not in skip:
        from cryoprism.forward.projection import project

        R = uniform_rotations(25, np.random.default_rng(11))
        imgs = project(truth, R)
        nrs = (200, 1000) if q else (100, 200, 500, 1000, 2000)
        ks = (50, 100) if q else (25, 50, 100, 200)
        alt = 6 if q else 10
        sweep = {"alternations": alt, "vs_N_R": {}, "vs_K": {}}
        for nr in nrs:
            sweep["vs_N_R"][str(nr)] = restart_correctness("gibbs", imgs, px, None, R, 1, alt, K=100,
                                                           n_rotations=nr, seed=nr)[0]
        for k in ks:
            sweep["vs_K"][str(k)] = restart_correctness("gibbs", imgs, px, None, R, 1, alt, K=k,
                                                        n_rotations=1000, seed=k)[0]
        out["fraction_correct_sweep"] = sweep
    out["total_seconds"] = time.perf_counter() - t_all
    from cryoprism.io.job import jsonable

    sys.stdout.write(json.dumps(jsonable(out)) + "\n")


if __name__ == "__main__":
    main()
