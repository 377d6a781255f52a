"""Particles at the effective resolution N_res and the imaging operator M_s on that grid.

Images are Fourier-cropped from ``L × L`` to ``N × N`` (``N = N_res``; pixel size ``a·L/N``); volumes
live on an ``N³`` grid. The imaging operator of particle ``s`` is the forward model of
:func:`cryoprism.forward.project` at box ``N``: Fourier slice (type-2 NUFFT), origin shift, CTF, real
image. Its adjoint is :func:`cryoprism.forward.backproject`. Noise that is white with variance ``σ²``
per pixel in the ``L × L`` images is white with variance ``σ² (N/L)²`` on the frequencies the model
keeps after the crop (see docs/heterogeneity.md).

All passes over particles run in batches through :mod:`cryoprism.parallel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import finufft
import numpy as np

from cryoprism.ctf.model import CTFParams, ctf_2d
from cryoprism.forward import backproject, project
from cryoprism.fourier.core import fft2c
from cryoprism.fourier.resample import downsample
from cryoprism.image.normalize import background_stats
from cryoprism.io.particles import ParticleSource
from cryoprism.parallel import map_reduce
from cryoprism.parallel.config import finufft_threads
from cryoprism.parallel.core import batch_ranges, default_workers

#: images per batch in the particle passes
BATCH = 512


@dataclass
class HetData:
    """The analysis' precomputed state, built from a particle source by :func:`prepare`: images
    Fourier-cropped to ``(n, N, N)``, poses, CTF parameters, noise level (and residuals later)."""

    images: np.ndarray  # (n, N, N) float32, Fourier-cropped
    rotations: np.ndarray  # (n, 3, 3)
    origins_px: np.ndarray | None  # (n, 2) [x, y] in pixels of the N grid
    ctf: CTFParams | None  # over n particles
    pixel_size_A: float  # of the N grid
    L: int  # original box
    noise_var: float  # white noise variance per pixel of the N-grid images
    residuals: np.ndarray | None = None  # images − M_s μ, once the mean is known
    info: dict = field(default_factory=dict)
    band: int | None = None  # image frequencies used by the covariance: those of a band×band box

    @property
    def band_size(self) -> int:
        return int(self.band or self.N)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def N(self) -> int:
        return int(self.images.shape[-1])

    def ctf_grid(self, a: int, b: int) -> np.ndarray | None:
        """Centred CTF grids ``(b − a, N, N)`` of particles ``a:b`` (None without CTF)."""
        if self.ctf is None:
            return None
        c = ctf_2d(self.N, self.pixel_size_A, self.ctf.take(np.arange(a, b)))
        return np.broadcast_to(c, (b - a, self.N, self.N)) if c.ndim == 2 else c

    def origins(self, a: int, b: int):
        return None if self.origins_px is None else self.origins_px[a:b]

    def batches(self, batch_size: int = BATCH):
        return batch_ranges(self.n, batch_size)

    def subset(self, idx) -> "HetData":
        """The particles ``idx`` (bootstrap, half sets)."""
        idx = np.asarray(idx)
        ctf = None if self.ctf is None else self.ctf.take(idx)
        return HetData(self.images[idx], self.rotations[idx],
                       None if self.origins_px is None else self.origins_px[idx], ctf,
                       self.pixel_size_A, self.L, self.noise_var,
                       None if self.residuals is None else self.residuals[idx], dict(self.info),
                       self.band)


def noise_variance(images: np.ndarray, radius_px: float) -> float:
    """White-noise variance from background pixels (``r > radius_px``), each image's mean removed."""
    _, sd = background_stats(images, radius_px)
    return float(np.mean(np.asarray(sd, np.float64) ** 2))


def source_noise_variance(source: ParticleSource, background_radius: float = 0.45, n_max: int = 4000,
                          batch_size: int = 500) -> float:
    """:func:`noise_variance` of a particle source's full-box images, streamed in batches over up to
    ``n_max`` evenly spaced particles (background beyond ``background_radius · L`` pixels, as
    :func:`prepare`)."""
    idx = np.linspace(0, source.n - 1, min(source.n, n_max)).astype(np.int64)
    radius = background_radius * source.box
    total = sum(noise_variance(source.images(idx[a:a + batch_size]), radius) * len(idx[a:a + batch_size])
                for a in range(0, len(idx), batch_size))
    return total / len(idx)


def as_particle_source(d: HetData):
    """The prepared particles as a :class:`~cryoprism.io.ParticleStack` (in memory, at the ``N`` grid)."""
    from cryoprism.io.particles import ParticleStack

    return ParticleStack.from_arrays(d.images, pixel_size_A=d.pixel_size_A, rotations=d.rotations,
                                     origins_A=None if d.origins_px is None else d.origins_px * d.pixel_size_A,
                                     ctf=d.ctf)


