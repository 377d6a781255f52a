"""The demo's HTML report: every figure is computed here from the files the stages wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _fsc(a, b, ps):
    from cryoprism.metrics import fsc, resolution_at

    r = fsc(a, b, ps)
    return r, resolution_at(r, 0.5), resolution_at(r, 0.143)


def _best_match(vol, truths):
    cc = [float(np.corrcoef(vol.ravel(), t.ravel())[0, 1]) for t in truths]
    return int(np.argmax(cc)), cc


def build_report(out: Path, s, stages: dict, truth_paths, total_seconds: float) -> Path:
    from cryoprism.io import read_mrc, read_star
    from cryoprism.report import (
        Report,
        fsc_figure,
        gallery_figure,
        histogram_figure,
        spectrum_figure,
        trace_figure,
        volume_slices_figure,
    )

    out = Path(out)
    rep = Report(out / "report", title="cryoprism demo — adenylate kinase, open and closed")
    rep.section("Run", "Every stage called the library in-process and wrote through its own job folder; "
                       "wall-clock seconds on this machine and the process's CPU seconds (all threads; "
                       "independent of other load).")
    rep.table({name: (f"{st.seconds:.1f} s ({getattr(st, 'cpu_seconds', 0.0):.1f} CPU-s)" if st.ok
                      else f"FAILED after {st.seconds:.1f} s: {st.error}")
               for name, st in stages.items()} | {"total": f"{total_seconds:.1f} s"}, "Stages")

    truths = [read_mrc(p)[0] for p in truth_paths if Path(p).exists()]
    ps = s.pixel_size_A
    if truths:
        rep.section("Ground truth", "Density maps of the two conformations made from the atomic models.")
        rep.figure(volume_slices_figure({"open": truths[0], "closed": truths[1]}), "truth_slices",
                   "Central slices and projections of the two states")

    _movies_section(rep, out, s)

    parts = out / "particles" / "particles.star"
    labels = None
    if parts.exists():
        table = read_star(parts).particles
        labels = table["rlnClassNumber"].to_numpy() if "rlnClassNumber" in table else None
        if labels is not None:
            rep.section("Particles", f"{len(table)} simulated particles, {s.box}² at {ps} Å/px, SNR {s.snr}.")
            rep.figure(histogram_figure(labels, "True state of the simulated particles"), "true_states",
                       "Particles per true state")
        try:
            from cryoprism.io import read_particles

            st = read_particles(parts)
            imgs = st.images(np.arange(min(16, st.n)))
            rep.figure(gallery_figure(imgs, ncols=8, title="Simulated particles"), "particles_gallery",
                       "The first 16 particles (CTF and noise)")
        except Exception:  # noqa: BLE001 — a figure missing is reported by its absence
            pass

    # --- mean reconstruction
    mean = out / "reconstruct" / "mean.mrc"
    if mean.exists() and truths:
        v, _ = read_mrc(mean)
        frac = np.mean(labels == 1) if labels is not None else 0.5
        ref = frac * truths[0] + (1 - frac) * truths[1]
        curves, rows = {}, {}
        r, r05, r0143 = _fsc(v, ref, ps)
        curves["mean vs truth"] = (r.freq_invA, r.curve)
        rows["FSC 0.5 vs truth (Å)"] = r05
        h1, h2 = out / "reconstruct" / "mean_half1.mrc", out / "reconstruct" / "mean_half2.mrc"
        if h1.exists() and h2.exists():
            rh, h05, h0143 = _fsc(read_mrc(h1)[0], read_mrc(h2)[0], ps)
            curves["half maps"] = (rh.freq_invA, rh.curve)
            rows["gold-standard FSC 0.143 (Å)"] = h0143
        rad = stages.get("reconstruct").figures.get("mask_radius_px") if "reconstruct" in stages else None
        rep.section("Mean volume", "Least squares by conjugate gradient with the CTF (Toeplitz kernel), at the "
                                   "library's defaults: Wiener regularisation and the particle's ball "
                                   "chosen from the data"
                    + (f" (radius {rad:.0f} px)." if isinstance(rad, (int, float)) else "."))
        rep.figure(fsc_figure(curves, title="Mean volume"), "fsc_mean", "FSC of the mean volume")
        rep.table(rows)
        rep.figure(volume_slices_figure({"mean": v}), "mean_slices", "Mean volume")

    # --- heterogeneity
    het = out / "heterogeneity"
    if het.exists():
        rep.section("Heterogeneity", "Covariance by conjugate gradient, eigenvolumes, Gaussian-mixture classes.")
        ev_file = het / "eigenvalues.csv"
        if ev_file.exists():
            import pandas as pd

            ev = pd.read_csv(ev_file)
            col = [c for c in ev.columns if "eig" in c.lower() or "value" in c.lower()]
            vals = ev[col[0]].to_numpy() if col else ev.iloc[:, -1].to_numpy()
            ncls = len(list(het.glob("class_*.mrc"))) or None
            rep.figure(spectrum_figure(vals[:12], ncls), "eigenvalues", "Leading covariance eigenvalues")
        cls_star = het / "classes.star"
        if cls_star.exists():
            pred = read_star(cls_star).particles["rlnClassNumber"].to_numpy()
            rep.figure(histogram_figure(pred, "Particles per estimated class"), "het_classes",
                       "Estimated classes")
            if labels is not None and len(pred) == len(labels):
                from cryoprism.heterogeneity.classify import matched_accuracy

                acc = matched_accuracy(labels, pred)
                rep.table({"classification accuracy vs true state": f"{100 * acc:.1f} %"})
        vols = {p.stem: read_mrc(p)[0] for p in sorted(het.glob("class_*.mrc"))}
        if vols:
            rep.figure(volume_slices_figure(vols), "class_volumes", "Class volumes")
            if truths:
                curves, rows = {}, {}
                for name, v in vols.items():
                    if v.shape != truths[0].shape:
                        continue
                    k, _ = _best_match(v, truths)
                    r, r05, _ = _fsc(v, truths[k], ps)
                    curves[f"{name} vs {'open' if k == 0 else 'closed'}"] = (r.freq_invA, r.curve)
                    rows[f"{name}: FSC 0.5 vs its state (Å)"] = r05
                if curves:
                    rep.figure(fsc_figure(curves, title="Class volumes vs truth"), "fsc_classes",
                               "FSC of each class volume against the matching true state")
                    rep.table(rows)

        traj = het / "trajectory"  # written with trajectory settings (continuous heterogeneity)
        for name, caption in (("density.png", "Density of the particles' coordinates and the path"),
                              ("path.gif", "Volumes along the highest-density path (projections)")):
            if (traj / name).exists():
                rep.figure(traj / name, name, caption)

    # --- 2-D analysis
    c2d = out / "classify2d"
    if c2d.exists():
        rep.section("2-D analysis", "MFVDM neighbours, class averages and graph-filter denoising.")
        avg = sorted(c2d.glob("*.mrcs"))
        if avg:
            a, _ = read_mrc(avg[0])
            a = a.reshape(-1, a.shape[-2], a.shape[-1])[:16]
            rep.figure(gallery_figure(a, ncols=8, title="Class averages"), "class_averages", "Class averages")
        nb = c2d / "neighbors.csv"
        if nb.exists() and parts.exists():
            rows = _neighbour_accuracy(nb, c2d / "subset.star")
            if rows:
                rep.table(rows, "Neighbours")
        den = sorted((c2d / "denoised").glob("*.mrcs")) if (c2d / "denoised").exists() else []
        if den:
            d, _ = read_mrc(den[0])
            rep.figure(gallery_figure(d.reshape(-1, d.shape[-2], d.shape[-1])[:16], ncols=8,
                                      title="Denoised particles"), "denoised", "MFVDM-denoised particles")

    # --- ab initio
    ab = out / "abinitio" / "initial_model.mrc"
    if ab.exists() and truths:
        from cryoprism.fourier import fourier_resize
        from cryoprism.metrics import align_volumes

        v, ps_v = read_mrc(ab)
        ref = truths[0]
        if v.shape != ref.shape:  # same field of view, other sampling: resample to the truth's box
            v, _ = fourier_resize(v, ref.shape, 3, ps_v or ps)
        al = align_volumes(ref, v)
        r, r05, _ = _fsc(al.aligned, ref, ps)
        rep.section("Ab initio", "Gaussian-mixture initial model (HMC with CTF) from a subset of particles of "
                                 "the open state, aligned to the truth over rotation, shift and hand.")
        rep.figure(volume_slices_figure({"initial model (aligned)": al.aligned, "truth": ref}), "abinitio",
                   "Initial model and truth")
        rep.figure(fsc_figure({"initial model vs truth": (r.freq_invA, r.curve)}, title="Ab initio"),
                   "fsc_abinitio", "FSC of the aligned initial model")
        rep.table({"FSC 0.5 vs truth (Å)": r05, "hand flipped": bool(al.flipped)})
        trace = out / "abinitio" / "trace.png"
        if trace.exists():
            rep.figure(trace, "trace", "Log-posterior trace")

    _refine_section(rep, out, s)

    # --- micrograph EM
    em = out / "micrograph" / "em"
    if em.exists():
        rep.section("Reconstruction from micrographs",
                    "Approximate expectation-maximization over patches, no particle picking, on a larger "
                    f"specimen: four copies of the adenylate-kinase models in an asymmetric assembly "
                    f"(≈ 90 Å across) at {getattr(s, 'mic_pixel_size_A', '?')} Å/px, particle box "
                    f"{getattr(s, 'mic_box', '?')} px, started from the same specimen blurred by "
                    f"{getattr(s, 'mic_start_blur_px', '?')} px (a low-resolution start). Where the method "
                    "stops working: the 21 kDa monomer at 7.3 Å/px (6–7 px across) — its likelihood is "
                    "nearly flat between the open and closed states and the FSC does not rise "
                    "(docs/micrograph_em.md §11).")
        mics = sorted((out / "micrograph" / "data").glob("micrograph_*.mrc"))
        if mics:
            m, _ = read_mrc(mics[0])
            rep.figure(gallery_figure(m[None], ncols=1, title="Simulated micrograph"), "micrograph",
                       "The first simulated micrograph")
        fcsv = em / "fsc_per_iteration.csv"
        if fcsv.exists():
            import pandas as pd

            df = pd.read_csv(fcsv)
            shells = [c for c in df.columns if c.startswith("shell_")]
            first, last = df.iloc[0], df.iloc[-1]
            rep.table({f"FSC with the truth, {c.replace('_', ' ')}": f"{first[c]:.2f} → {last[c]:.2f}"
                       for c in shells[1:]}
                      | {"mean FSC (shells ≥ 1)": f"{np.mean([first[c] for c in shells[1:]]):.3f} → "
                                                  f"{np.mean([last[c] for c in shells[1:]]):.3f}"},
                      "Start (iteration 0) → after the last iteration")
        it = em / "iterations.csv"
        if it.exists():
            import pandas as pd

            df = pd.read_csv(it)
            tr = {c: df[c].to_numpy() for c in df.columns if c.lower().startswith(("fsc", "loglik", "log_lik"))}
            for name, y in tr.items():
                rep.figure(trace_figure({name: y}, ylabel=name, title=name), f"em_{name}", f"{name} per iteration")
        vol = em / "volume.mrc"
        small = out / "micrograph" / "truth_small.mrc"
        if vol.exists() and small.exists():
            v, psv = read_mrc(vol)
            t, _ = read_mrc(small)
            rep.figure(volume_slices_figure({"EM estimate": v, "truth (downsampled)": t}), "em_volume",
                       "Volume from micrographs and the truth")
            for png in sorted(em.glob("*.png")):
                rep.figure(png, png.stem, png.stem.replace("_", " "))
    return rep.write()


def _neighbour_accuracy(nb_csv: Path, star: Path) -> dict:
    import pandas as pd

    from cryoprism.geometry import viewing_direction
    from cryoprism.io import read_star, rotations

    if not star.exists():
        return {}
    nb = pd.read_csv(nb_csv)
    R = rotations(read_star(star))
    if R is None or not len(nb):
        return {}
    d = viewing_direction(R)
    cos = np.abs(np.sum(d[nb["i"].to_numpy()] * d[nb["j"].to_numpy()], axis=1))  # reflection = match
    ang = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    return {"neighbour pairs": int(len(nb)), "viewing directions within 10°": f"{100 * np.mean(ang < 10):.1f} %"}


def _figures(folder: Path) -> dict:
    """The figures a stage recorded (its ``summary.json``), or {} when it did not run."""
    import json

    f = Path(folder) / "summary.json"
    return json.loads(f.read_text()) if f.exists() else {}


def drift_figure(drift):
    """True (line) and estimated (dots) global drift of each movie (``drift.csv`` as a DataFrame), px."""
    import matplotlib.pyplot as plt

    movies = list(dict.fromkeys(drift["movie"]))
    fig, axes = plt.subplots(1, len(movies), figsize=(3.6 * len(movies), 3.6), squeeze=False)
    for ax, m in zip(axes[0], movies):
        d = drift[drift["movie"] == m]
        ax.plot(d["true_x_px"], d["true_y_px"], "-", color="0.3", lw=1.5, label="true")
        ax.plot(d["estimated_x_px"], d["estimated_y_px"], "o", ms=3.5, mfc="none", color="C3",
                label="estimated")
        ax.set_aspect("equal", "datalim")
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
        ax.set_title(m, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _movies_section(rep, out: Path, s) -> None:
    import pandas as pd

    from cryoprism.report import gallery_figure

    mv = out / "movies"
    if not (mv / "drift.csv").exists():
        return
    f = _figures(mv)
    rep.section("Movies → particles",
                f"{f.get('movies', '?')} simulated movies of {f.get('movie_shape', '?')} (frames, y, x) at "
                f"{s.pixel_size_A} Å/px, {getattr(s, 'movie_dose_per_frame_e_A2', '?')} e⁻/Å² per frame: both "
                "states at known positions in amorphous ice, through the CTF, moved along a global drift "
                "plus a smooth local deformation, with radiation damage and Poisson counts; then the "
                "library's preprocessing chain: motion correction → CTF → picking → extraction. These "
                "particles are too few for the stages below, which run on the simulated particle set.")
    rep.table({"true drift (px)": f.get("true_drift_px"),
               "global track error, r.m.s. after a common offset (px)": f.get("drift_error_rms_px"),
               "full displacement error (global + local model, 8 × 8 grid) (px)":
                   f.get("displacement_error_rms_px"),
               "true defocus (Å)": f.get("defocus_true_A"),
               "defocus error (%)": f.get("defocus_error_percent"),
               "picks / true particles": f"{f.get('picks')} / {f.get('true_particles')}",
               f"precision / recall / F1 (match within {f.get('match_radius_px', 0):.1f} px)":
                   f"{f.get('pick_precision')} / {f.get('pick_recall')} / {f.get('pick_f1')}",
               "particles extracted": f.get("particles_extracted")}, "Against the simulated truth")
    rep.figure(drift_figure(pd.read_csv(mv / "drift.csv")), "drift_tracks",
               "Global drift of each movie: true (line) and estimated by motion correction (circles). The "
               "estimated global track also carries the field-average of the local deformation, which the "
               "true global drift does not; the full displacement (global + local model) is what the "
               "table compares")
    if (mv / "ctf_fit.png").exists():
        rep.figure(mv / "ctf_fit.png", "ctf_fit", "CTF fit of the first motion-corrected micrograph")
    picks = sorted((mv / "preprocess" / "picks").glob("*.png"))
    if picks:
        rep.figure(picks[0], "picks", "Picks drawn on the first motion-corrected micrograph (the chain's figure)")
    star = mv / "preprocess" / "particles.star"
    if star.exists():
        try:
            from cryoprism.io import read_particles

            st = read_particles(star)
            rep.figure(gallery_figure(st.images(np.arange(min(16, st.n))), ncols=8,
                                      title="Extracted particles"), "extracted", "The first 16 extracted particles")
        except Exception:  # noqa: BLE001 — a figure missing is reported by its absence
            pass


def _refine_section(rep, out: Path, s) -> None:
    import pandas as pd

    from cryoprism.report import fsc_figure, volume_slices_figure

    rf = out / "refine"
    if not (rf / "iterations.csv").exists():
        return
    f = _figures(rf)
    state = {1: "open", 2: "closed"}.get(f.get("state"), f.get("state"))
    who = f"the {f.get('particles')} particles of the {state} state" if state is not None else "all particles"
    rounds = f.get("rounds") or []
    rep.section("Refinement", f"Gold-standard refinement of {who} from the ab-initio map (resampled to the "
                              "particle box by the library), poses unknown to it"
                + (f", in {len(rounds)} rounds, each started from the previous round's map" if len(rounds) > 1
                   else "")
                + "; then the heterogeneity analysis again, on the refined poses. Angular errors after the "
                  "best global rotation and hand. A consensus refinement of both states does not align the "
                  "compact closed state to any map but a closed one (docs/refine.md, 'Small particles and "
                  "small boxes'), so the demo refines the state of the ab-initio model. The gold-standard "
                  "resolution counts only what the half-maps found beyond the start they shared "
                  "(docs/refine.md, 'The gold standard and the shared start')."
                + (" The refinement did not find the poses here (median error above 20°)."
                   if f.get("median_angle_error_deg", 0) > 20 else "")
                + (" Its half-maps agree no further than their shared start: the resolution is not validated."
                   if f.get("resolution_validated") is False else ""))
    if rounds:
        rep.table({f"round {r['round']}": (f"start {r.get('start_resolution_A')} Å, {r.get('iterations')} iterations, "
                                           f"FSC 0.143 {r.get('resolution_A')} Å"
                                           f"{'' if r.get('resolution_validated') else ' (not validated)'}, "
                                           f"median error {r.get('median_angle_error_deg')}°, "
                                           f"{100 * r.get('within_10deg', float('nan')):.0f} % within 10°, "
                                           f"{r.get('cpu_s')} CPU-s")
                   for r in rounds}, "Refinement rounds (angular errors against the simulated poses)")
    fsc = rf / "fsc.csv"
    if fsc.exists():
        d = pd.read_csv(fsc)
        curves = {"half-maps": (d["freq_invA"].to_numpy(), d["fsc"].to_numpy())}
        if "fsc_uncorrected" in d:
            curves["half-maps, before removing the shared start"] = (d["freq_invA"].to_numpy(),
                                                                     d["fsc_uncorrected"].to_numpy())
        if "fsc_masked" in d:
            curves["half-maps, masked"] = (d["freq_invA"].to_numpy(), d["fsc_masked"].to_numpy())
        rep.figure(fsc_figure(curves, title="Refinement: gold-standard FSC"), "fsc_refine",
                   "FSC between the independently refined half-maps")
    it = pd.read_csv(rf / "iterations.csv")
    cols = [c for c in ("iteration", "box", "compared_resolution_A", "resolution_A", "median_angle_change_deg",
                        "time_s") if c in it.columns]
    rep.table({f"iteration {int(r['iteration'])}": ", ".join(f"{c} {r[c]:.3g}" for c in cols[1:])
               for _, r in it[cols].iterrows()}, "Iterations (box px, resolutions Å, angle change °, time s)")
    rows = {"gold-standard FSC 0.143 (Å)": f.get("resolution_A"),
            "validated beyond the shared start": (f"{f.get('resolution_validated')} (start "
                                                  f"{f.get('start_resolution_A')} Å)"),
            "median angular error vs simulated poses (°)": f.get("median_angle_error_deg"),
            "within 10°": f"{100 * f.get('within_10deg', float('nan')):.1f} %",
            "median angular error per true state (°)": ", ".join(
                f"{('open', 'closed')[int(k) - 1] if str(k) in ('1', '2') else k} {v:.1f}"
                for k, v in (f.get("median_angle_error_per_state_deg") or {}).items()),
            "hand flipped": f.get("mirrored")}
    for name, folder in (("true poses", "heterogeneity"), ("refined poses", "heterogeneity_refined")):
        h = _figures(out / folder)
        if "accuracy_vs_true_state" in h:
            rows[f"heterogeneity on {name}: states, accuracy vs true state"] = (
                f"{h.get('states')}, {100 * h['accuracy_vs_true_state']:.1f} %")
    rep.table(rows)
    ref = rf / "refined.mrc"
    if ref.exists():
        from cryoprism.io import read_mrc

        rep.figure(volume_slices_figure({"refined": read_mrc(ref)[0]}), "refined",
                   "Refined map (in the frame of the ab-initio map)")
