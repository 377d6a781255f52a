"""Micrograph preparation for the patch EM: patches, noise spectrum, whitening, the model filter.

* :func:`cut_patches` — non-overlapping ``L × L`` patches (Kreymer, Singer & Bendory 2025 §3.1).
* :func:`noise_profile` / :func:`whiten_micrograph` — radial power spectrum of the micrograph
  (cycles/pixel) and division of the micrograph's transform by its square root.
* :class:`ModelFilter` — the linear filter that acts on a particle image in the likelihood: the
  micrograph's CTF (RELION convention) times the whitening filter; :func:`filter_images` applies it
  to a stack of particle-box images, returning a larger box (the filtered image spreads).
* :func:`estimate_noise_variance` — white-noise variance from the quietest patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy.stats import chi2

from cryoprism.ctf.model import CTFParams, ctf_on_grid
from cryoprism.parallel.config import fft_workers


def cut_patches(micrograph: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping ``L × L`` patches ``(P, L, L)`` in row-major order and their top-left
    corners ``(P, 2)`` (row, col); the last ``H mod L`` rows and ``W mod L`` columns are dropped."""
    m = np.asarray(micrograph)
    H, W = m.shape
    ny, nx = H // L, W // L
    p = m[: ny * L, : nx * L].reshape(ny, L, nx, L).transpose(0, 2, 1, 3).reshape(ny * nx, L, L)
    rr, cc = np.meshgrid(np.arange(ny) * L, np.arange(nx) * L, indexing="ij")
    return np.ascontiguousarray(p, dtype=np.float32), np.stack([rr.ravel(), cc.ravel()], axis=1)


def _radial_freq(shape) -> np.ndarray:
    fy = sfft.fftfreq(shape[0])[:, None]
    fx = sfft.rfftfreq(shape[1])[None, :]
    return np.sqrt(fy * fy + fx * fx)