def prepare(source: ParticleSource, n_res: int, *, oversample: float = 1.0, background_radius: float = 0.45,
            batch_size: int = BATCH,
            n_workers: int | None = None, progress: bool = True) -> HetData:
    """Read particles once (in batches), estimate the noise, Fourier-crop to ``n_res``.

    ``source``: the particles with poses (``io.ParticleSource``; CTF and origins from it when it has
    them). ``background_radius``: the background starts at this fraction of the box
    (``0.45·L`` pixels from the centre). ``oversample``: volumes and images live on a grid of
    ``ceil(oversample·n_res)`` (same field of view) while the covariance uses only the image
    frequencies of the ``n_res`` band; the finer volume grid removes the truncation error of a
    band-limited volume in the box (docs/heterogeneity.md). Returns :class:`HetData`.
    """
    src_n, src_L = int(source.n), int(source.box)
    n, L = src_n, src_L
    band = int(n_res)
    N = int(min(src_L, int(np.ceil(oversample * band))))
    if N % 2 != band % 2 and N < src_L:  # same parity keeps the band centred on the grid's kept set
        N += 1
    if not 2 <= band <= src_L:
        raise ValueError(f"n_res must be between 2 and the box {src_L}, got {N}")
    rotations = np.asarray(source.rotations(), np.float64)  # InputError without poses
    radius = background_radius * L
    workers = n_workers or default_workers()

    def job(r):
        a, b = r
        im = source.images(np.arange(a, b))
        _, sd = background_stats(im, radius)
        small = im if N == L else downsample(im, N)[0]
        return [(a, small.astype(np.float32), float(np.sum(np.asarray(sd, np.float64) ** 2)))]

    parts = map_reduce(job, batch_ranges(src_n, batch_size), n_workers=workers, desc="read + crop",
                       progress=progress)
    images = np.empty((src_n, N, N), np.float32)
    var_sum = 0.0
    for a, small, v in parts:
        images[a:a + small.shape[0]] = small
        var_sum += v
    sigma2_L = var_sum / max(n, 1)
    px = float(source.pixel_size_A) * src_L / N
    org = np.asarray(source.origins_A(), np.float64) / float(source.pixel_size_A) * N / src_L
    ctf = source.ctf_params() if source.has_ctf else None
    return HetData(images, rotations, org, ctf, px, L,
                   sigma2_L * (N / L) ** 2, info={"noise_var_L": sigma2_L}, band=band)


# ------------------------------------------------------------------------------------------------
# batched imaging operator on the N grid
# ------------------------------------------------------------------------------------------------

def project_batch(d: HetData, vols: np.ndarray, a: int, b: int, nthreads: int = 0) -> np.ndarray:
    """``M_s v_j`` for particles ``a:b`` and volumes ``vols (m, N, N, N)``: ``(m, b − a, N, N)``."""
    rot, org, ctf = d.rotations[a:b], d.origins(a, b), d.ctf_grid(a, b)
    return np.stack([project(np.asarray(v, np.float64), rot, org, ctf, eps=1e-7, nthreads=nthreads)
                     for v in vols])


def backproject_batch(d: HetData, images: np.ndarray, a: int, b: int, nthreads: int = 0) -> np.ndarray:
    """``Σ_s M_sᵀ y_sj`` over particles ``a:b`` for stacks ``images (m, b − a, N, N)``: ``(m, N, N, N)``."""
    rot, org, ctf = d.rotations[a:b], d.origins(a, b), d.ctf_grid(a, b)
    return np.stack([backproject(np.asarray(im, np.float64), rot, org, ctf, eps=1e-7,
                                 nthreads=nthreads) for im in images])


def compute_residuals(d: HetData, mean: np.ndarray, n_workers: int | None = None,
                      progress: bool = True) -> np.ndarray:
    """``y_s − M_s μ`` for every particle (float32), stored on ``d.residuals``."""
    workers = n_workers or default_workers()
    nt = finufft_threads(workers)

    def job(r):
        a, b = r
        return [(a, (d.images[a:b] - project_batch(d, mean[None], a, b, nt)[0]).astype(np.float32))]

    parts = map_reduce(job, d.batches(), n_workers=workers, desc="residuals", progress=progress)
    res = np.empty_like(d.images)
    for a, z in parts:
        res[a:a + z.shape[0]] = z
    d.residuals = res
    return res


#: NUFFT tolerance of the covariance passes (classification needs far less than 1e-5)
EPS = 1e-5


def band_indices(d: HetData) -> np.ndarray:
    """Integer image frequencies (per axis) that the covariance uses: those kept at box ``band``."""
    from cryoprism.forward.projection import slice_indices

    return slice_indices(d.band_size)


def band_points(d: HetData, a: int, b: int) -> tuple[np.ndarray, ...]:
    """NUFFT points ``2π/N · Aᵀ(kx, ky, 0)`` (order z, y, x) of the band frequencies, each ``(b·q,)``."""
    k = band_indices(d).astype(np.float64)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    kx, ky = kx.ravel(), ky.ravel()
    rot = d.rotations[a:b]
    sc = 2 * np.pi / d.N
    return tuple(np.ascontiguousarray(((rot[:, 0, i, None] * kx[None] + rot[:, 1, i, None] * ky[None]) * sc)
                                      .ravel()) for i in (2, 1, 0))


