"""CTF estimation from a micrograph: averaged periodogram, smooth background, Thon-ring fit.

Method (docs/ctf.md):

1. **Periodogram averaging.** The micrograph is cut into overlapping tiles (``tile_px``², 50 %
   overlap); each tile has its mean removed and its power spectrum ``|F|²`` is averaged
   (Welch's method). The amplitude spectrum ``A = √PS`` is fitted.
2. **1-D search.** The rotational average ``a(s)`` over the fitting band (default 30–5 Å) is
   modelled as ``a(s) = b(s) + c · CTF²(s; Δf)`` with ``b`` a low-order polynomial in ``s`` (the
   smooth background). For every defocus on a grid the score is the partial correlation between
   ``a`` and ``CTF²`` after projecting the polynomial out of both; the best grid point is refined
   with a bounded scalar search.
3. **2-D refinement.** The background ``b`` of the best 1-D fit is subtracted from the 2-D
   amplitude spectrum; the residual is divided by its smoothed radial r.m.s. (so every ring counts
   alike) and its Pearson correlation with ``CTF²(s, α; U, V, θ)`` over the band is maximised with
   Nelder–Mead in the smooth parameters ``(Δf_mean, a_x, a_y)``,
   ``U, V = Δf_mean ± |a|, θ = ½ atan2(a_y, a_x)`` (no singularity at zero astigmatism).
4. **Fit resolution.** The residual spectrum is averaged on equal-phase contours (each pixel's
   frequency rescaled by ``√(Δf(α)/Δf_mean)``) and correlated with the model over sliding
   windows of two Thon rings; the fit resolution is where that correlation first drops below 0.3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize

from cryoprism.ctf.model import CTFParams, electron_wavelength_A
from cryoprism.fourier.core import fft2c, freq_grid
from cryoprism.parallel import batch_ranges, map_reduce


@dataclass(frozen=True)
class CTFFit:
    """Result of :func:`estimate_ctf` (defocus in Å, positive underfocus; angle in degrees)."""

    defocus_u_A: float
    defocus_v_A: float
    defocus_angle_deg: float
    score: float  # Pearson correlation of CTF² with the background-subtracted spectrum in the band
    fit_resolution_A: float  # highest resolution to which the Thon rings agree with the model
    defocus_1d_A: float  # the rotationally averaged (1-D) estimate that starts the 2-D fit
    band_A: tuple[float, float]
    tile_px: int
    n_tiles: int

    def params(self, voltage_kV: float, cs_mm: float, amplitude_contrast: float) -> CTFParams:
        """The fitted CTF as :class:`CTFParams`."""
        return CTFParams(self.defocus_u_A, self.defocus_v_A, self.defocus_angle_deg, voltage_kV, cs_mm,
                         amplitude_contrast)

    def to_dict(self) -> dict:
        return asdict(self)


def tile_starts(n: int, tile: int, step: int) -> np.ndarray:
    """Tile start indices covering ``[0, n)`` with the given step (the last tile ends at ``n``)."""
    if n <= tile:
        return np.array([0])
    st = list(range(0, n - tile + 1, step))
    if st[-1] != n - tile:
        st.append(n - tile)
    return np.array(st)


def periodogram(micrograph: np.ndarray, tile_px: int = 512, overlap: float = 0.5,
                batch_size: int = 16) -> tuple[np.ndarray, int]:
    """Average power spectrum (centred, ``|F|²/N``) of overlapping mean-subtracted tiles.

    Returns ``(ps (T, T), n_tiles)``; ``T = tile_px`` (or the micrograph's smaller side if smaller,
    rounded down to even).
    """
    m = np.asarray(micrograph)
    if m.ndim != 2:
        raise ValueError(f"a micrograph must be 2-D, got shape {m.shape}")
    T = int(min(tile_px, m.shape[0], m.shape[1])) // 2 * 2
    if T < 32:
        raise ValueError(f"micrograph {m.shape} is too small for CTF estimation")
    step = max(1, int(round(T * (1 - overlap))))
    ys, xs = tile_starts(m.shape[0], T, step), tile_starts(m.shape[1], T, step)
    corners = [(y, x) for y in ys for x in xs]

    def one(rng):
        t = np.stack([m[y:y + T, x:x + T] for y, x in corners[rng[0]:rng[1]]]).astype(np.float32)
        t -= t.mean(axis=(1, 2), keepdims=True)
        F = fft2c(t)
        return (F.real**2 + F.imag**2).astype(np.float64).sum(axis=0)

    total = map_reduce(one, batch_ranges(len(corners), batch_size), progress=False)
    return total / (len(corners) * T * T), len(corners)


def _poly_basis(x: np.ndarray, degree: int) -> np.ndarray:
    """Orthonormal basis (columns) of polynomials of ``degree`` in ``x``."""
    t = (x - x.min()) / max(np.ptp(x), 1e-30) * 2 - 1
    V = np.polynomial.legendre.legvander(t, degree)
    q, _ = np.linalg.qr(V)
    return q


def _ctf2(s, ang, df_u, df_v, ang_deg, lam, cs_A, w_amp):
    dfz = 0.5 * (df_u + df_v) + 0.5 * (df_u - df_v) * np.cos(2 * (ang - np.deg2rad(ang_deg)))
    s2 = s * s
    g = np.pi * lam * dfz * s2 - 0.5 * np.pi * cs_A * lam**3 * s2 * s2 + w_amp
    return np.sin(g) ** 2


def _corr(a, b):
    a = a - a.mean()
    b = b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else 0.0


def _profile(sub_vals, kbins, n_bins):
    cnt = np.bincount(kbins, minlength=n_bins)
    tot = np.bincount(kbins, sub_vals, minlength=n_bins)
    ok = cnt > 0
    return ok, tot[ok] / cnt[ok]


class _Partial:
    """Partial correlation of data and model after projecting out a smooth background basis.

    ``score = <d_r, m_r> / (|d_r| |m − mean m|)`` where ``x_r`` is ``x`` minus its least-squares fit
    by the (weighted) background basis. Normalising by the model's total (not residual) variance
    penalises models the background could imitate (very low defocus: one broad ring).
    """

    def __init__(self, s, data, weight, degree):
        self.w = weight
        self.Q = np.ascontiguousarray(_poly_basis(s, degree) if weight is None else np.linalg.qr(
            weight[:, None] * np.polynomial.legendre.legvander(
                (s - s.min()) / max(np.ptp(s), 1e-30) * 2 - 1, degree))[0])
        d = data if weight is None else data * weight
        self.d_r = d - self.Q @ (self.Q.T @ d)
        self.d_n = float(np.sqrt((self.d_r**2).sum()))

    def __call__(self, model):
        m = model if self.w is None else model * self.w
        # d_r is orthogonal to the basis, so <d_r, m_r> = <d_r, m>: no projection per call.
        # (element-wise sums, not BLAS dot: threaded BLAS on busy cores is 100× slower here)
        mc = m - m.mean()
        den = self.d_n * float(np.sqrt((mc * mc).sum()))
        return float((self.d_r * m).sum() / den) if den > 0 else 0.0

    def background(self, data, model):
        """Smooth background of the joint fit ``data ≈ Q c + α model`` (unweighted values)."""
        w = 1.0 if self.w is None else self.w
        X = np.column_stack([self.Q, model * w])
        coef, *_ = np.linalg.lstsq(X, data * w, rcond=None)
        return (self.Q @ coef[:-1]) / w


def estimate_ctf(micrograph: np.ndarray, pixel_size_A: float, voltage_kV: float = 300.0,
                 cs_mm: float = 2.7, amplitude_contrast: float = 0.1, *, tile_px: int = 512,
                 resolution_range_A: tuple[float, float] = (30.0, 5.0),
                 defocus_range_A: tuple[float, float] = (2000.0, 60000.0),
                 background_degree: int = 6, n_sectors: int = 6, return_spectrum: bool = False):
    """Fit defocus U, V and astigmatism angle to the Thon rings of ``micrograph`` (see module doc).

    ``resolution_range_A`` is (low, high) resolution of the fitting band in Å (the high limit is
    clipped to 0.95 × Nyquist); ``defocus_range_A`` bounds the 1-D search. Returns a
    :class:`CTFFit`; with ``return_spectrum`` also a dict with the amplitude spectrum and the 1-D
    profiles (for plots).
    """
    if pixel_size_A <= 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_A}")
    ps, n_tiles = periodogram(micrograph, tile_px)
    T = ps.shape[0]
    amp = np.sqrt(ps)
    lam = float(electron_wavelength_A(voltage_kV))
    cs_A = float(cs_mm) * 1e7
    q = float(amplitude_contrast)
    w_amp = float(np.arctan2(q, np.sqrt(1 - q * q)))
    nyq = 0.5 / pixel_size_A
    s_lo = 1.0 / float(resolution_range_A[0])
    s_hi = min(1.0 / float(resolution_range_A[1]), 0.95 * nyq)
    if s_lo >= s_hi:
        raise ValueError(f"resolution range {resolution_range_A} Å is empty at {pixel_size_A} Å/px")
    ctf2 = lambda s, a, u, v, t: _ctf2(s, a, u, v, t, lam, cs_A, w_amp)  # noqa: E731

    # crop the spectrum to the fitting band (speed)
    half = min(T // 2, int(np.ceil(s_hi * T * pixel_size_A)) + 2)
    c = T // 2
    sub = amp[c - half:c + half, c - half:c + half]
    s2d, a2d = freq_grid(sub.shape, pixel_size_A * T / sub.shape[0], polar=True)
    ky, kx = np.meshgrid(np.arange(2 * half) - half, np.arange(2 * half) - half, indexing="ij")
    # the band, without the central cross (tile-edge artefact)
    band = (s2d >= s_lo) & (s2d <= s_hi) & (np.abs(kx) > 1) & (np.abs(ky) > 1)

    # --- 1-D profiles on half-pixel bins: all angles, and n_sectors sectors over 180°
    dk = 0.5
    kb = np.floor(s2d[band] * T * pixel_size_A / dk).astype(np.int64)
    nb = int(kb.max()) + 1
    s_bins = (np.arange(nb) + 0.5) * dk / (T * pixel_size_A)
    vals = sub[band]
    ok, p1 = _profile(vals, kb, nb)
    s1 = s_bins[ok]
    step = 1.0 / (8.0 * lam * s_hi**2)  # ring phase at s_hi moves by π/8 per step
    grid = np.arange(defocus_range_A[0], defocus_range_A[1] + step, step)

    def search_1d(s, p):
        sc_fn = _Partial(s, p, None, background_degree)
        f = lambda d: sc_fn(ctf2(s, 0.0, d, d, 0.0))  # noqa: E731
        sc = np.array([f(d) for d in grid])
        i = int(np.argmax(sc))
        r = optimize.minimize_scalar(lambda d: -f(d), method="bounded", options={"xatol": 1.0},
                                     bounds=(grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]))
        return float(r.x), -float(r.fun), sc

    df1, _, grid_score = search_1d(s1, p1)
    starts = [np.array([df1, 0.0, 0.0])]
    astig0 = max(0.02 * df1, 100.0)
    starts += [np.array([df1, astig0, 0.0]), np.array([df1, 0.0, astig0])]
    if n_sectors >= 3:
        ang = np.mod(a2d[band], np.pi)
        sec = np.minimum((ang / (np.pi / n_sectors)).astype(np.int64), n_sectors - 1)
        dfs, angs = [], []
        for j in range(n_sectors):
            okj, pj = _profile(vals[sec == j], kb[sec == j], nb)
            if okj.sum() > 2 * background_degree + 4:
                dfs.append(search_1d(s_bins[okj], pj)[0])
                angs.append((j + 0.5) * np.pi / n_sectors)
        if len(dfs) >= 3:
            angs = np.array(angs)
            A = np.column_stack([np.ones_like(angs), np.cos(2 * angs), np.sin(2 * angs)])
            coef, *_ = np.linalg.lstsq(A, np.array(dfs), rcond=None)
            starts.append(coef)

    # --- 2-D refinement: weighted partial correlation over the band pixels
    bg1 = _Partial(s1, p1, None, background_degree).background(p1, ctf2(s1, 0.0, df1, df1, 0.0))
    resid = vals - np.interp(s2d[band], s1, bg1)
    ok_r, rms2 = _profile(resid**2, kb, nb)
    win = max(3, int(round(4 / dk)))
    rms = np.sqrt(rms2)
    rms_s = np.convolve(np.pad(rms, win, mode="edge"), np.ones(2 * win + 1) / (2 * win + 1), "same")[win:-win]
    weight = 1.0 / np.maximum(np.interp(s2d[band], s_bins[ok_r], rms_s), 1e-30)
    sb, ab = s2d[band], a2d[band]
    score2d = _Partial(sb, vals, weight, background_degree)

    def unpack(v):
        dm, ax, ay = v
        a = np.hypot(ax, ay)
        return dm + a, dm - a, 0.5 * np.degrees(np.arctan2(ay, ax))

    def neg(v):
        return -score2d(ctf2(sb, ab, *unpack(v)))

    best = None
    for x0 in starts:
        d0 = max(abs(x0[0]), 1000.0)
        a0 = max(0.02 * d0, 100.0)
        simplex = np.array([x0, x0 + [0.02 * d0, 0, 0], x0 + [0, a0, 0], x0 + [0, 0, a0]])
        res = optimize.minimize(neg, x0, method="Nelder-Mead",
                                options={"initial_simplex": simplex, "xatol": 1.0, "fatol": 1e-7,
                                         "maxiter": 800})
        if best is None or res.fun < best.fun:
            best = res
    u, v, t = unpack(best.x)
    t = (t + 180.0) % 180.0
    score = -float(best.fun)

    # --- fit resolution: equal-phase average up to 0.95 Nyquist, windowed correlation
    bgb = score2d.background(vals, ctf2(sb, ab, u, v, t))
    okb, bg_prof = _profile(bgb, kb, nb)
    s_bg = s_bins[okb]
    sF, aF = freq_grid(amp.shape, pixel_size_A, polar=True)
    dm = 0.5 * (u + v)
    dfz = dm + 0.5 * (u - v) * np.cos(2 * (aF - np.deg2rad(t)))
    s_eq = sF * np.sqrt(np.maximum(dfz, 1.0) / max(dm, 1.0))
    full = (sF >= s_lo) & (sF <= 0.95 * nyq)
    kF = np.floor(s_eq[full] * T * pixel_size_A / dk).astype(np.int64)
    nbF = int(kF.max()) + 1
    okF, epa = _profile(amp[full] - np.interp(sF[full], s_bg, bg_prof), kF, nbF)
    s_epa = (np.arange(nbF)[okF] + 0.5) * dk / (T * pixel_size_A)
    model = ctf2(s_epa, 0.0, dm, dm, 0.0)
    gam = np.pi * lam * dm * s_epa**2 - 0.5 * np.pi * cs_A * lam**3 * s_epa**4
    ccs = np.zeros(s_epa.size)
    for j in range(s_epa.size):
        w = np.abs(gam - gam[j]) <= np.pi  # about two Thon rings around s_j
        ccs[j] = _corr(epa[w], model[w]) if w.sum() >= 5 else 0.0
    j0 = -1
    for j in range(s_epa.size):
        if ccs[j] < 0.3:
            break
        j0 = j
    fit_res = 1.0 / s_epa[j0] if j0 >= 0 else float(resolution_range_A[0])

    fit = CTFFit(float(u), float(v), float(t), score, float(fit_res), df1,
                 (float(resolution_range_A[0]), float(1.0 / s_hi)), T, n_tiles)
    if not return_spectrum:
        return fit
    extra = {"amplitude_spectrum": amp, "freq_1d_invA": s1, "profile_1d": p1, "background_1d": bg1,
             "epa_freq_invA": s_epa, "epa": epa, "epa_model": model, "epa_window_cc": ccs,
             "grid_defocus_A": grid, "grid_score": grid_score, "starts": starts}
    return fit, extra
