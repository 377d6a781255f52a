"""Figures every part of cryoprism draws the same way (matplotlib, Agg backend, PNG out)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryoprism.io.atomic import atomic_path  # noqa: E402


def save(fig, path) -> Path:
    """Save a figure atomically as PNG and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def fsc_figure(curves: dict, thresholds=(0.143, 0.5), title: str = "Fourier shell correlation"):
    """``curves``: name → (frequencies in 1/Å, FSC values)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, (f, c) in curves.items():
        ax.plot(f, c, label=name, lw=1.5)
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
        ax.text(0.0, t + 0.01, f"{t}", color="grey", fontsize=7)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    secax = ax.secondary_xaxis("top", functions=(lambda s: s, lambda s: s))
    ticks = ax.get_xticks()
    secax.set_xticks(ticks[ticks > 0])
    secax.set_xticklabels([f"{1 / t:.1f}" for t in ticks[ticks > 0]])
    secax.set_xlabel("resolution (Å)", fontsize=8)
    return fig


def spectrum_figure(eigenvalues, n_states: int | None = None, title: str = "Covariance eigenvalues"):
    ev = np.asarray(eigenvalues)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    idx = np.arange(1, len(ev) + 1)
    ax.bar(idx, ev, color="tab:blue")
    if n_states:
        ax.axvline(n_states - 0.5, color="tab:red", ls="--", label=f"gap → {n_states} states")
        ax.legend(fontsize=8)
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.set_title(title)
    return fig


def histogram_figure(labels, title: str = "Particles per class"):
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar([str(c) for c in classes], counts, color="tab:green")
    ax.set_xlabel("class")
    ax.set_ylabel("particles")
    ax.set_title(title)
    return fig


def gallery_figure(images, titles=None, ncols: int = 8, title: str | None = None):
    """A grid of 2-D images (class averages, projections, slices)."""
    images = np.asarray(images)
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.4 * nrows + (0.3 if title else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], cmap="gray")
            if titles is not None:
                ax.set_title(str(titles[k]), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def volume_slices_figure(volumes: dict, title: str | None = None):
    """Central z, y, x slices and the z-projection of each named volume ``[z, y, x]``."""
    names = list(volumes)
    fig, axes = plt.subplots(len(names), 4, figsize=(6.4, 1.7 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        v = np.asarray(volumes[name])
        c = [s // 2 for s in v.shape]
        panels = [v[c[0]], v[:, c[1]], v[:, :, c[2]], v.sum(0)]
        for k, (ax, p, lab) in enumerate(zip(axes[r], panels, ["z slice", "y slice", "x slice", "projection"])):
            ax.imshow(p, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(lab, fontsize=8)
            if k == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def trace_figure(traces: dict, xlabel: str = "iteration", ylabel: str = "value", title: str | None = None):
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, y in traces.items():
        ax.plot(np.asarray(y), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(traces) > 1:
        ax.legend(fontsize=7)
    return fig


def abinitio_trace_figure(initial_traces, refinement_trace, best: int):
    """Log-posterior of each initial-stage restart per alternation (the best one bold) and of the
    refinement per recorded sweep."""
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for r, tr in enumerate(initial_traces):
        ax[0].plot(np.arange(1, len(tr) + 1), tr, marker="o", lw=2 if r == best else 1,
                   label=f"restart {r}" + (" (best)" if r == best else ""))
    ax[0].set_xlabel("alternation")
    ax[0].set_ylabel("log-posterior")
    ax[0].set_title("initial stage")
    ax[0].legend(fontsize=7)
    ax[1].plot(refinement_trace, marker=".")
    ax[1].set_xlabel("recorded sweep")
    ax[1].set_title("refinement")
    fig.tight_layout()
    return fig


def heterogeneity_figure(res):
    """A heterogeneity result (:class:`cryoprism.heterogeneity.HeterogeneityResult`): eigenvalue
    spectrum with the gap, coordinates coloured by class, central slices of the class volumes."""
    C = res.n_states
    ncol = 2 + max(C, 1)
    fig, ax = plt.subplots(1, ncol, figsize=(3.2 * ncol, 3.2))
    lam = res.covariance.eigenvalues[:min(30, len(res.covariance.eigenvalues))]
    ax[0].bar(np.arange(1, len(lam) + 1), lam, color=["C3" if i < C - 1 else "C0" for i in range(len(lam))])
    gap = res.states.gaps.max() if res.states.gaps.size else 0.0
    ax[0].set_title(f"eigenvalues: {C} state(s), gap {gap:.2f}")
    ax[0].set_xlabel("index")
    a = res.coords
    if a.shape[1] >= 2:
        for k in range(C):
            s = res.labels == k
            ax[1].scatter(a[s, 0], a[s, 1], s=2, alpha=0.4, label=f"class {k + 1}")
        ax[1].set_xlabel("α₁")
        ax[1].set_ylabel("α₂")
    else:
        bins = np.linspace(a[:, 0].min(), a[:, 0].max(), 60)
        for k in range(C):
            ax[1].hist(a[res.labels == k, 0], bins=bins, alpha=0.6, label=f"class {k + 1}")
        ax[1].set_xlabel("α₁")
    ax[1].set_title("coordinates")
    ax[1].legend(fontsize=7)
    vols = res.class_volumes or [res.mean]
    for k in range(ncol - 2):
        if k < len(vols):
            v = vols[k]
            ax[2 + k].imshow(v[v.shape[0] // 2], cmap="gray")
            ax[2 + k].set_title(f"class {k + 1} (z = L/2)")
        ax[2 + k].axis("off")
    fig.tight_layout()
    return fig


def fsc_per_iteration_figure(rows: list, freq_invA, title: str = ""):
    """FSC curves ``rows = [(iteration, curve), ...]`` coloured by iteration (0 = initial volume)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    n = len(rows)
    for j, (it, c) in enumerate(rows):
        ax.plot(freq_invA, c, color=cmap(j / max(n - 1, 1)), lw=1.2,
                label=f"iteration {it}" if j in (0, n - 1) else None)
    ax.axhline(0.5, color="k", ls="--", lw=0.8)
    ax.set_xlabel("spatial frequency (1/Å)" if freq_invA[-1] < 1 else "shell")
    ax.set_ylabel("FSC with band-limited truth")
    ax.set_ylim(-0.2, 1.02)
    ax.set_title(title or "FSC per iteration (iteration 0 = initial volume)")
    ax.legend()
    fig.tight_layout()
    return fig
