"""The conventions of docs/conventions.md, checked against independent computations."""

import numpy as np
from scipy.spatial.transform import Rotation

from cryoprism.ctf import CTFParams, ctf_1d, ctf_2d, electron_wavelength_A
from cryoprism.fourier import fft2c, freq_grid, ifft2c
from cryoprism.geometry import euler_to_matrix, matrix_to_euler, viewing_direction


def test_fft_centre_and_shift_theorem(rng):
    L = 16
    img = np.zeros((L, L))
    img[L // 2, L // 2] = 1.0
    F = fft2c(img)
    assert np.allclose(F, 1.0)  # a delta at the centre has a flat, real transform
    x = rng.standard_normal((L, L))
    assert np.allclose(ifft2c(fft2c(x)).real, x)
    # shifting by +t pixels multiplies by exp(-2πi k·t/L)
    t = 3
    ky, kx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    shifted = ifft2c(fft2c(x) * np.exp(-2j * np.pi * kx * t / L)).real
    assert np.allclose(shifted, np.roll(x, t, axis=1))


def test_freq_grid_units():
    sy, sx = freq_grid((10, 10), pixel_size_A=2.0)
    assert np.isclose(sx[0, 0], -0.25)  # Nyquist = 1/(2·2 Å)
    assert sx[5, 5] == 0 and sy[5, 5] == 0


def test_euler_matches_scipy_zyz_transposed(rng):
    e = rng.uniform([-180, 0, -180], [180, 180, 180], size=(20, 3))
    A = euler_to_matrix(*e.T)
    B = Rotation.from_euler("ZYZ", e, degrees=True).as_matrix()
    assert np.allclose(A, np.transpose(B, (0, 2, 1)))
    back = np.stack(matrix_to_euler(A), axis=1)
    assert np.allclose(euler_to_matrix(*back.T), A)


def test_viewing_direction():
    # tilt 90°, rot 0 looks along +x of the volume
    A = euler_to_matrix(0.0, 90.0, 0.0)
    assert np.allclose(viewing_direction(A), [1, 0, 0])


def test_wavelength():
    # textbook values: 300 kV → 0.01969 Å, 200 kV → 0.02508 Å, 100 kV → 0.03701 Å
    assert abs(electron_wavelength_A(300) - 0.01969) < 1e-5
    assert abs(electron_wavelength_A(200) - 0.02508) < 1e-5
    assert abs(electron_wavelength_A(100) - 0.03701) < 1e-5


def test_ctf_first_zero_and_sign():
    # Cs = 0, Q = 0: CTF = sin(π λ Δf s²) → first zero at s = sqrt(1 / (λ Δf))
    p = CTFParams(defocus_u_A=20000, defocus_v_A=20000, cs_mm=0.0, amplitude_contrast=0.0, voltage_kV=300)
    lam = 0.0196875
    s0 = np.sqrt(1.0 / (lam * 20000))
    s = np.array([s0 / np.sqrt(2), s0])
    v = ctf_1d(s, p)
    assert v[0] > 0.9999  # maximum where π λ Δf s² = π/2, positive
    assert abs(v[1]) < 1e-4
    q = CTFParams(defocus_u_A=20000, defocus_v_A=20000, amplitude_contrast=0.1)
    assert np.isclose(ctf_1d(np.array([0.0]), q)[0], 0.1)  # RELION: +Q at s = 0


def test_ctf_astigmatism_axis():
    # defocus U along the astigmatism angle: the ring along x is governed by U when angle = 0
    L, px = 128, 1.0
    p = CTFParams(defocus_u_A=30000, defocus_v_A=10000, defocus_angle_deg=0.0, cs_mm=0, amplitude_contrast=0)
    c = ctf_2d(L, px, p, dtype=np.float64)
    lam = electron_wavelength_A(300)
    s = (np.arange(L) - L // 2) / (L * px)
    along_x = c[L // 2, :]
    assert np.allclose(along_x, np.sin(np.pi * lam * 30000 * s**2), atol=1e-6)
    along_y = c[:, L // 2]
    assert np.allclose(along_y, np.sin(np.pi * lam * 10000 * s**2), atol=1e-6)
