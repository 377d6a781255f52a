"""Movies: reading MRC / TIFF frame stacks with a gain reference and a defect list, and simulating them.

* :func:`read_movie` — ``(frames float32 (n_frames, H, W), pixel_size_A or None)``; MRC stacks
  (``.mrc``, ``.mrcs``) through the MRC reader, TIFF (``.tif``, ``.tiff``) through ``tifffile``. EER
  is refused with one line (no maintained EER reader on the package index is a dependency here:
  convert with ``relion_convert_to_tiff``).
* gain reference (MRC or TIFF, one image of the frame shape): frames are **multiplied** by it
  (MotionCor2 / RELION convention); zero or non-finite gain pixels become defects.
* defect list: a MotionCor2-style text file of rectangles ``x y w h`` (pixels, origin at the first
  pixel) or a defect map image (non-zero = bad). Defect pixels are replaced, frame by frame, by the
  mean of the good pixels of that frame.
* :func:`simulate_movie` — a movie of a weak-phase specimen (a given noise-free image, e.g. a simulated
  micrograph with particles at known positions, or a random texture; optional CTF) under a smooth global
  drift plus a smooth local deformation, with radiation damage and Poisson counting noise
  (docs/preprocess.md, "Motion correction"). The truth travels with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoprism.errors import InputError

MRC_SUFFIXES = {".mrc", ".mrcs", ".st"}
TIFF_SUFFIXES = {".tif", ".tiff"}


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = list(tif.series)
            shapes = sorted({tuple(sr.shape[-2:]) for sr in series})
            if len(shapes) != 1:
                raise InputError(f"TIFF frames disagree in size: {', '.join('x'.join(map(str, s)) for s in shapes)}",
                                 path)
            return np.concatenate([sr.asarray().reshape((-1,) + shapes[0]) for sr in series])
    except InputError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError) as e:
        raise InputError(f"not a readable TIFF file ({e})", path) from e


def _read_image_file(path: Path) -> np.ndarray:
    """An image or stack from an MRC or TIFF file, as float32 ``(n, H, W)``."""
    from cryoprism.io.mrc import read_mrc

    path = Path(path)
    suf = path.suffix.lower()
    if not path.exists():
        raise InputError("no such file", path)
    if suf == ".eer":
        raise InputError("EER movies are not read here; convert them to TIFF first "
                         "(relion_convert_to_tiff)", path)
    if suf in TIFF_SUFFIXES:
        arr = _read_tiff(path).astype(np.float32)
        return arr
    if suf in MRC_SUFFIXES:
        arr, _ = read_mrc(path)
        return arr[None] if arr.ndim == 2 else arr
    raise InputError(f"unknown movie format {suf!r}: expected .mrc, .mrcs, .tif or .tiff", path)


def read_gain(path, shape) -> np.ndarray:
    """Gain reference (MRC or TIFF, one image of ``shape`` (H, W)) as float32."""
    g = _read_image_file(Path(path))
    if g.shape[0] != 1:
        raise InputError(f"a gain reference is one image, found {g.shape[0]} sections", path)
    g = g[0]
    if g.shape != tuple(shape):
        raise InputError(f"gain reference is {g.shape[1]}x{g.shape[0]} (x*y) but the frames are "
                         f"{shape[1]}x{shape[0]}", path)
    return g


def read_defects(path, shape) -> np.ndarray:
    """Boolean defect mask ``(H, W)`` from a MotionCor2 text file (``x y w h`` per line) or a defect map."""
    path = Path(path)
    H, W = shape
    if path.suffix.lower() in MRC_SUFFIXES | TIFF_SUFFIXES:
        m = _read_image_file(path)
        if m.shape[1:] != (H, W) or m.shape[0] != 1:
            raise InputError(f"defect map has shape {m.shape[1:]} but the frames are {(H, W)}", path)
        return m[0] != 0
    if not path.exists():
        raise InputError("no such file", path)
    mask = np.zeros((H, W), bool)
    for i, line in enumerate(path.read_text().splitlines(), 1):
        s = line.split("#")[0].split()
        if not s:
            continue
        try:
            x, y, w, h = (int(round(float(v))) for v in s[:4])
        except ValueError as e:
            raise InputError(f"line {i}: expected 'x y w h' (pixels), got {line.strip()!r}", path) from e
        if len(s) < 4 or w < 0 or h < 0:
            raise InputError(f"line {i}: expected 'x y w h' with w, h ≥ 0, got {line.strip()!r}", path)
        mask[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = True
    return mask


def fill_defects(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace the pixels under ``mask`` in every frame by that frame's mean over good pixels (in place)."""
    if mask is None or not mask.any():
        return frames
    good = ~mask
    for f in frames:
        f[mask] = f[good].mean() if good.any() else 0.0
    return frames


