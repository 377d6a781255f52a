"""ParticleStack: lazy batches from one or several memory-mapped stacks; write_particles."""

import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryoprism.errors import InputError
from cryoprism.io import read_particles, read_star, write_mrc, write_particles, write_star

DATA = Path(__file__).parents[1] / "data"


def _mrc_data(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as m:
            return np.array(m.data, dtype=np.float32)


def _table(names, **cols):
    return pd.DataFrame({"rlnImageName": names, **cols})


def _optics(ps=2.0, box=16):
    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                         "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                         "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [ps], "rlnImageSize": [box],
                         "rlnImageDimensionality": [2]})


def test_relion31_stack_images_and_figures():
    with pytest.warns(RuntimeWarning):
        ps = read_particles(DATA / "particles/relion31/relion31.star")
    assert (ps.n, ps.box) == (5, 256)
    assert ps.pixel_size_A == pytest.approx(2.806)  # optics group beats the MRC header's 1.0
    ref = _mrc_data(DATA / "particles/relion31/relion31.mrcs")
    np.testing.assert_array_equal(ps.images([4, 0, 2]), ref[[4, 0, 2]])
    seen = []
    for b in ps.batches(2):
        assert b.images.shape[0] == len(b.indices) <= 2
        np.testing.assert_array_equal(b.images, ref[b.indices])
        assert b.rotations.shape == (len(b), 3, 3) and b.origins_A.shape == (len(b), 2)
        assert len(b.ctf) == len(b)
        seen += b.indices.tolist()
    assert seen == [0, 1, 2, 3, 4]
    sub = list(ps.batches(10, indices=[3, 1]))
    assert len(sub) == 1 and sub[0].indices.tolist() == [3, 1]
    assert sub[0].origins_A[0] == pytest.approx([-0.00755, -0.33640])


def test_cs_stack_reads_same_images_as_star():
    a = read_particles(DATA / "particles/empiar10076_7/empiar_10076_7.star")
    b = read_particles(DATA / "particles/empiar10076_7/empiar_10076_7.cs")
    np.testing.assert_array_equal(a.images(), b.images())
    assert a.pixel_size_A == pytest.approx(b.pixel_size_A, rel=1e-6)


def _two_stacks(tmp_path, rng, box=16):
    a = rng.standard_normal((4, box, box)).astype(np.float32)
    b = rng.standard_normal((3, box, box)).astype(np.float32)
    (tmp_path / "stk").mkdir()
    write_mrc(tmp_path / "stk/a.mrcs", a, 2.0, is_stack=True)
    write_mrc(tmp_path / "stk/b.mrcs", b, 2.0, is_stack=True)
    return a, b


def test_rows_pointing_into_several_stacks(tmp_path, rng, monkeypatch):
    a, b = _two_stacks(tmp_path, rng)
    names = ["2@stk/a.mrcs", "1@stk/b.mrcs", "000004@stk/a.mrcs", "3@stk/b.mrcs", "2@stk/a.mrcs"]
    star = tmp_path / "p.star"
    write_star(star, _table(names, rlnDefocusU=np.full(5, 1e4), rlnOpticsGroup=np.ones(5, int)), _optics())
    monkeypatch.chdir(tmp_path.parent)  # paths resolve relative to the STAR file's folder, not the CWD
    ps = read_particles(star)
    expect = np.stack([a[1], b[0], a[3], b[2], a[1]])
    np.testing.assert_array_equal(ps.images(), expect)
    np.testing.assert_array_equal(np.concatenate([x.images for x in ps.batches(2)]), expect)
    assert len(ps.files) == 2


def test_batches_through_parallel_map_match_serial(tmp_path, rng):
    from cryoprism.parallel import map_batches

    a, b = _two_stacks(tmp_path, rng)
    names = [f"{i}@stk/a.mrcs" for i in (1, 2, 3, 4)] + [f"{i}@stk/b.mrcs:mrcs" for i in (3, 2, 1)]
    star = tmp_path / "p.star"
    write_star(star, _table(names), _optics())
    ps = read_particles(star)
    sums = map_batches(lambda idx: ps.batch(idx).images.sum(axis=(1, 2)), ps.batch_indices(2), n_workers=2,
                       progress=False)
    expect = np.concatenate([a, b[::-1]]).sum(axis=(1, 2))
    np.testing.assert_allclose(np.concatenate(sums), expect, rtol=1e-5)


def test_paths_relative_to_cwd_as_fallback(tmp_path, rng, monkeypatch):
    a, _ = _two_stacks(tmp_path, rng)
    (tmp_path / "meta").mkdir()
    star = tmp_path / "meta/p.star"
    write_star(star, _table(["3@stk/a.mrcs"]), _optics())
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(read_particles(star).images(), a[[2]])


