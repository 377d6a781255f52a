"""Projection and back-projection through the Fourier slice theorem (finufft, type 2 / type 1).

Conventions (docs/conventions.md): a volume ``V[z, y, x]`` with centre ``L//2``; ``A`` maps the volume
frame to the particle frame; the image's centred transform is the central slice

    P̂(kx, ky) = V̂(Aᵀ (kx, ky, 0)ᵀ),   V̂(ω) = Σ_r V[r] exp(-2πi ω·r / L)

evaluated off-grid by a type-2 3-D NUFFT (``r`` and the integer ``k`` both run over
``{-L//2, …, (L-1)//2}``, finufft's own mode order, so no phase correction is needed). The image is
``shift(P, -origin)`` (multiply by ``exp(+2πi k·o/L)``), then the CTF (a centred ``(n, L, L)`` grid)
multiplies the transform, then a centred inverse FFT.

For even ``L`` the frequencies ``-L/2`` on either image axis have no Hermitian partner on the grid;
they are set to zero (so the projection is exactly real and the normal operator ``PᵀP`` is exactly a
Toeplitz convolution, see :mod:`cryoprism.reconstruct.mean`). For odd ``L`` nothing is dropped and the
identity-rotation projection is exactly the voxel sum along z.

``backproject`` is the exact adjoint of ``project`` for the real inner products on volumes and image
stacks (type-1 NUFFT of the adjoint slices).

Half the work: the kept grid is symmetric (``m = 2h+1`` frequencies per axis) and the slice of a
real volume is Hermitian, ``V̂(-ω) = conj V̂(ω)``. The NUFFTs therefore run only on the half-plane
``ky > 0 or (ky = 0, kx ≥ 0)`` (flattened index ``p ≥ (m²-1)/2``); projection fills the other half by
conjugation, back-projection folds it in (``Re[c_p e^{iωr} + c_p' e^{-iωr}] = Re[(c_p + conj c_p')
e^{iωr}]``), which is exact for any coefficients. Because the image is real, only the even part
``(C(k) + C(-k))/2`` of a CTF grid acts, so that is what is used.
"""

from __future__ import annotations

import finufft
import numpy as np

from cryoprism.fourier.core import fft2c, ifft2c
from cryoprism.parallel.config import finufft_threads

#: rotations per NUFFT call; bounded memory for any n
DEFAULT_CHUNK = 512


def nufft_eps(dtype) -> float:
    """NUFFT tolerance matched to a real dtype: 1e-6 for float32, 1e-12 for float64."""
    return 1e-6 if np.dtype(dtype) == np.float32 else 1e-12


def _complex(dtype):
    return np.complex64 if np.dtype(dtype) == np.float32 else np.complex128


def _nthreads(nthreads):
    if nthreads is not None:
        return int(nthreads)
    return finufft_threads(1)  # a call on its own: every worker