def band_ctf2_and_spectra(d: HetData, a: int, b: int, images: np.ndarray | None = None):
    """``|C_s(k)|²`` ``(b, q)`` and ``Y_s = C_s S̄_s F[z_s]`` ``(b, q)`` on the band frequencies."""
    N = d.N
    k = band_indices(d)
    sl = slice(N // 2 + k[0], N // 2 + k[-1] + 1)
    z = d.residuals[a:b] if images is None else images
    F = fft2c(np.asarray(z, np.float64))[:, sl, sl]
    ctf = d.ctf_grid(a, b)
    C = np.ones(F.shape) if ctf is None else np.asarray(ctf, np.float64)[:, sl, sl]
    F = F * C
    org = d.origins(a, b)
    if org is not None:
        kk = k.astype(np.float64)
        px = np.exp(-2j * np.pi * org[:, 0, None] * kk[None] / N)
        py = np.exp(-2j * np.pi * org[:, 1, None] * kk[None] / N)
        F = F * py[:, :, None] * px[:, None, :]
    return (C * C).reshape(b - a, -1), F.reshape(b - a, -1)


def fourier_batch(d: HetData, a: int, b: int):
    """Per-batch Fourier data: band points ``(z, y, x)`` (each ``(b·q,)``), ``|C_s(k)|²`` ``(b, q)``
    and the CTF-weighted, shift-compensated residual spectra ``Y_s = C_s S̄_s F[z_s]`` ``(b, q)``.

    With these, ``⟨M_s v, M_s w⟩ = N⁻² Re Σ_k |C_s|² conj(v̂) ŵ`` and ``⟨M_s v, z_s⟩ = N⁻² Re Σ_k
    conj(v̂) Y_s`` where ``v̂`` is the type-2 NUFFT of ``v`` on the slice of particle ``s`` and ``k``
    runs over the band (all kept frequencies when ``band = N``).
    """
    C2, Y = band_ctf2_and_spectra(d, a, b)
    return band_points(d, a, b), C2, Y


def _plan(kind: int, N: int, m: int, nthreads: int):
    return finufft.Plan(kind, (N, N, N), n_trans=m, eps=EPS, isign=-1 if kind == 2 else 1,
                        dtype="complex128", nthreads=nthreads)


def slices_of(vols: np.ndarray, pts, nthreads: int = 0) -> np.ndarray:
    """Type-2 NUFFT of volumes ``(m, N, N, N)`` on the points: ``(m, b·q)`` complex."""
    m, N = vols.shape[0], vols.shape[-1]
    plan = _plan(2, N, m, nthreads)
    plan.setpts(*pts)
    out = plan.execute(np.ascontiguousarray(vols, dtype=np.complex128))
    return out.reshape(m, -1)


def adjoint_of(coeffs: np.ndarray, pts, N: int, nthreads: int = 0) -> np.ndarray:
    """Real part of the type-1 NUFFT (``+i``) of ``coeffs (m, b·q)``: ``(m, N, N, N)``."""
    m = coeffs.shape[0]
    plan = _plan(1, N, m, nthreads)
    plan.setpts(*pts)
    out = plan.execute(np.ascontiguousarray(coeffs, dtype=np.complex128))
    return out.reshape(m, N, N, N).real


def subspace_statistics(d: HetData, basis: np.ndarray, n_workers: int | None = None,
                        progress: bool = True, desc: str = "projections"):
    """Per-particle Gram matrices and correlations in a volume basis.

    ``basis (m, N, N, N)``. Returns ``G (n, m, m)`` with ``G_s = (M_s V)ᵀ(M_s V)`` and
    ``c (n, m)`` with ``c_s = (M_s V)ᵀ z_s`` (``z_s`` the residual images).
    """
    if d.residuals is None:
        raise ValueError("compute_residuals first")
    workers = n_workers or default_workers()
    nt = finufft_threads(workers)
    m, N = basis.shape[0], d.N

    def job(r):
        a, b = r
        pts, C2, Y = fourier_batch(d, a, b)
        P = slices_of(basis, pts, nt).reshape(m, b - a, -1)
        PC = P * C2[None]
        G = np.einsum("ibk,jbk->bij", P.conj(), PC).real / N ** 2
        c = np.einsum("ibk,bk->bi", P.conj(), Y).real / N ** 2
        return [(a, G, c)]

    parts = map_reduce(job, d.batches(), n_workers=workers, desc=desc, progress=progress)
    G = np.empty((d.n, m, m))
    c = np.empty((d.n, m))
    for a, g, cc in parts:
        G[a:a + g.shape[0]] = g
        c[a:a + g.shape[0]] = cc
    return 0.5 * (G + G.transpose(0, 2, 1)), c
