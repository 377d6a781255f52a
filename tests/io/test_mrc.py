"""MRC reading/writing: voxel size, origin, permissive files, and bad input."""

import struct

import mrcfile
import numpy as np
import pytest

from cryoprism.errors import InputError
from cryoprism.io import MrcStack, MrcStackWriter, open_mrc_stack, read_mrc, read_mrc_header, write_mrc


def test_write_read_volume_keeps_data_voxel_size_origin(tmp_path, rng):
    vol = rng.standard_normal((6, 7, 8)).astype(np.float32)
    out = write_mrc(tmp_path / "v.mrc", vol, 1.75, origin_A=(3.0, -2.5, 10.0))
    got, vs = read_mrc(out)
    np.testing.assert_array_equal(got, vol)
    assert vs == pytest.approx(1.75)
    h = read_mrc_header(out)
    assert h["origin_A"] == pytest.approx((3.0, -2.5, 10.0))
    assert h["shape"] == (6, 7, 8)
    # independent check with mrcfile itself
    with mrcfile.open(out) as m:
        assert float(m.voxel_size.x) == pytest.approx(1.75)
        np.testing.assert_array_equal(m.data, vol)
        assert float(m.header.dmax) == pytest.approx(float(vol.max()))
    assert not list(tmp_path.glob(".*part*"))  # no temporary left behind


def test_write_image_and_stack(tmp_path, rng):
    img = rng.standard_normal((5, 9)).astype(np.float32)
    got, vs = read_mrc(write_mrc(tmp_path / "i.mrc", img, None))
    assert got.shape == (5, 9) and vs is None
    stack = rng.standard_normal((3, 4, 4)).astype(np.float32)
    p = write_mrc(tmp_path / "s.mrcs", stack, 2.0, is_stack=True)
    with mrcfile.open(p) as m:
        assert m.is_image_stack()
    np.testing.assert_array_equal(read_mrc(p)[0], stack)


def test_zero_voxel_size_reads_as_unknown(data_dir):
    arr, vs = read_mrc(data_dir / "particles/aspire_sample/sample.mrcs")
    assert vs is None
    assert arr.shape == (17, 200, 200) and arr.dtype == np.float32


def test_real_maps_and_header_edge_cases(data_dir):
    arr, vs = read_mrc(data_dir / "maps/emd_3488_hemoglobin.mrc", ndim=3, finite=True)
    assert arr.shape == (100, 100, 100) and vs == pytest.approx(1.05)
    h = read_mrc_header(data_dir / "metadata/EMD-3001.map")
    assert h["shape"] == (25, 43, 73)  # nz, ny, nx
    assert h["start"] == (0, -21, -12)
    assert h["ispg"] == 4
    assert h["data_offset"] == 1024 + 160  # symmetry records


def test_permissive_files_warn_and_read(data_dir):
    with pytest.warns(RuntimeWarning, match="machine stamp"):
        arr, vs = read_mrc(data_dir / "maps/50S_states/vol_018.mrc")
    assert arr.shape == (64, 64, 64) and vs == pytest.approx(6.55)
    with pytest.warns(RuntimeWarning, match="Map ID"):
        arr, _ = read_mrc(data_dir / "particles/relion31/relion31.mrcs")
    assert arr.shape == (5, 256, 256)


def test_open_mrc_stack_is_memory_mapped(data_dir):
    m = open_mrc_stack(data_dir / "particles/aspire_sample/sample.mrcs")
    try:
        assert isinstance(m.data, np.memmap)
        assert m.data.shape == (17, 200, 200)
    finally:
        m.close()


def test_stream_writer_and_reader(tmp_path, rng):
    data = rng.standard_normal((10, 12, 12)).astype(np.float32)
    p = tmp_path / "w.mrcs"
    with MrcStackWriter(p, 10, 12, 3.0) as w:
        for a in range(0, 10, 4):
            w.write(data[a:a + 4])
    with mrcfile.open(p) as m:  # header stats written at close
        np.testing.assert_array_equal(m.data, data)
        assert float(m.header.dmean) == pytest.approx(float(data.mean()), abs=1e-6)
        assert float(m.header.rms) == pytest.approx(float(data.std()), rel=1e-5)
        assert float(m.voxel_size.x) == pytest.approx(3.0)
    st = MrcStack(p)
    np.testing.assert_array_equal(st.read([7, 2, 2]), data[[7, 2, 2]])
    np.testing.assert_array_equal(st.read(range(3, 6)), data[3:6])
    st.close()


def test_stream_writer_counts_images(tmp_path):
    with pytest.raises(InputError, match="3 images written, 4 expected"):
        with MrcStackWriter(tmp_path / "w.mrcs", 4, 8, 1.0) as w:
            w.write(np.zeros((3, 8, 8)))
            w.close()


# ------------------------------------------------------------------------------ bad input
def test_truncated_mrc(tmp_path, rng):
    p = write_mrc(tmp_path / "t.mrc", rng.standard_normal((8, 8, 8)), 1.0)
    data = p.read_bytes()
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(data[:-100])
    with pytest.raises(InputError, match="truncated") as e:
        read_mrc(cut)
    assert "cut.mrc" in str(e.value)
    short = tmp_path / "short.mrc"
    short.write_bytes(data[:500])
    with pytest.raises(InputError, match="1024-byte"):
        read_mrc_header(short)


def test_wrong_mode(tmp_path, rng):
    p = write_mrc(tmp_path / "m.mrc", rng.standard_normal((4, 4, 4)), 1.0)
    raw = bytearray(p.read_bytes())
    raw[12:16] = struct.pack("<i", 4)  # complex64
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="mode 4"):
        read_mrc(p)


def test_wrong_dimensionality(tmp_path, rng):
    p = write_mrc(tmp_path / "v.mrc", rng.standard_normal((4, 5, 6)), 1.0)
    with pytest.raises(InputError, match="expected a 2-D image") as e:
        read_mrc(p, ndim=2)
    assert "v.mrc" in str(e.value)


def test_nan_in_data(tmp_path, rng):
    vol = rng.standard_normal((4, 4, 4)).astype(np.float32)
    vol[1, 2, 3] = np.nan
    p = write_mrc(tmp_path / "n.mrc", vol, 1.0)
    arr, _ = read_mrc(p)  # allowed unless finite data is asked for
    assert np.isnan(arr[1, 2, 3])
    with pytest.raises(InputError, match="1 non-finite"):
        read_mrc(p, finite=True)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        read_mrc(tmp_path / "nothing.mrc")
    assert "nothing.mrc" in str(e.value)