def read_movie(path, gain=None, *, defects=None) -> tuple[np.ndarray, float | None]:
    """Read a movie: ``(frames float32 (n_frames, H, W), pixel_size_A or None)``.

    ``gain``: a path (MRC/TIFF) or an array of the frame shape, multiplied into every frame.
    ``defects``: a path (``x y w h`` text file or defect map) or a boolean mask. The pixel size comes
    from the MRC header (None when it says 0, and for TIFF).
    """
    from cryoprism.io.mrc import read_mrc_header

    path = Path(path)
    frames = _read_image_file(path)
    px = None
    if path.suffix.lower() in MRC_SUFFIXES:
        px = read_mrc_header(path)["voxel_size_A"]
    if frames.shape[0] < 2:
        raise InputError(f"a movie needs at least 2 frames, found {frames.shape[0]}", path)
    if not np.isfinite(frames).all():
        raise InputError("non-finite values (NaN/inf) in the frames", path)
    shape = frames.shape[1:]
    mask = np.zeros(shape, bool)
    if gain is not None:
        g = np.asarray(gain, np.float32) if not isinstance(gain, (str, Path)) else read_gain(gain, shape)
        if g.shape != shape:
            raise InputError(f"gain reference shape {g.shape} differs from the frames {shape}")
        bad = ~np.isfinite(g) | (g == 0)
        frames *= np.where(bad, 0.0, g)[None]
        mask |= bad
    if defects is not None:
        mask |= (np.asarray(defects, bool) if not isinstance(defects, (str, Path))
                 else read_defects(defects, shape))
    fill_defects(frames, mask)
    return frames, (float(px) if px else None)


