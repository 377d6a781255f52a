"""Radial averages, power spectra, centred crop/pad and Fourier resampling.

Every function acts on the trailing ``ndim`` axes (2 for images/stacks, 3 for volumes) and is batched
over any leading axes. Centres stay at index ``L // 2`` (docs/conventions.md).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from cryoprism.fourier.core import fftnc, radial_index
from cryoprism.parallel.config import fft_workers


def _check_ndim(x: np.ndarray, ndim: int) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if x.ndim < ndim:
        raise ValueError(f"array of shape {x.shape} has fewer than ndim={ndim} axes")


def n_shells(shape) -> int:
    """Number of integer Fourier shells ``0 … min(shape)//2`` inside the inscribed sphere."""
    return int(min(shape)) // 2 + 1


def radial_average(x: np.ndarray, ndim: int = 2, n_bins: int | None = None) -> np.ndarray:
    """Average of ``x`` over shells of integer radius ``round(|k|)`` about the centre ``L//2``.

    Works for any centred 2-D/3-D array (a power spectrum, a correlation map, an image). Returns
    ``(..., n_bins)``; bin ``k`` averages elements at distance ``round(r) == k`` from the centre.
    ``n_bins`` defaults to :func:`n_shells` (shells up to the inscribed radius); pass a larger value
    to include the corners (up to ``ceil(√ndim · L/2)``). Empty shells give 0.
    """
    x = np.asarray(x)
    _check_ndim(x, ndim)
    shape = x.shape[-ndim:]
    lead = x.shape[:-ndim]
    idx = radial_index(shape).ravel()
    nb = n_shells(shape) if n_bins is None else int(n_bins)
    keep = idx < nb
    idx = idx[keep]
    counts = np.bincount(idx, minlength=nb).astype(np.float64)
    flat = x.reshape(-1, int(np.prod(shape)))[:, keep]
    b = flat.shape[0]
    offs = (idx[None, :] + nb * np.arange(b)[:, None]).ravel()
    if np.iscomplexobj(flat):
        sums = (np.bincount(offs, flat.real.ravel(), minlength=nb * b)
                + 1j * np.bincount(offs, flat.imag.ravel(), minlength=nb * b))
    else:
        sums = np.bincount(offs, flat.ravel().astype(np.float64), minlength=nb * b)
    sums = sums.reshape(b, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    return avg.reshape(lead + (nb,))


def shells_to_grid(profile: np.ndarray, shape) -> np.ndarray:
    """Inverse of :func:`radial_average`: spread a 1-D shell profile (``(..., nb)``) on a centred grid.

    Linear interpolation in the radius; beyond the last shell the last value is used.
    """
    profile = np.asarray(profile)
    k = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    r = np.sqrt(sum(g.astype(np.float64) ** 2 for g in k))
    nb = profile.shape[-1]
    r = np.minimum(r, nb - 1)
    i0 = np.floor(r).astype(np.int64)
    i1 = np.minimum(i0 + 1, nb - 1)
    w = r - i0
    return profile[..., i0] * (1 - w) + profile[..., i1] * w


def shell_frequencies(L: int, n_bins: int, pixel_size_A: float = 1.0) -> np.ndarray:
    """Spatial frequency (1/Å) of integer shell ``k``: ``k / (L · pixel_size_A)``."""
    return np.arange(n_bins) / (L * pixel_size_A)


def power_spectrum(x: np.ndarray, ndim: int = 2) -> np.ndarray:
    """Centred power spectrum ``|F|² / N`` (N = pixels per image), batched over leading axes.

    With this normalisation white noise of variance σ² has a flat spectrum equal to σ².
    """
    x = np.asarray(x)
    _check_ndim(x, ndim)
    n = int(np.prod(x.shape[-ndim:]))
    F = fftnc(x, ndim)
    return (F.real**2 + F.imag**2) / n


def radial_power_spectrum(x: np.ndarray, pixel_size_A: float = 1.0, ndim: int = 2,
                          average: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """1-D rotationally averaged power spectrum.

    Returns ``(freq_invA, ps)`` with ``ps`` of shape ``(..., L//2+1)`` (or ``(L//2+1,)`` averaged over
    all leading axes when ``average=True``). Requires a cubic/square box.
    """
    x = np.asarray(x)
    _check_ndim(x, ndim)
    shape = x.shape[-ndim:]
    ps = radial_average(power_spectrum(x, ndim), ndim)
    if average and ps.ndim > 1:
        ps = ps.reshape(-1, ps.shape[-1]).mean(axis=0)
    return shell_frequencies(shape[-1], ps.shape[-1], pixel_size_A), ps


def _window_slices(old, new):
    """Slices (into the larger array) placing a centred box of size ``min(old,new)``."""
    src, dst = [], []
    for o, n in zip(old, new):
        if n <= o:  # crop
            s = o // 2 - n // 2
            src.append(slice(s, s + n))
            dst.append(slice(0, n))
        else:  # pad
            s = n // 2 - o // 2
            src.append(slice(0, o))
            dst.append(slice(s, s + o))
    return tuple(src), tuple(dst)


def _size_tuple(size, ndim):
    if np.ndim(size) == 0:
        return (int(size),) * ndim
    size = tuple(int(s) for s in size)
    if len(size) != ndim:
        raise ValueError(f"size {size} does not have {ndim} entries")
    return size


def crop_or_pad(x: np.ndarray, size, ndim: int = 2, value: float = 0.0) -> np.ndarray:
    """Centred crop or zero-pad (per axis) of the trailing ``ndim`` axes to ``size``.

    The element at ``L//2`` of the input lands at ``size//2`` of the output, on every axis.
    """
    x = np.asarray(x)
    _check_ndim(x, ndim)
    old = x.shape[-ndim:]
    new = _size_tuple(size, ndim)
    if min(new) < 1:
        raise ValueError(f"size must be positive, got {new}")
    lead = x.shape[:-ndim]
    out = np.full(lead + new, value, dtype=x.dtype)
    src, dst = _window_slices(old, new)
    ell = (Ellipsis,)
    out[ell + dst] = x[ell + src]
    return out


def crop(x: np.ndarray, size, ndim: int = 2) -> np.ndarray:
    """Centred crop of the trailing ``ndim`` axes to ``size`` (int or tuple); see :func:`crop_or_pad`."""
    new = _size_tuple(size, ndim)
    if any(n > o for n, o in zip(new, np.shape(x)[-ndim:])):
        raise ValueError(f"crop size {new} exceeds shape {np.shape(x)[-ndim:]}")
    return crop_or_pad(x, new, ndim)


def pad(x: np.ndarray, size, ndim: int = 2, value: float = 0.0) -> np.ndarray:
    """Centred pad of the trailing ``ndim`` axes to ``size`` with ``value``; see :func:`crop_or_pad`."""
    new = _size_tuple(size, ndim)
    if any(n < o for n, o in zip(new, np.shape(x)[-ndim:])):
        raise ValueError(f"pad size {new} is smaller than shape {np.shape(x)[-ndim:]}")
    return crop_or_pad(x, new, ndim, value)


def _resize_axis_full(A: np.ndarray, axis: int, old: int, new: int) -> np.ndarray:
    """Crop/pad one axis of a spectrum stored in FFT order (index ``k mod n``).

    Even Nyquist terms: cropping to even ``new`` stores ``F(−new/2) + F(+new/2)`` at ``−new/2`` (the
    two frequencies alias to one on the new grid, as when sampling the continuous signal); padding
    from even ``old`` puts ``F(−old/2) / 2`` at both ``±old/2`` (the symmetric band-limited
    interpolant). Padding then cropping back is the identity.
    """
    A = np.moveaxis(A, axis, -1)
    out = np.zeros(A.shape[:-1] + (new,), dtype=A.dtype)
    m = min(old, new)
    pos = (m - 1) // 2  # k = 0 … pos
    neg = m // 2  # k = −1 … −neg
    out[..., :pos + 1] = A[..., :pos + 1]
    out[..., new - neg:] = A[..., old - neg:]
    if m % 2 == 0:
        if new < old:  # fold +new/2 onto −new/2
            out[..., new - neg] = A[..., old - neg] + A[..., neg]
        else:  # split −old/2 into ±old/2
            half = 0.5 * A[..., old - neg]
            out[..., new - neg] = half
            out[..., neg] = half
    return np.moveaxis(out, -1, axis)


def _resize_axis_half(A: np.ndarray, old: int, new: int) -> np.ndarray:
    """Crop/pad the last axis of a real-FFT half spectrum (``k = 0 … n//2``).

    The inverse real FFT keeps only the Hermitian part of the Nyquist column,
    ``(A(k, n/2) + conj A(−k, n/2)) / 2``, so cropping to even ``new`` doubles that column to get the
    fold ``F(+new/2) + F(−new/2)``; padding from even ``old`` halves the ``old/2`` column (its mirror
    ``−old/2`` is implied).
    """
    out = np.zeros(A.shape[:-1] + (new // 2 + 1,), dtype=A.dtype)
    m = min(old, new) // 2 + 1
    out[..., :m] = A[..., :m]
    if new > old and old % 2 == 0:
        out[..., old // 2] *= 0.5
    elif new < old and new % 2 == 0:
        out[..., new // 2] *= 2.0
    return out


def fourier_resize(x: np.ndarray, size, ndim: int = 2,
                   pixel_size_A: float = 1.0) -> tuple[np.ndarray, float]:
    """Resample by cropping (downsample) or zero-padding (upsample) the centred transform.

    Band-limited interpolation: the output is the same continuous band-limited signal sampled
    on ``size`` points over the same field of view. The mean intensity is preserved (values are
    multiplied by ``N_out / N_in`` after the unnormalised/1/N transform pair). Axis by axis, an
    even box's unpaired Nyquist term is split in half between ``±L/2`` when padding, and the two
    frequencies ``±M/2`` that alias on an even new box are summed when cropping (so cropping equals
    sampling the continuous band-limited signal, and ``downsample(upsample(x))`` returns ``x``).
    Real input gives real output (computed with real FFTs). Returns ``(array, new_pixel_size_A)`` with
    ``new = pixel_size_A · L / size`` (last axis).
    """
    x = np.asarray(x)
    _check_ndim(x, ndim)
    old = tuple(x.shape[-ndim:])
    new = _size_tuple(size, ndim)
    if min(new) < 1:
        raise ValueError(f"size must be positive, got {new}")
    px_new = float(pixel_size_A) * old[-1] / new[-1]
    if new == old:
        return x.copy(), px_new
    ax = tuple(range(-ndim, 0))
    scale = float(np.prod(new)) / float(np.prod(old))
    if np.iscomplexobj(x):
        F = sfft.fftn(sfft.ifftshift(x, axes=ax), axes=ax, workers=fft_workers())
        for j in range(ndim):
            F = _resize_axis_full(F, x.ndim - ndim + j, old[j], new[j])
        y = sfft.fftshift(sfft.ifftn(F, axes=ax, workers=fft_workers()), axes=ax) * scale
        return y.astype(x.dtype, copy=False), px_new
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    F = sfft.rfftn(sfft.ifftshift(x.astype(dtype, copy=False), axes=ax), axes=ax, workers=fft_workers())
    for j in range(ndim - 1):
        F = _resize_axis_full(F, x.ndim - ndim + j, old[j], new[j])
    F = _resize_axis_half(F, old[-1], new[-1])
    y = sfft.irfftn(F, s=new, axes=ax, workers=fft_workers())
    y = sfft.fftshift(y, axes=ax)
    y *= scale
    return y.astype(dtype, copy=False), px_new


def downsample(x: np.ndarray, size, ndim: int = 2, pixel_size_A: float = 1.0) -> tuple[np.ndarray, float]:
    """Fourier-crop downsample to box ``size`` (anti-aliased); returns ``(array, new_pixel_size_A)``."""
    new = _size_tuple(size, ndim)
    if any(n > o for n, o in zip(new, np.shape(x)[-ndim:])):
        raise ValueError(f"downsample size {new} exceeds shape {np.shape(x)[-ndim:]}; use upsample")
    return fourier_resize(x, new, ndim, pixel_size_A)


def upsample(x: np.ndarray, size, ndim: int = 2, pixel_size_A: float = 1.0) -> tuple[np.ndarray, float]:
    """Fourier-pad upsample to box ``size`` (sinc interpolation); returns ``(array, new_pixel_size_A)``."""
    new = _size_tuple(size, ndim)
    if any(n < o for n, o in zip(new, np.shape(x)[-ndim:])):
        raise ValueError(f"upsample size {new} is smaller than shape {np.shape(x)[-ndim:]}; use downsample")
    return fourier_resize(x, new, ndim, pixel_size_A)


__all__ = [
    "crop", "crop_or_pad", "downsample", "fourier_resize", "n_shells", "pad",
    "power_spectrum", "radial_average", "radial_power_spectrum", "shell_frequencies",
    "shells_to_grid", "upsample",
]
