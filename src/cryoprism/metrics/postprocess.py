"""Post-processing of two half-maps: mask-corrected FSC, B-factor sharpening and local resolution.

* Masked FSC corrected for the mask by phase randomisation (Chen et al. 2013): the phases of both
  half-maps are randomised beyond the shell where the unmasked FSC falls below ``randomize_at_fsc``
  (0.8, as RELION), the randomised maps are masked, and beyond that shell
  ``FSC_true = (FSC_masked − FSC_random) / (1 − FSC_random)`` (from the third randomised shell on, as
  RELION: next to the cut the randomised curve is dominated by leakage of the intact neighbour shells).
  ``FSC_random`` is the expectation over the random phases, computed in closed form rather than drawn
  once (a single draw moved the 0.143 crossing of refined half-maps by ±1.3 shells).
* Sharpening (Rosenthal & Henderson 2003): the masked average is weighted by the figure of merit
  ``√(2 FSC / (1 + FSC))``, a line is fitted to its Guinier plot between ``d_low_A`` (10 Å) and the
  resolution, the map is multiplied by ``exp(−B s²/4)`` with the fitted ``B`` (negative: sharpening) and
  low-passed at the resolution.
* Local resolution: FSC between the half-maps inside a soft spherical window centred on a grid of
  positions, resolution at 0.143 per window, interpolated (trilinear) onto the map.

See docs/postprocess.md for the derivations and the measured results.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cryoprism.fourier import fftnc, ifftnc, radial_index
from cryoprism.fourier.resample import shells_to_grid
from cryoprism.metrics.bfactor import GuinierFit, apply_bfactor, guinier_bfactor
from cryoprism.metrics.fsc import FSCResult, fsc, resolution_at

# --------------------------------------------------------------------------------------------------
# mask-corrected FSC (Chen et al. 2013)


@dataclass(frozen=True)
class MaskedFSC:
    """The four FSC curves of post-processing, on the same shells.

    ``randomize_shell``: the first shell whose phases were randomised (the first shell where the
    unmasked FSC falls below ``randomize_at_fsc``); ``corrected`` equals ``masked`` below
    ``randomize_shell + CORRECT_AFTER``.
    """

    unmasked: FSCResult
    masked: FSCResult
    randomized: FSCResult
    corrected: FSCResult
    randomize_shell: int

    @property
    def randomize_freq_invA(self) -> float:
        k = min(self.randomize_shell, len(self.unmasked.freq_invA) - 1)
        return float(self.unmasked.freq_invA[k])

    def resolution_A(self, threshold=0.143) -> float:
        """Resolution (Å) of the corrected curve at ``threshold``."""
        return resolution_at(self.corrected, threshold)

    def table(self) -> dict:
        """Columns for ``fsc.csv``: shell, frequency (1/Å), resolution (Å) and the four curves."""
        r = self.unmasked
        return {"shell": np.arange(len(r.curve)), "freq_invA": r.freq_invA, "resolution_A": r.resolution_A,
                "fsc_unmasked": r.curve, "fsc_masked": self.masked.curve,
                "fsc_phase_randomized_masked": self.randomized.curve, "fsc_corrected": self.corrected.curve,
                "n_voxels": r.n_voxels}


def randomize_shell(curve, randomize_at_fsc: float = 0.8) -> int:
    """First shell ``k ≥ 1`` where ``curve`` falls below ``randomize_at_fsc`` (``len(curve)`` if never)."""
    c = np.asarray(curve)
    below = np.nonzero(c[1:] < randomize_at_fsc)[0]
    return int(below[0]) + 1 if below.size else len(c)


@lru_cache(maxsize=4)
def _shell_index(shape) -> np.ndarray:
    k = radial_index(shape)
    k.flags.writeable = False
    return k


def _random_unit_phases(shape, rng) -> np.ndarray:
    """``e^{iφ}`` with the phases of the transform of real white noise (Friedel-symmetric)."""
    N = fftnc(rng.standard_normal(shape, dtype=np.float32), len(shape))
    absN = np.abs(N)
    return np.divide(N, absN, out=np.ones_like(N), where=absN > 0)  # e^{iφ} without trigonometry


def _randomized_transform(F, from_shell: int, rng) -> np.ndarray:
    """Real map of the centred transform ``F`` with random phases in shells ``k ≥ from_shell``."""
    unit = _random_unit_phases(F.shape, rng)
    return ifftnc(F * np.where(_shell_index(F.shape) >= from_shell, unit, 1), F.ndim).real


def randomize_phases(volume, from_shell: int, rng=None) -> np.ndarray:
    """``volume`` with the phases of every Fourier voxel in shells ``k ≥ from_shell`` replaced by random
    ones (amplitudes kept).

    The random phases are those of the transform of real white noise, so Friedel symmetry holds and the
    result is real.
    """
    rng = np.random.default_rng(rng)
    v = np.asarray(volume)
    out = _randomized_transform(fftnc(v, v.ndim), from_shell, rng)
    return out.astype(v.dtype if np.issubdtype(v.dtype, np.floating) else np.float64)


#: Phase draws of the randomised masked FSC; 0 = its expectation over the random phases
#: (:func:`expected_randomized_masked_fsc`, no draw at all). One draw (Chen et al. 2013, RELION) adds its own
#: estimation noise (≈ 1/√(n_k/2) per shell, as large as the masked FSC's) to the corrected curve; where
#: the curve runs close to the threshold over several shells the first crossing then moves by shells from
#: draw to draw, on average towards low resolution (measured on refined 50S half-maps: one draw
#: 27.2 ± 1.3 shells over ten draws, the expectation 27.9, truth 27.6; docs/postprocess.md §2).
PHASE_DRAWS = 0


def randomized_masked_fsc(half1, half2, mask, pixel_size_A: float, from_shell: int, n_draws: int = 1,
                          rng=0) -> FSCResult:
    """Masked FSC of the two half-maps with independent random phases in shells ``k ≥ from_shell``,
    averaged over ``n_draws`` phase draws (each half-map transformed once)."""
    rng = np.random.default_rng(rng)
    a, b = np.asarray(half1), np.asarray(half2)
    Fa, Fb = fftnc(a, a.ndim), fftnc(b, b.ndim)
    curves = []
    for _ in range(max(1, int(n_draws))):
        ra = _randomized_transform(Fa, from_shell, rng)
        rb = _randomized_transform(Fb, from_shell, rng)
        curves.append(fsc(ra, rb, pixel_size_A, mask=mask))
    first = curves[0]
    return FSCResult(freq_invA=first.freq_invA, curve=np.mean([c.curve for c in curves], axis=0),
                     n_voxels=first.n_voxels, pixel_size_A=first.pixel_size_A, box=first.box)


#: The correction starts this many shells after the first randomised one (RELION's choice): at the cut
#: the randomised maps' FSC is mostly the mask's leakage of the intact shell below, and leaked and own
#: power no longer add as the correction assumes (measured: a systematic dip of ~0.05 at the cut).
CORRECT_AFTER = 2


def correct_fsc(masked, randomized, from_shell: int) -> np.ndarray:
    """``(FSC_m − FSC_r) / (1 − FSC_r)`` for shells ``k ≥ from_shell``, ``FSC_m`` below (Chen et al. 2013)."""
    m = np.asarray(masked, dtype=np.float64)
    r = np.asarray(randomized, dtype=np.float64)
    out = m.copy()
    k = np.arange(len(m)) >= from_shell
    den = 1.0 - r
    ok = k & (den > 1e-6)
    out[ok] = (m[ok] - r[ok]) / den[ok]
    out[k & ~ok] = 0.0
    return out


def _shell_sum(values, n_shells: int) -> np.ndarray:
    k = _shell_index(values.shape).ravel()
    keep = k < n_shells
    return np.bincount(k[keep], weights=values.ravel()[keep], minlength=n_shells)


def _cyclic_convolver(a):
    """``b ↦ Σ_p a(q − p) b(p)`` for real centred Fourier-space arrays (indices modulo the box); the
    transform of ``a`` is computed once."""
    import scipy.fft as sfft

    from cryoprism.parallel.config import fft_workers

    w = fft_workers()
    Fa = sfft.fftn(sfft.ifftshift(a), workers=w)

    def conv(b):
        return sfft.fftshift(sfft.ifftn(Fa * sfft.fftn(sfft.ifftshift(b), workers=w), workers=w).real)

    return conv


def expected_randomized_masked_fsc(half1, half2, mask, pixel_size_A: float, from_shell: int) -> FSCResult:
    """The masked FSC of the phase-randomised half-maps in expectation over the random phases (the limit
    of infinitely many phase draws), computed without drawing any (docs/postprocess.md §2).

    Split each half-map's transform into its intact part ``A_i`` (shells ``< from_shell``) and the part
    ``B_i`` whose phases are randomised. Independent uniform phases make every cross term with ``B_i``
    vanish in expectation, so per Fourier voxel ``q`` of the masked maps (``M`` = transform of the mask,
    ``N`` voxels, unnormalised DFTs)

        E[X₁ X₂*] = Ã₁ Ã₂*,   E|X_i|² = |Ã_i|² + N⁻² Σ_p |M(q − p)|² |B_i(p)|²,

    with ``Ã_i`` the transform of ``mask × A_i``; the shell sums of these give the curve (a ratio of
    expectations, exact to O(1/n_k)). Cost: 12 FFTs of the box, deterministic.
    """
    a, b, m = (np.asarray(x, dtype=np.float64) for x in (half1, half2, mask))
    nd = a.ndim
    L = a.shape[0]
    n_sh = L // 2 + 1
    low = _shell_index(a.shape) < from_shell
    leak = _cyclic_convolver(np.abs(fftnc(m, nd)) ** 2)
    masked_low, power_high = [], []
    for v in (a, b):
        F = fftnc(v, nd)
        masked_low.append(fftnc(m * ifftnc(np.where(low, F, 0), nd).real, nd))
        power_high.append(leak(np.where(low, 0, np.abs(F) ** 2)) / a.size ** 2)
    A1, A2 = masked_low
    num = _shell_sum(A1.real * A2.real + A1.imag * A2.imag, n_sh)
    p1 = _shell_sum(np.abs(A1) ** 2 + power_high[0], n_sh)
    p2 = _shell_sum(np.abs(A2) ** 2 + power_high[1], n_sh)
    den = np.sqrt(p1 * p2)
    curve = np.divide(num, den, out=np.zeros(n_sh), where=den > 0)
    n_vox = np.bincount(_shell_index(a.shape).ravel(), minlength=n_sh)[:n_sh]
    return FSCResult(freq_invA=np.arange(n_sh) / (L * float(pixel_size_A)), curve=curve, n_voxels=n_vox,
                     pixel_size_A=float(pixel_size_A), box=L)


def mask_corrected_fsc(half1, half2, mask, pixel_size_A: float, randomize_at_fsc: float = 0.8,
                       rng=0, n_draws: int = PHASE_DRAWS) -> MaskedFSC:
    """Unmasked, masked, phase-randomised masked and corrected FSC of two half-maps (Chen et al. 2013).

    Both half-maps get independent random phases beyond :func:`randomize_shell` of the unmasked FSC. The
    randomised masked FSC is its expectation over the phases (``n_draws=0``, the default:
    :func:`expected_randomized_masked_fsc`, deterministic) or the mean over ``n_draws`` phase draws
    (:func:`randomized_masked_fsc` with ``rng``; ``n_draws=1`` is the single draw of Chen et al. 2013).
    """
    rng = np.random.default_rng(rng)
    un = fsc(half1, half2, pixel_size_A)
    ms = fsc(half1, half2, pixel_size_A, mask=mask)
    k0 = randomize_shell(un.curve, randomize_at_fsc)
    if k0 < len(un.curve):
        if n_draws > 0:
            rnd = randomized_masked_fsc(half1, half2, mask, pixel_size_A, k0, n_draws, rng)
        else:
            rnd = expected_randomized_masked_fsc(half1, half2, mask, pixel_size_A, k0)
    else:  # the FSC never drops below the threshold: nothing to randomise
        rnd = ms
    corr = correct_fsc(ms.curve, rnd.curve, k0 + CORRECT_AFTER)
    corrected = FSCResult(freq_invA=un.freq_invA, curve=corr, n_voxels=un.n_voxels,
                          pixel_size_A=un.pixel_size_A, box=un.box)
    return MaskedFSC(unmasked=un, masked=ms, randomized=rnd, corrected=corrected, randomize_shell=k0)


# --------------------------------------------------------------------------------------------------
# FSC weighting, B-factor, sharpening


def fsc_weight(curve) -> np.ndarray:
    """Figure of merit of the full map, ``√(2 FSC / (1 + FSC))`` (FSC clipped to [0, 1])
    (Rosenthal & Henderson 2003)."""
    f = np.clip(np.asarray(curve, dtype=np.float64), 0.0, 1.0)
    return np.sqrt(2.0 * f / (1.0 + f))


def _radial_filter(volume, profile) -> np.ndarray:
    """Multiply the transform by a shell profile (linearly interpolated in the radius)."""
    from cryoprism.image.filters import apply_radial_filter

    v = np.asarray(volume)
    return apply_radial_filter(v, shells_to_grid(np.asarray(profile), v.shape), v.ndim)


def _lowpass(volume, pixel_size_A: float, resolution_A: float) -> np.ndarray:
    from cryoprism.image.filters import lowpass

    return lowpass(volume, pixel_size_A, resolution_A=resolution_A, ndim=np.ndim(volume))


def estimate_bfactor(weighted, pixel_size_A: float, resolution_A: float,
                     d_low_A: float = 10.0) -> GuinierFit | None:
    """Guinier fit of the FSC-weighted masked map between ``d_low_A`` and ``resolution_A``.

    Returns None when fewer than 3 shells lie in that band (resolution near or worse than ``d_low_A``).
    """
    try:
        return guinier_bfactor(weighted, pixel_size_A, d_low_A=d_low_A, d_high_A=resolution_A)
    except ValueError:
        return None


def sharpen(weighted, pixel_size_A: float, bfactor_A2: float, resolution_A: float) -> np.ndarray:
    """Apply the (negative: sharpening) ``bfactor_A2`` to an FSC-weighted map and low-pass it at
    ``resolution_A`` (raised-cosine edge, 1/2 at the resolution)."""
    return _lowpass(apply_bfactor(weighted, pixel_size_A, bfactor_A2), pixel_size_A, resolution_A)


# --------------------------------------------------------------------------------------------------
# local resolution


@dataclass(frozen=True)
class LocalResolution:
    """Local resolution: ``map_A`` (same box as the half-maps, Å per voxel), ``grid_A`` (the windows'
    resolutions on the grid, NaN where not computed), the window centres along each axis
    (``centres_px``), the window radius and edge (pixels) and the grid step (pixels)."""

    map_A: np.ndarray
    grid_A: np.ndarray
    centres_px: np.ndarray
    radius_px: float
    edge_px: float
    step_px: int


def _window_defaults(L: int, radius_px, edge_px, step_px):
    r = float(max(6.0, round(L / 10))) if radius_px is None else float(radius_px)
    e = 0.5 * r if edge_px is None else float(edge_px)
    s = int(max(1, round(r / 2))) if step_px is None else int(step_px)
    return r, e, s


def _windows(padded, centres, W):
    """Cubes of side ``W`` of the padded map with their centre (index W//2) at ``centres`` (n, 3)."""
    view = np.lib.stride_tricks.sliding_window_view(padded, (W, W, W))
    return view[centres[:, 0], centres[:, 1], centres[:, 2]]


def _window_fsc(a, b, onehot):
    """FSC per window of two stacks of windows (n, W, W, W); ``onehot`` (W³, shells) sums shells."""
    import scipy.fft as sfft

    from cryoprism.parallel.config import fft_workers

    workers = fft_workers()
    Fa = sfft.fftn(a, axes=(1, 2, 3), workers=workers).reshape(len(a), -1)
    Fb = sfft.fftn(b, axes=(1, 2, 3), workers=workers).reshape(len(b), -1)
    num = (Fa.real * Fb.real + Fa.imag * Fb.imag) @ onehot
    pa = (Fa.real ** 2 + Fa.imag ** 2) @ onehot
    pb = (Fb.real ** 2 + Fb.imag ** 2) @ onehot
    den = np.sqrt(pa * pb)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def local_resolution(half1, half2, pixel_size_A: float, mask=None, *, radius_px: float | None = None,
                     edge_px: float | None = None, step_px: int | None = None, threshold=0.143,
                     randomize_from_freq_invA: float | None = None, rng=0, batch: int = 128,
                     progress: bool = False) -> LocalResolution:
    """Local resolution by windowed FSC between the half-maps (as blocres, RELION's ``--locres``).

    Windows: a ball of ``radius_px`` (default ``max(6, L/10)``) with a raised-cosine edge of ``edge_px``
    (default ``radius/2``), in a cube of side ``W = 2⌈radius + edge⌉ + 2``, centred on a grid of step
    ``step_px`` (default ``radius/2``) through the box centre. Only centres where ``mask ≥ 0.5`` are
    computed (all with ``mask=None``). Each window's FSC gives a resolution at ``threshold``; with
    ``randomize_from_freq_invA`` the windowed FSC is corrected by phase randomisation beyond that
    frequency as the global one (off by default: it correlated less with the local truth). The grid
    values (holes filled with the nearest computed value) are interpolated trilinearly to every voxel.
    """
    from scipy import ndimage

    a = np.asarray(half1, dtype=np.float32)
    b = np.asarray(half2, dtype=np.float32)
    L = a.shape[0]
    r, e, step = _window_defaults(L, radius_px, edge_px, step_px)
    W = 2 * int(np.ceil(r + e)) + 2
    c = L // 2
    centres_1d = np.concatenate([np.arange(c, -1, -step)[::-1], np.arange(c + step, L, step)])
    n = len(centres_1d)
    zz, yy, xx = np.meshgrid(centres_1d, centres_1d, centres_1d, indexing="ij")
    centres = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1)
    todo = np.ones(len(centres), bool) if mask is None else \
        np.asarray(mask)[centres[:, 0], centres[:, 1], centres[:, 2]] >= 0.5
    if not todo.any():
        raise ValueError("local_resolution: no window centre inside the mask (mask ≥ 0.5)")

    from cryoprism.image.masks import spherical_mask

    window = spherical_mask(W, r, e)
    pads = [(W // 2, W - W // 2)] * 3
    maps = [a, b]
    rnd_from = None
    if randomize_from_freq_invA is not None:
        rnd_from = int(np.ceil(randomize_from_freq_invA * W * pixel_size_A - 1e-9))
        k_global = int(np.ceil(randomize_from_freq_invA * L * pixel_size_A - 1e-9))
        rng = np.random.default_rng(rng)
        maps += [randomize_phases(a, k_global, rng), randomize_phases(b, k_global, rng)]
    padded = [np.pad(m, pads) for m in maps]
    kk = np.fft.ifftshift(_shell_index((W, W, W))).ravel()
    n_sh = W // 2 + 1
    keep = kk < n_sh
    onehot = np.zeros((W ** 3, n_sh), np.float32)
    onehot[np.nonzero(keep)[0], kk[keep]] = 1.0
    n_vox = onehot.sum(0).astype(np.int64)
    freq = np.arange(n_sh) / (W * pixel_size_A)

    idx = np.nonzero(todo)[0]
    res = np.full(len(centres), np.nan)
    it = range(0, len(idx), batch)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="local resolution", unit="batch")
    for s0 in it:
        sel = idx[s0:s0 + batch]
        wins = [_windows(p, centres[sel], W) * window for p in padded]
        curves = _window_fsc(wins[0], wins[1], onehot)
        if rnd_from is not None and rnd_from < n_sh:
            rc = _window_fsc(wins[2], wins[3], onehot)
            curves = np.stack([correct_fsc(m, q, rnd_from + CORRECT_AFTER) for m, q in zip(curves, rc)])
        for i, cv in zip(sel, curves):
            res[i] = resolution_at(FSCResult(freq_invA=freq, curve=cv, n_voxels=n_vox,
                                             pixel_size_A=float(pixel_size_A), box=W), threshold)
    res[todo] = np.clip(res[todo], 2.0 * pixel_size_A, W * pixel_size_A)  # no worse than the first shell
    grid = res.reshape(n, n, n)
    filled = grid.copy()
    holes = np.isnan(filled)
    if holes.any():
        near = ndimage.distance_transform_edt(holes, return_distances=False, return_indices=True)
        filled = filled[tuple(near)]
    coords = (np.arange(L) - centres_1d[0]) / step
    cz, cy, cx = np.meshgrid(coords, coords, coords, indexing="ij")
    out = ndimage.map_coordinates(filled, [cz, cy, cx], order=1, mode="nearest")
    return LocalResolution(map_A=out.astype(np.float32), grid_A=grid, centres_px=centres_1d, radius_px=r,
                           edge_px=e, step_px=step)


# --------------------------------------------------------------------------------------------------
# the whole post-processing


@dataclass(frozen=True)
class PostprocessResult:
    """Everything post-processing computes. ``bfactor_A2`` is the B-factor applied to the map (negative
    sharpens; RELION's sign); ``guinier`` the fit it came from (None when given or when the band
    between ``d_low_A`` and the resolution was too narrow)."""

    fsc: MaskedFSC
    resolution_A: float
    bfactor_A2: float
    guinier: GuinierFit | None
    mask: np.ndarray
    sharpened: np.ndarray
    locres: LocalResolution | None
    auto_mask: bool


def postprocess(half1, half2, pixel_size_A: float, mask=None, *, bfactor_A2: float | str = "auto",
                locres: bool = False, randomize_at_fsc: float = 0.8, d_low_A: float = 10.0,
                threshold: float = 0.143, rng=0, phase_draws: int = PHASE_DRAWS, job=None,
                progress: bool = False) -> PostprocessResult:
    """Post-process two half-maps (cubic, same box, ``pixel_size_A`` Å/voxel).

    ``mask``: soft solvent mask; default :func:`cryoprism.image.auto_mask` of the half-maps' average.
    ``bfactor_A2``: ``"auto"`` (Guinier fit of the FSC-weighted masked average between ``d_low_A`` and
    the resolution; 0 when that band has fewer than 3 shells) or the B-factor to apply (Å², negative
    sharpens). ``phase_draws``: 0 (default) uses the randomised masked FSC's expectation over the
    phases, ``n > 0`` the mean of ``n`` draws from ``rng``. ``locres``: also compute
    :func:`local_resolution`. With ``job`` (:class:`cryoprism.io.job.Job`) writes ``mask.mrc``,
    ``postprocess.mrc`` (sharpened, FSC-weighted, low-passed at the resolution, masked), ``fsc.csv``,
    ``fsc.png`` and ``locres.mrc``.
    """
    from cryoprism.image.masks import auto_mask as _auto_mask

    a = np.asarray(half1, dtype=np.float32)
    b = np.asarray(half2, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"half-maps must be cubic volumes of one box, got {a.shape} and {b.shape}")
    avg = 0.5 * (a + b)
    is_auto = mask is None
    m = _auto_mask(avg, pixel_size_A) if is_auto else np.asarray(mask, dtype=np.float32)
    log = job.log if job is not None else None
    curves = mask_corrected_fsc(a, b, m, pixel_size_A, randomize_at_fsc, rng, phase_draws)
    res = curves.resolution_A(threshold)
    if log:
        log.info("phases randomised from shell %d (%.2f Å); resolution %.2f Å", curves.randomize_shell,
                 1 / max(curves.randomize_freq_invA, 1e-12), res)
    weighted = _radial_filter(avg * m, fsc_weight(curves.corrected.curve))
    fit = None
    if isinstance(bfactor_A2, str):
        if bfactor_A2 != "auto":
            raise ValueError(f"bfactor_A2 must be 'auto' or a number, got {bfactor_A2!r}")
        fit = estimate_bfactor(weighted, pixel_size_A, res, d_low_A)
        if fit is None and log:
            log.warning("fewer than 3 shells between %.1f Å and %.2f Å: no B-factor sharpening", d_low_A, res)
        B = -fit.bfactor_A2 if fit is not None else 0.0
    else:
        B = float(bfactor_A2)
    sharp = sharpen(weighted, pixel_size_A, B, res) * m
    lr = None
    if locres:
        # no phase-randomisation correction in the windows: measured closer to the local truth without
        # (docs/postprocess.md §4)
        lr = local_resolution(a, b, pixel_size_A, m, threshold=threshold, progress=progress)
    out = PostprocessResult(fsc=curves, resolution_A=res, bfactor_A2=B, guinier=fit, mask=m,
                            sharpened=sharp.astype(np.float32), locres=lr, auto_mask=is_auto)
    if job is not None:
        write_outputs(out, pixel_size_A, job)
    return out


def fsc_figure(curves: MaskedFSC, resolution_A: float | None = None):
    """The four FSC curves with the 0.143 line and the randomisation frequency."""
    from cryoprism.report.plots import fsc_figure as _fsc_figure

    f = curves.unmasked.freq_invA
    fig = _fsc_figure({"unmasked": (f, curves.unmasked.curve), "masked": (f, curves.masked.curve),
                       "phase-randomised masked": (f, curves.randomized.curve),
                       "corrected": (f, curves.corrected.curve)}, thresholds=(0.143,),
                      title="FSC of the half-maps" + ("" if resolution_A is None
                                                      else f" — {resolution_A:.2f} Å at 0.143"))
    ax = fig.axes[0]
    if curves.randomize_shell < len(f):
        ax.axvline(curves.randomize_freq_invA, color="grey", lw=0.8, ls=":")
    return fig


def write_outputs(result: PostprocessResult, pixel_size_A: float, job) -> None:
    """Write the post-processing outputs and figures through ``job`` (see :func:`postprocess`)."""
    job.write_mrc("mask.mrc", result.mask.astype(np.float32), pixel_size_A)
    job.write_mrc("postprocess.mrc", result.sharpened, pixel_size_A)
    job.write_csv("fsc.csv", result.fsc.table())
    job.save_figure("fsc.png", fsc_figure(result.fsc, result.resolution_A))
    if result.locres is not None:
        job.write_mrc("locres.mrc", result.locres.map_A, pixel_size_A)
    figures = {"resolution_A": result.resolution_A, "bfactor_A2": result.bfactor_A2,
               "randomize_shell": result.fsc.randomize_shell,
               "randomize_resolution_A": 1.0 / result.fsc.randomize_freq_invA
               if result.fsc.randomize_shell < len(result.fsc.unmasked.curve) else None,
               "resolution_unmasked_A": resolution_at(result.fsc.unmasked, 0.143),
               "resolution_masked_A": resolution_at(result.fsc.masked, 0.143),
               "mask": "auto" if result.auto_mask else "given",
               "mask_volume_fraction": float((result.mask >= 0.5).mean())}
    if result.guinier is not None:
        figures["guinier_band_A"] = [float(1 / np.sqrt(result.guinier.s2_invA2[result.guinier.fitted].max())),
                                     float(1 / np.sqrt(result.guinier.s2_invA2[result.guinier.fitted].min()))]
    if result.locres is not None:
        inside = result.mask >= 0.5
        v = result.locres.map_A[inside]
        figures["locres_median_A"] = float(np.median(v))
        figures["locres_range_A"] = [float(np.percentile(v, 5)), float(np.percentile(v, 95))]
    job.record(**figures)


__all__ = ["MaskedFSC", "LocalResolution", "PostprocessResult", "randomize_shell", "randomize_phases",
           "correct_fsc", "mask_corrected_fsc", "fsc_weight", "estimate_bfactor", "sharpen",
           "local_resolution", "postprocess", "write_outputs", "fsc_figure"]