def test_pixel_size_from_mrc_header_when_tables_lack_it(tmp_path, rng):
    _two_stacks(tmp_path, rng)  # header voxel size 2.0
    star = tmp_path / "p.star"
    write_star(star, _table(["1@stk/a.mrcs", "2@stk/b.mrcs"]))  # RELION 3.0 style, no optics columns
    assert read_star(star).style == "3.0"
    assert read_particles(star).pixel_size_A == pytest.approx(2.0)


def test_write_particles_streams_and_keeps_columns(tmp_path, rng):
    src = read_particles(DATA / "particles/aspire_sample/sample_relion_data.star")
    ref = src.images()

    def processed():  # a generator: the writer never sees the whole stack
        for b in src.batches(5):
            yield b.images * 2.0

    star_out, stack_out = write_particles(tmp_path / "out/p.star", tmp_path / "out/stacks/p.mrcs",
                                          processed(), src.star)
    out = read_particles(star_out)
    assert out.star.style == "3.1"
    np.testing.assert_array_equal(out.images(), 2.0 * ref)
    cols_in = list(src.table.columns)
    cols_out = list(out.table.columns)
    assert cols_out[:len(cols_in)] == cols_in  # input columns first, in order
    assert {"rlnOpticsGroup", "rlnOriginXAngst", "rlnOriginYAngst", "rlnImageOriginalName"} <= set(cols_out)
    assert out.table["rlnImageName"].iloc[3] == "000004@stacks/p.mrcs"
    assert out.table["rlnImageOriginalName"].iloc[3] == src.table["rlnImageName"].iloc[3]
    pd.testing.assert_series_equal(out.table["rlnDefocusU"], src.table["rlnDefocusU"])
    np.testing.assert_allclose(out.origins_A(), src.origins_A(), atol=1e-12)
    np.testing.assert_allclose(out.rotations(), src.rotations(), atol=1e-12)
    assert out.pixel_size_A == pytest.approx(src.pixel_size_A)
    with mrcfile.open(stack_out) as m:
        assert m.is_image_stack() and float(m.voxel_size.x) == pytest.approx(src.pixel_size_A, rel=1e-6)


def test_write_particles_with_new_pixel_size_updates_pixel_origins(tmp_path, rng):
    src = read_particles(DATA / "particles/aspire_sample/sample_relion_data.star")
    small = rng.standard_normal((17, 8, 8)).astype(np.float32)
    star_out, _ = write_particles(tmp_path / "d.star", tmp_path / "d.mrcs", small, src.star,
                                  pixel_size_A=25.0)
    out = read_particles(star_out)
    assert out.box == 8 and out.pixel_size_A == 25.0
    np.testing.assert_allclose(out.origins_A(), src.origins_A(), atol=1e-9)  # Å origins unchanged
    np.testing.assert_allclose(out.table["rlnOriginX"], src.origins_A()[:, 0] / 25.0)


def test_write_particles_is_atomic(tmp_path, rng):
    t = _table([f"{i}@x.mrcs" for i in range(1, 5)], rlnOpticsGroup=np.ones(4, int))
    with pytest.raises(InputError, match="3 images written, 4 expected"):
        write_particles(tmp_path / "p.star", tmp_path / "p.mrcs", [np.zeros((3, 8, 8))], t, _optics(box=8))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ bad input
def test_row_beyond_stack_end(tmp_path, rng):
    _two_stacks(tmp_path, rng)
    star = tmp_path / "p.star"
    write_star(star, _table(["1@stk/a.mrcs", "2@stk/b.mrcs", "4@stk/b.mrcs"]), _optics())
    with pytest.raises(InputError, match=r"row 3 names image 4 of .*b\.mrcs, which holds only 3") as e:
        read_particles(star)
    assert "p.star" in str(e.value)


def test_missing_stack_file(tmp_path):
    star = tmp_path / "p.star"
    write_star(star, _table(["1@nowhere.mrcs"]), _optics())
    with pytest.raises(InputError, match="row 1: image stack 'nowhere.mrcs' not found"):
        read_particles(star)


def test_unknown_pixel_size(tmp_path, rng):
    write_mrc(tmp_path / "s.mrcs", rng.standard_normal((2, 8, 8)), None, is_stack=True)  # header 0
    star = tmp_path / "p.star"
    write_star(star, _table(["1@s.mrcs", "2@s.mrcs"]))
    with pytest.raises(InputError, match="pixel size of row 1 is unknown.*rlnImagePixelSize"):
        read_particles(star)
    assert read_particles(star, pixel_size_A=3.0).pixel_size_A == 3.0  # explicit fallback


def test_bad_image_name(tmp_path):
    star = tmp_path / "p.star"
    write_star(star, _table(["1@a.mrcs", "x@a.mrcs"]), _optics())
    with pytest.raises(InputError, match="row 2"):
        read_particles(star)