# ----------------------------------------------------------------------------- simulation
@dataclass
class MovieSimulation:
    """A simulated movie and its truth.

    ``frames``: counts ``(n, H, W)`` (uint8 at low dose, else uint16). ``global_px``: ``(n, 2)``
    [x, y] displacement of the specimen in each frame relative to frame 0. The full displacement of
    the specimen point at reference position ``(x, y)`` in frame ``t`` is
    ``global_px[t] + local_time[t] * local_field(x, y)`` (:meth:`displacement`); frame ``t`` samples
    the reference image at ``r − displacement(r, t)``. ``true_sum``: the noise-free sum of the frames in
    the coordinates of frame 0 (expected counts, damage included).
    """

    frames: np.ndarray
    pixel_size_A: float
    dose_per_frame_e_A2: float
    global_px: np.ndarray
    local_time: np.ndarray  # (n,) from 0 to 1
    local_coef: np.ndarray  # (n_waves, 2 axes, 4): amplitude, fx, fy, phase (fx, fy in cycles per field)
    true_sum: np.ndarray
    defocus_A: float | None
    voltage_kV: float

    @property
    def shape(self):
        return self.frames.shape[1:]

    def local_field(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Local deformation at full development (t = last frame), in pixels, at pixel positions x, y."""
        H, W = self.shape
        X, Y = np.asarray(x, np.float64) / W, np.asarray(y, np.float64) / H
        out = []
        for ax in range(2):
            v = 0.0
            for a, fx, fy, ph in self.local_coef[:, ax]:
                v = v + a * np.cos(2 * np.pi * (fx * X + fy * Y) + ph)
            out.append(v)
        return out[0], out[1]

    def displacement(self, x, y) -> np.ndarray:
        """True displacement ``(n_frames, *shape(x), 2)`` [x, y] in pixels at positions ``x, y``."""
        lx, ly = self.local_field(x, y)
        lt = self.local_time.reshape((-1,) + (1,) * np.ndim(lx))
        dx = self.global_px[:, 0].reshape(lt.shape) + lt * lx
        dy = self.global_px[:, 1].reshape(lt.shape) + lt * ly
        return np.stack([dx, dy], axis=-1)


def critical_exposure_e_A2(s_invA, voltage_kV: float = 300.0):
    """Critical exposure ``Ne(s) = a s^b + c`` (e⁻/Å²) of Grant & Grigorieff (2015) at spatial
    frequency ``s`` (1/Å): a = 0.245, b = −1.665, c = 2.81 measured at 300 kV, × 0.8 at 200 kV
    (linear in the voltage between, clipped outside 200–300 kV). ``s = 0`` gives ``inf``."""
    s = np.asarray(s_invA, np.float64)
    scale = 0.8 + 0.2 * (np.clip(float(voltage_kV), 200.0, 300.0) - 200.0) / 100.0
    with np.errstate(divide="ignore"):
        ne = 0.245 * np.where(s > 0, s, np.nan) ** -1.665 + 2.81
    return np.where(s > 0, ne * scale, np.inf)


def _rfft_freqs(shape, pixel_size_A):
    """Spatial frequency magnitude (1/Å) on the ``rfft2`` grid of ``shape``."""
    H, W = shape
    fy = np.fft.fftfreq(H, d=pixel_size_A)[:, None]
    fx = np.fft.rfftfreq(W, d=pixel_size_A)[None, :]
    return np.hypot(fy, fx)


def _texture(shape, pixel_size_A, rng, corner_A=50.0):
    """Unit-variance Gaussian random field with amplitude spectrum 1/sqrt(1 + (s·corner)²)."""
    import scipy.fft as sfft

    H, W = shape
    s = _rfft_freqs(shape, pixel_size_A)
    F = sfft.rfft2(rng.standard_normal((H, W)).astype(np.float32)) / np.sqrt(1 + (s * corner_A) ** 2)
    t = sfft.irfft2(F, s=(H, W))
    return (t / t.std()).astype(np.float32), s


def simulate_movie(shape=(1024, 1024), n_frames: int = 40, pixel_size_A: float = 1.0,
                   dose_per_frame_e_A2: float = 1.0, *, drift_px: float = 20.0, local_px: float = 2.0,
                   contrast: float = 0.1, defocus_A: float | None = 15000.0, astigmatism_A: float = 500.0,
                   voltage_kV: float = 300.0, cs_mm: float = 2.7, damage: bool = True,
                   jitter_px: float = 0.1, interp_order: int = 3, specimen=None, rng=None,
                   progress: bool = False) -> MovieSimulation:
    """Simulate a counting-mode movie (see :class:`MovieSimulation` for the truth it carries).

    Specimen: the noise-free image ``specimen`` (H, W) when given — e.g. a micrograph of projections at
    known positions from :func:`cryoprism.forward.micrographs.simulate_micrographs` (``snr=None``); its
    shape replaces ``shape`` and pixel ``(x, y)`` of it is where the specimen point lies in frame 0 —
    otherwise a random texture (amplitude ∝ 1/√(1 + (50 Å·s)²)). Either goes through the CTF when
    ``defocus_A`` is given (``astigmatism_A`` = U − V at a random angle; pass ``None`` for a specimen
    that already carries its CTF), then, mean removed, is scaled to relative ``contrast`` (standard
    deviation of the expected intensity over its mean). Expected counts per pixel and frame:
    ``dose · pixel_size² · (1 + contrast · image)``; with ``damage`` each frame's image is attenuated by
    ``exp(−N/(2 Ne(s)))`` at its mid-frame exposure ``N`` (Grant & Grigorieff 2015). Motion: the global
    drift runs ``drift_px`` along a random direction, fast first and slowing down
    (``1 − exp(−3t/T)``), with a perpendicular bow of 15 % and per-frame jitter ``jitter_px``; the local
    deformation is a sum of three plane waves of under half a cycle per field per axis, scaled to a
    maximum of ``local_px`` over the field, growing in time as ``1 − exp(−2t/T)``. Frames are sampled
    with spline interpolation of order ``interp_order`` (1 is faster), then Poisson counts are drawn.
    """
    import scipy.fft as sfft
    from scipy import ndimage

    from cryoprism.ctf.model import CTFParams, ctf_on_grid

    rng = np.random.default_rng(rng)
    n = int(n_frames)
    if specimen is not None:
        img = np.asarray(specimen, np.float32)
        if img.ndim != 2 or not np.isfinite(img).all() or not img.std() > 0:
            raise ValueError(f"specimen must be a finite, non-constant 2-D image, got shape {img.shape}")
        img = img - img.mean()
        H, W = img.shape
        s = _rfft_freqs((H, W), pixel_size_A)
    else:
        H, W = (int(v) for v in shape)
        img, s = _texture((H, W), pixel_size_A, rng)
    F0 = sfft.rfft2(img)
    if defocus_A is not None:
        fy = np.fft.fftfreq(H, d=pixel_size_A)[:, None]
        fx = np.fft.rfftfreq(W, d=pixel_size_A)[None, :]
        ang = np.arctan2(np.broadcast_to(fy, s.shape), np.broadcast_to(fx, s.shape))
        p = CTFParams(defocus_A + astigmatism_A / 2, defocus_A - astigmatism_A / 2, float(rng.uniform(0, 180)),
                      voltage_kV, cs_mm, 0.1)
        F0 = F0 * ctf_on_grid(s, ang, p).astype(np.float32)
    base = sfft.irfft2(F0, s=(H, W))
    norm = float(base.std())
    F0 = F0 / norm
    mean_counts = dose_per_frame_e_A2 * pixel_size_A**2
    tt = np.arange(n, dtype=np.float64)
    T = max(n - 1, 1)
    h = (1 - np.exp(-3 * tt / T)) / (1 - np.exp(-3))
    theta = rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(theta), np.sin(theta)])
    perp = np.array([-d[1], d[0]])
    g = drift_px * (h[:, None] * d[None] + 0.6 * (h * (1 - h))[:, None] * perp[None])
    g[1:] += rng.normal(0, jitter_px, (n - 1, 2))
    g -= g[0]
    lt = (1 - np.exp(-2 * tt / T)) / (1 - np.exp(-2))
    coef = np.zeros((3, 2, 4))
    coef[:, :, 0] = rng.normal(0, 1, (3, 2))
    coef[:, :, 1:3] = rng.uniform(-0.45, 0.45, (3, 2, 2))
    coef[:, :, 3] = rng.uniform(0, 2 * np.pi, (3, 2))
    sim = MovieSimulation(np.zeros(0), float(pixel_size_A), float(dose_per_frame_e_A2), g, lt, coef, None,
                          defocus_A, float(voltage_kV))
    sim.frames = np.zeros((0, H, W))
    gy, gx = np.mgrid[0:H:16, 0:W:16]
    lx, ly = sim.local_field(gx, gy)
    amp = float(np.sqrt(lx**2 + ly**2).max())
    coef[:, :, 0] *= local_px / max(amp, 1e-12)

    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    lxf, lyf = (v.astype(np.float32) for v in sim.local_field(xx, yy))
    dtype = np.uint8 if mean_counts * (1 + 6 * contrast) < 60 else np.uint16
    frames = np.zeros((n, H, W), dtype)
    sum_filter = np.zeros(s.shape, np.float64)
    ne = critical_exposure_e_A2(s, voltage_kV)
    from tqdm.auto import tqdm

    for t in tqdm(range(n), desc="frames", disable=not progress, leave=False):
        q = np.exp(-(t + 0.5) * dose_per_frame_e_A2 / (2 * ne)) if damage else np.ones(s.shape)
        sum_filter += q
        im = sfft.irfft2(F0 * q.astype(np.float32), s=(H, W)).astype(np.float32)
        lam = mean_counts * (1 + contrast * im)
        coords = [yy - (g[t, 1] + lt[t] * lyf), xx - (g[t, 0] + lt[t] * lxf)]
        warped = ndimage.map_coordinates(lam, coords, order=interp_order, mode="mirror")
        c = rng.poisson(np.maximum(warped, 0))
        frames[t] = np.minimum(c, np.iinfo(dtype).max)
    true = n * mean_counts * (1 + contrast * sfft.irfft2(F0 * (sum_filter / n).astype(np.float32), s=(H, W)))
    sim.frames = frames
    sim.true_sum = true.astype(np.float32)
    return sim
