"""Fourier–Bessel basis: expansion/evaluation, rotation and reflection against analytic images."""

import numpy as np
import pytest
from scipy import ndimage

from cryoprism.basis import fb_basis_2d

L = 48


def blobs(centres, sigmas, amps, L=L):
    """Sum of 2-D Gaussians at (x, y) pixel offsets from L//2 (x = column, y = row)."""
    y, x = np.mgrid[:L, :L] - L // 2
    img = np.zeros((L, L))
    for (cx, cy), s, a in zip(centres, sigmas, amps):
        img += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
    return img


CENTRES = [(5.0, -7.0), (-8.0, 3.0), (2.0, 9.0)]
SIGMAS = [2.5, 3.0, 2.0]
AMPS = [1.0, 0.6, -0.4]


@pytest.fixture(scope="module")
def basis():
    return fb_basis_2d(L)


def test_band_limit_and_layout(basis):
    # sampling criterion: j_{k,q} <= 2π c R with c = 1/2, R = L/2
    bound = np.pi * (L // 2)
    assert all(z.max() <= bound for z in basis.zeros)
    assert basis.k_max == len(basis.zeros) - 1
    assert basis.n_coef == basis.ks.size == basis.qs.size
    # about (2π c R)² / 4 functions counting ±k: close to the number of pixels in the disk, π R²
    assert 0.5 < basis.n_real_dof / (np.pi * (L // 2) ** 2) < 1.1


def test_expand_evaluate_recovers_bandlimited_image(basis):
    img = blobs(CENTRES, SIGMAS, AMPS)
    a = basis.expand(img)
    rec = basis.evaluate(a)
    assert np.linalg.norm(rec - img) / np.linalg.norm(img) < 1e-6
    # orthonormal basis: coefficient norm equals image norm (Parseval)
    assert basis.norms(a) == pytest.approx(np.linalg.norm(img), rel=1e-6)


def test_batch_and_float32(basis):
    imgs = np.stack([blobs(CENTRES, SIGMAS, AMPS), blobs([(0, 0)], [3.0], [1.0])])
    a64 = basis.expand(imgs)
    a32 = basis.expand(imgs.astype(np.float32))
    assert a32.dtype == np.complex64
    assert np.abs(a32 - a64).max() < 1e-4 * np.abs(a64).max()
    assert np.allclose(a64[1], basis.expand(imgs[1]), atol=1e-10)


@pytest.mark.parametrize("alpha", [0.3, -1.2, 2.5])
def test_rotation_matches_analytic_rotation(basis, alpha):
    c, s = np.cos(alpha), np.sin(alpha)
    rot = [(c * x - s * y, s * x + c * y) for x, y in CENTRES]
    truth = blobs(rot, SIGMAS, AMPS)
    got = basis.evaluate(basis.rotate(basis.expand(blobs(CENTRES, SIGMAS, AMPS)), alpha))
    assert np.linalg.norm(got - truth) / np.linalg.norm(truth) < 1e-6


def test_rotation_matches_scipy_rotate_in_interior():
    # odd box: scipy rotates about (L-1)/2, which is our centre L//2 only for odd L
    L = 49
    basis = fb_basis_2d(L)
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.standard_normal((L, L)), 2.0)
    img *= blobs([(0, 0)], [7.0], [1.0], L=L)        # keep it inside the disk
    deg = 37.0
    # scipy rotates the array counter-clockwise as displayed with row 0 at the top, i.e. clockwise
    # in the (x = column, y = row) frame: our angle is -deg
    ref = ndimage.rotate(img, deg, reshape=False, order=3)
    got = basis.evaluate(basis.rotate(basis.expand(img), np.deg2rad(-deg)))
    y, x = np.mgrid[:L, :L] - L // 2
    inner = x * x + y * y < (L // 3) ** 2
    err = np.linalg.norm((got - ref)[inner]) / np.linalg.norm(ref[inner])
    assert err < 0.02
    wrong = basis.evaluate(basis.rotate(basis.expand(img), np.deg2rad(deg)))
    assert np.linalg.norm((wrong - ref)[inner]) / np.linalg.norm(ref[inner]) > 0.2


def test_reflection(basis):
    img = blobs(CENTRES, SIGMAS, AMPS)
    truth = blobs([(x, -y) for x, y in CENTRES], SIGMAS, AMPS)      # I(x, -y)
    got = basis.evaluate(basis.reflect(basis.expand(img)))
    assert np.linalg.norm(got - truth) / np.linalg.norm(truth) < 1e-6


def test_evaluate_then_expand_is_identity_on_coefficients():
    b = fb_basis_2d(32, radius_px=12)                 # functions well inside the box
    rng = np.random.default_rng(1)
    a = rng.standard_normal(b.n_coef) + 1j * rng.standard_normal(b.n_coef)
    a[b.ks == 0] = a[b.ks == 0].real
    a[b.qs > 3] = 0                                   # low radial order: concentrated within R
    back = b.expand(b.evaluate(a))
    assert np.linalg.norm(back - a) / np.linalg.norm(a) < 1e-2