def slice_indices(L: int) -> np.ndarray:
    """Integer frequencies kept on an image axis: ``-L//2 … (L-1)//2`` minus ``-L/2`` when L is even."""
    lo = -(L // 2) + (1 if L % 2 == 0 else 0)
    return np.arange(lo, (L - 1) // 2 + 1)


def _sl(L: int) -> slice:
    """Slice of a centred axis holding :func:`slice_indices` (drops index 0 = frequency -L/2 if even)."""
    return slice(1, None) if L % 2 == 0 else slice(0, None)


def half_start(L: int) -> int:
    """First flattened index ``P0 = (m²-1)/2`` of the Hermitian half of the kept ``m × m`` grid."""
    m = len(slice_indices(L))
    return (m * m - 1) // 2


def slice_points(rotations: np.ndarray, L: int, dtype=np.float64,
                 half: bool = False) -> tuple[np.ndarray, ...]:
    """NUFFT points ``2π/L · Aᵀ(kx, ky, 0)`` in array-axis order ``(z, y, x)``, each ``(n·m²,)``.

    ``m = len(slice_indices(L))``; the image grid is ``[ky, kx]`` (row = y), flattened per particle.
    ``half=True``: only the Hermitian half (flattened indices ``≥ half_start(L)``), ``(n·(P0+1),)``.
    """
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    k = slice_indices(L).astype(np.float64)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    kx, ky = kx.ravel(), ky.ravel()
    if half:
        P0 = half_start(L)
        kx, ky = kx[P0:], ky[P0:]
    # ω = Aᵀ (kx, ky, 0): ω_i = A[0, i] kx + A[1, i] ky
    scale = 2 * np.pi / L
    pts = []
    for i in (2, 1, 0):  # z, y, x
        w = (rot[:, 0, i, None] * kx[None] + rot[:, 1, i, None] * ky[None]) * scale
        pts.append(np.ascontiguousarray(w.ravel(), dtype=dtype))
    return tuple(pts)


def _shift_phase(origins_px, L: int, dtype) -> np.ndarray:
    """``exp(+2πi (kx ox + ky oy)/L)`` on the kept grid: applies ``shift(·, -origin)``; (n, m, m)."""
    o = np.asarray(origins_px, dtype=np.float64).reshape(-1, 2)
    k = slice_indices(L).astype(np.float64)
    px = np.exp(2j * np.pi * o[:, 0, None] * k[None] / L)  # (n, m) along x
    py = np.exp(2j * np.pi * o[:, 1, None] * k[None] / L)  # (n, m) along y
    return (py[:, :, None] * px[:, None, :]).astype(dtype)


def _chunks(n: int, chunk: int):
    chunk = max(1, int(chunk))
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def project_slices(volume, rotations, eps: float | None = None, chunk: int = DEFAULT_CHUNK,
                   nthreads: int | None = None) -> np.ndarray:
    """Central slices ``V̂(Aᵀ(kx, ky, 0))`` on the centred ``(n, L, L)`` grid (complex).

    Frequencies ``-L/2`` (even L) are zero. float32 volumes give complex64, float64 complex128.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"volume must be a cube [z, y, x], got shape {vol.shape}")
    rdtype = np.float32 if vol.dtype == np.float32 else np.float64
    cdtype = _complex(rdtype)
    L = vol.shape[0]
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    n = rot.shape[0]
    eps = nufft_eps(rdtype) if eps is None else eps
    m = len(slice_indices(L))
    out = np.zeros((n, L, L), dtype=cdtype)
    if n == 0:
        return out
    plan = finufft.Plan(2, (L, L, L), n_trans=1, eps=eps, isign=-1, dtype=np.dtype(cdtype).name,
                        nthreads=_nthreads(nthreads))
    f = np.ascontiguousarray(vol, dtype=cdtype)
    s = _sl(L)
    P0 = half_start(L)
    for a, b in _chunks(n, chunk):
        z, y, x = slice_points(rot[a:b], L, dtype=rdtype, half=True)
        plan.setpts(z, y, x)
        vh = plan.execute(f).reshape(b - a, P0 + 1)
        full = np.empty((b - a, m * m), dtype=cdtype)
        full[:, P0:] = vh
        full[:, :P0] = np.conj(vh[:, :0:-1])  # index m²-1-p holds -k
        out[a:b, s, s] = full.reshape(b - a, m, m)
    return out


def backproject_slices(slices, rotations, L: int | None = None, eps: float | None = None,
                       chunk: int = DEFAULT_CHUNK, nthreads: int | None = None) -> np.ndarray:
    """Adjoint of :func:`project_slices` for real volumes: ``Re Σ_j slice_j(k) exp(+2πi ω_j·r/L)``.

    Returned as a complex volume whose real part is the answer (the imaginary part is not
    meaningful: the half-plane folding computes only the real part exactly)."""
    sl = np.asarray(slices)
    n, L0, _ = sl.shape
    L = L0 if L is None else L
    cdtype = np.complex64 if sl.dtype in (np.complex64, np.float32) else np.complex128
    rdtype = np.float32 if cdtype == np.complex64 else np.float64
    eps = nufft_eps(rdtype) if eps is None else eps
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    out = np.zeros((L, L, L), dtype=cdtype)
    if n == 0:
        return out
    plan = finufft.Plan(1, (L, L, L), n_trans=1, eps=eps, isign=1, dtype=np.dtype(cdtype).name,
                        nthreads=_nthreads(nthreads))
    s = _sl(L)
    P0 = half_start(L)
    for a, b in _chunks(n, chunk):
        z, y, x = slice_points(rot[a:b], L, dtype=rdtype, half=True)
        plan.setpts(z, y, x)
        c = sl[a:b, s, s].reshape(b - a, -1)
        d = np.empty((b - a, P0 + 1), dtype=cdtype)
        d[:, 1:] = c[:, P0 + 1:] + np.conj(c[:, P0 - 1::-1])  # fold -k onto k (real part is taken)
        d[:, 0] = c[:, P0]
        out += plan.execute(np.ascontiguousarray(d).ravel())
    return out


def even_part(ctf, L: int) -> np.ndarray:
    """``(C(k) + C(-k))/2`` of centred CTF grids ``(…, L, L)`` on the kept frequencies (the part a real
    image sees; the ``-L/2`` row/column of even L is left as is, it is not used)."""
    c = np.asarray(ctf)
    s = _sl(L)
    out = np.array(c, copy=True)
    blk = c[..., s, s]
    out[..., s, s] = 0.5 * (blk + blk[..., ::-1, ::-1])
    return out


def _check_stack_args(n, L, origins_px, ctf):
    if origins_px is not None and np.asarray(origins_px).reshape(-1, 2).shape[0] != n:
        raise ValueError(f"origins_px must be ({n}, 2) [x, y] pixels")
    if ctf is not None:
        c = np.asarray(ctf)
        if c.shape not in ((n, L, L), (L, L)):
            raise ValueError(f"ctf must be a centred ({n}, {L}, {L}) or ({L}, {L}) grid, got {c.shape}")


def project(volume, rotations, origins_px=None, ctf=None, eps: float | None = None,
            chunk: int = DEFAULT_CHUNK, nthreads: int | None = None) -> np.ndarray:
    """Project ``volume`` for each rotation: ``(n, L, L)`` real images, dtype of the volume.

    ``rotations``: ``(n, 3, 3)`` RELION matrices A (volume → particle). ``origins_px``: ``(n, 2)``
    ``[x, y]`` origins in pixels (RELION meaning: the particle appears at ``L//2 − origin``).
    ``ctf``: centred CTF grid ``(n, L, L)`` (or one ``(L, L)``) multiplying the transform; None = no CTF.
    ``eps``: NUFFT tolerance (default 1e-6 for float32, 1e-12 for float64).
    ``nthreads``: finufft threads; None splits the rotations over ``cryoprism.parallel`` worker
    threads running single-threaded NUFFTs (faster than OpenMP threads on a shared machine).
    """
    vol = np.asarray(volume)
    if vol.dtype not in (np.float32, np.float64):
        vol = vol.astype(np.float64)
    L = vol.shape[-1]
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    n = rot.shape[0]
    _check_stack_args(n, L, origins_px, ctf)
    out = np.empty((n, L, L), dtype=vol.dtype)
    s = _sl(L)
    if nthreads is None:
        from cryoprism.parallel.core import default_workers, map_batches

        workers = default_workers()
        if workers > 1 and n >= 128:
            part = min(chunk, -(-n // workers))
            ranges = _chunks(n, part)
            org = None if origins_px is None else np.asarray(origins_px).reshape(-1, 2)
            c = None if ctf is None else np.asarray(ctf)

            def job(r):
                a, b = r
                out[a:b] = project(vol, rot[a:b], None if org is None else org[a:b],
                                   None if c is None else (c[a:b] if c.ndim == 3 else c), eps=eps,
                                   chunk=chunk, nthreads=finufft_threads(workers))

            map_batches(job, ranges, n_workers=workers, progress=False)
            return out
    for a, b in _chunks(n, chunk):
        F = project_slices(vol, rot[a:b], eps=eps, chunk=chunk, nthreads=nthreads)
        if origins_px is not None:
            F[:, s, s] *= _shift_phase(np.asarray(origins_px).reshape(-1, 2)[a:b], L, F.dtype)
        if ctf is not None:
            c = np.asarray(ctf)
            F *= even_part(c[a:b] if c.ndim == 3 else c, L).astype(vol.dtype, copy=False)
        out[a:b] = ifft2c(F).real
    return out


def backproject(images, rotations, origins_px=None, ctf=None, eps: float | None = None,
                chunk: int = DEFAULT_CHUNK, nthreads: int | None = None) -> np.ndarray:
    """Exact adjoint of :func:`project`: ``(L, L, L)`` real volume, dtype of the images.

    ``⟨project(x, …), y⟩ = ⟨x, backproject(y, …)⟩`` for real ``x`` and ``y`` (to NUFFT tolerance).
    The CTF is applied once (not squared), as the adjoint requires.
    """
    img = np.asarray(images)
    if img.dtype not in (np.float32, np.float64):
        img = img.astype(np.float64)
    if img.ndim == 2:
        img = img[None]
    n, L, _ = img.shape
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if rot.shape[0] != n:
        raise ValueError(f"{n} images but {rot.shape[0]} rotations")
    _check_stack_args(n, L, origins_px, ctf)
    acc = np.zeros((L, L, L), dtype=_complex(img.dtype))
    s = _sl(L)
    for a, b in _chunks(n, chunk):
        F = fft2c(img[a:b]) / (L * L)  # adjoint of the centred inverse FFT
        F = F.astype(_complex(img.dtype), copy=False)
        if ctf is not None:
            c = np.asarray(ctf)
            F *= even_part(c[a:b] if c.ndim == 3 else c, L).astype(img.dtype, copy=False)
        if origins_px is not None:
            F[:, s, s] *= np.conj(_shift_phase(np.asarray(origins_px).reshape(-1, 2)[a:b], L, F.dtype))
        acc += backproject_slices(F, rot[a:b], L=L, eps=eps, chunk=chunk, nthreads=nthreads)
    return acc.real.astype(img.dtype, copy=False)