def noise_profile(micrograph: np.ndarray, block: int = 64, n_bins: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Radial power spectrum of the micrograph ``(freqs_cpp, power)``: the mean ``|F|² / block²``
    of non-overlapping ``block × block`` tiles, averaged in ``n_bins`` radial bins up to the corner
    (cycles/pixel). White noise of variance σ² gives ``power ≈ σ²``."""
    m = np.asarray(micrograph, dtype=np.float64)
    block = int(min(block, m.shape[0], m.shape[1]))
    tiles, _ = cut_patches(m, block)
    tiles = tiles.astype(np.float64) - m.mean()
    F = sfft.rfft2(tiles, workers=fft_workers())
    ps = (np.abs(F) ** 2).mean(0) / block**2
    r = _radial_freq((block, block))
    edges = np.linspace(0, np.sqrt(0.5), n_bins + 1)
    idx = np.clip(np.digitize(r.ravel(), edges) - 1, 0, n_bins - 1)
    cnt = np.bincount(idx, minlength=n_bins)
    prof = np.bincount(idx, ps.ravel(), minlength=n_bins) / np.maximum(cnt, 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    ok = cnt > 0
    return centres[ok], prof[ok]


def whiten_micrograph(micrograph: np.ndarray, profile: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Micrograph (mean removed) divided in Fourier space by ``√power(|s|)``."""
    m = np.asarray(micrograph, dtype=np.float64)
    f, p = profile
    F = sfft.rfft2(m - m.mean(), workers=fft_workers())
    F /= np.sqrt(np.interp(_radial_freq(m.shape), f, p))
    return sfft.irfft2(F, s=m.shape, workers=fft_workers()).astype(np.float32)


@dataclass(frozen=True)
class ModelFilter:
    """Transfer function applied to particle images in the likelihood: ``CTF(s) / √power(s)``.

    ``ctf`` (RELION CTFParams, scalar fields) needs ``pixel_size_A``; ``profile`` is the whitening
    profile of :func:`noise_profile` (cycles/pixel). Both optional; with neither it is the identity.
    """

    ctf: CTFParams | None = None
    pixel_size_A: float | None = None
    profile: tuple | None = None

    @property
    def identity(self) -> bool:
        return self.ctf is None and self.profile is None

    def transfer(self, G: int) -> np.ndarray:
        """Transfer function on the unshifted ``G × G`` rfft grid ``(G, G//2+1)``."""
        fy = sfft.fftfreq(G)[:, None] * np.ones((1, G // 2 + 1))
        fx = sfft.rfftfreq(G)[None, :] * np.ones((G, 1))
        out = np.ones_like(fy)
        if self.ctf is not None:
            if not self.pixel_size_A:
                raise ValueError("a CTF needs pixel_size_A")
            s = np.hypot(fx, fy) / self.pixel_size_A
            out = out * ctf_on_grid(s, np.arctan2(fy, fx), self.ctf)
        if self.profile is not None:
            f, p = self.profile
            out = out / np.sqrt(np.interp(np.hypot(fx, fy), f, p))
        return out


def _fast(n: int) -> int:
    return sfft.next_fast_len(int(n), real=True)


def filter_images(images: np.ndarray, filt: ModelFilter, margin: int) -> np.ndarray:
    """Apply ``filt`` to images ``(L, L, ...)`` (trailing axes batched), returning the centred
    ``(L + 2 margin)`` box. The filter is applied on a zero-padded grid wide enough that its
    circular wrap does not reach the returned box."""
    x = np.asarray(images, dtype=np.float64)
    L = x.shape[0]
    Lb = L + 2 * margin
    if filt.identity:
        out = np.zeros((Lb, Lb) + x.shape[2:])
        out[margin:margin + L, margin:margin + L] = x
        return out
    G = _fast(max(4 * Lb, 128))
    pad = np.zeros((G, G) + x.shape[2:])
    o = G // 2 - L // 2
    pad[o:o + L, o:o + L] = x
    F = sfft.rfft2(sfft.ifftshift(pad, axes=(0, 1)), axes=(0, 1), workers=fft_workers())
    T = filt.transfer(G).reshape((G, G // 2 + 1) + (1,) * (x.ndim - 2))
    y = sfft.fftshift(sfft.irfft2(F * T, s=(G, G), axes=(0, 1), workers=fft_workers()), axes=(0, 1))
    o2 = G // 2 - Lb // 2
    return y[o2:o2 + Lb, o2:o2 + Lb]


def filter_margin(filt: ModelFilter, L: int, energy: float = 0.97, max_margin: int | None = None) -> int:
    """Smallest margin ``e`` such that the filter's point-spread function keeps ``energy`` of its
    energy inside a ``(2e+1)²`` square (0 for the identity), capped at ``max_margin`` (default L)."""
    if filt.identity:
        return 0
    max_margin = L if max_margin is None else int(max_margin)
    G = _fast(4 * L + 8)
    psf = sfft.fftshift(sfft.irfft2(filt.transfer(G), s=(G, G), workers=fft_workers()))
    e2 = psf**2
    tot = e2.sum()
    c = G // 2
    for e in range(0, max_margin + 1):
        if e2[c - e:c + e + 1, c - e:c + e + 1].sum() >= energy * tot:
            return e
    return max_margin


def estimate_noise_variance(patches: np.ndarray, quantile: float = 0.1) -> float:
    """White-noise variance from the ``quantile`` of per-patch mean squares (the quietest patches,
    mostly empty), divided by the same quantile of ``χ²_n / n`` (``n = L²``) so that pure noise
    gives an unbiased estimate."""
    p = np.asarray(patches, dtype=np.float64)
    n = p.shape[-1] * p.shape[-2]
    ms = (p.reshape(p.shape[0], -1) ** 2).mean(1)
    return float(np.quantile(ms, quantile) / (chi2.ppf(quantile, n) / n))
