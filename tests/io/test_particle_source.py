"""ParticleStack as the one particle source: from_arrays, subset, cropped, Batch.ctf_grid, writing."""

import numpy as np
import pandas as pd
import pytest

from cryoprism.errors import InputError
from cryoprism.io import CTFParams, ParticleStack, read_particles, write_particles
from cryoprism.io.ctf_model import ctf_on_grid
from cryoprism.io.euler import euler_to_matrix


def _source(n=6, L=16, px=2.0, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.standard_normal((n, L, L)).astype(np.float32)
    rot = euler_to_matrix(rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n))
    org = rng.uniform(-3, 3, (n, 2))
    ctf = CTFParams(defocus_u_A=rng.uniform(1e4, 2e4, n), defocus_v_A=rng.uniform(1e4, 2e4, n),
                    defocus_angle_deg=rng.uniform(0, 180, n), voltage_kV=300.0, cs_mm=2.7,
                    amplitude_contrast=0.1)
    s = ParticleStack.from_arrays(imgs, pixel_size_A=px, rotations=rot, origins_A=org, ctf=ctf,
                                  class_numbers=np.arange(n) % 2 + 1,
                                  table=pd.DataFrame({"rlnRandomSubset": np.arange(n) % 2 + 1}))
    return s, imgs, rot, org, ctf


def test_from_arrays_gives_back_its_inputs_and_a_relion31_table():
    s, imgs, rot, org, ctf = _source()
    assert (s.n, s.box, s.pixel_size_A, s.dtype) == (6, 16, 2.0, np.float32)
    np.testing.assert_array_equal(s.images([4, 1]), imgs[[4, 1]])
    np.testing.assert_array_equal(s.rotations(), rot)          # the matrices given, not via angles
    np.testing.assert_array_equal(s.origins_A([2]), org[[2]])
    np.testing.assert_array_equal(s.ctf_params([3]).defocus_u_A, ctf.defocus_u_A[[3]])
    t = s.table
    assert {"rlnAngleRot", "rlnOriginXAngst", "rlnDefocusU", "rlnClassNumber", "rlnRandomSubset"} <= set(t)
    np.testing.assert_allclose(euler_to_matrix(t.rlnAngleRot, t.rlnAngleTilt, t.rlnAnglePsi), rot, atol=1e-12)
    assert s.optics["rlnVoltage"].iloc[0] == 300.0 and s.optics["rlnImageSize"].iloc[0] == 16
    assert ParticleStack.from_arrays(imgs.astype(np.float64), pixel_size_A=1.0).dtype == np.float64
    with pytest.raises(InputError):
        ParticleStack.from_arrays(imgs, pixel_size_A=1.0).rotations()


def test_batch_ctf_grid_is_the_relion_formula_at_the_batch_box_and_pixel_size():
    s, _, _, _, ctf = _source()
    b = s.batch([5, 0])
    g = b.ctf_grid(np.float64)
    L, px = 16, 2.0
    k = np.arange(L) - L // 2
    ky, kx = np.meshgrid(k, k, indexing="ij")
    sfreq, ang = np.hypot(kx, ky) / (L * px), np.arctan2(ky, kx)
    for j, i in enumerate([5, 0]):
        np.testing.assert_allclose(g[j], ctf_on_grid(sfreq, ang, ctf.take([i]))[0], atol=1e-12)
    assert ParticleStack.from_arrays(np.zeros((2, 8, 8)), pixel_size_A=1.0).batch([0]).ctf_grid() is None


def test_subset_is_a_view_of_the_rows_with_their_columns():
    s, imgs, rot, org, _ = _source()
    idx = [5, 2, 3]
    v = s.subset(idx)
    assert v.n == 3 and list(v.table["rlnRandomSubset"]) == list(s.table["rlnRandomSubset"].iloc[idx])
    np.testing.assert_array_equal(v.images(), imgs[idx])
    np.testing.assert_array_equal(v.rotations([1]), rot[[2]])
    w = v.subset([2, 0])                                         # a view of a view
    np.testing.assert_array_equal(w.images(), imgs[[3, 5]])
    np.testing.assert_array_equal(w.origins_A(), org[[3, 5]])
    np.testing.assert_array_equal(w.class_numbers(), s.class_numbers([3, 5]))


def test_cropped_keeps_the_band_and_scales_the_pixel_size():
    L, M, px = 32, 16, 1.5
    y, x = np.mgrid[:L, :L] - L // 2
    img = np.cos(2 * np.pi * 3 * x / L) + 0.5 * np.sin(2 * np.pi * 2 * y / L)   # band-limited below M/2
    s = ParticleStack.from_arrays(np.stack([img, 2 * img]), pixel_size_A=px, origins_A=[[1.5, -2.0]] * 2)
    c = s.cropped(M)
    assert (c.box, c.pixel_size_A) == (M, px * L / M)
    ym, xm = np.mgrid[:M, :M] - M // 2
    want = np.cos(2 * np.pi * 3 * xm / M) + 0.5 * np.sin(2 * np.pi * 2 * ym / M)
    np.testing.assert_allclose(c.images([1])[0], 2 * want, atol=1e-5)
    np.testing.assert_array_equal(c.origins_A(), s.origins_A())            # Å, unchanged
    assert c.batch([0]).pixel_size_A == px * L / M and s.cropped(L) is s
    np.testing.assert_allclose(c.subset([1]).images()[0], 2 * want, atol=1e-5)


def test_write_particles_writes_a_source_and_reads_back(tmp_path):
    s, imgs, rot, org, ctf = _source()
    write_particles(tmp_path / "p.star", tmp_path / "p.mrcs", s.subset([1, 4]))
    r = read_particles(tmp_path / "p.star")
    assert (r.n, r.box, r.pixel_size_A) == (2, 16, 2.0)
    np.testing.assert_array_equal(r.images(), imgs[[1, 4]])
    np.testing.assert_allclose(r.rotations(), rot[[1, 4]], atol=1e-9)
    np.testing.assert_allclose(r.origins_A(), org[[1, 4]], atol=1e-9)
    np.testing.assert_allclose(r.ctf_params().defocus_v_A, ctf.defocus_v_A[[1, 4]], rtol=1e-9)
    assert list(r.table["rlnRandomSubset"]) == [2, 1]
    write_particles(tmp_path / "c.star", tmp_path / "c.mrcs", r.cropped(8))
    c = read_particles(tmp_path / "c.star")
    assert (c.box, c.pixel_size_A) == (8, 4.0)
    np.testing.assert_allclose(c.origins_A(), org[[1, 4]], atol=1e-9)
    np.testing.assert_allclose(c.images(), r.cropped(8).images(), atol=1e-6)


def test_io_imports_no_higher_layer():
    """io sits below ctf and geometry (cryoprism/__init__.py): it imports neither."""
    import ast
    from pathlib import Path

    import cryoprism.io

    for f in Path(cryoprism.io.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                top = node.module.split(".")[:2]
                assert top[0] != "cryoprism" or top[1] in ("io", "errors", "fourier", "parallel"), (f, node.module)
