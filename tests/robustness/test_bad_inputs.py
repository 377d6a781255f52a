"""Robustness: fuzzed and corrupted MRC / STAR / .cs inputs through the CLI.

Every input gives either a normal result (exit 0: the file was still valid) or one line on stderr
naming the file, exit code 2 — never a traceback — and never a partial output file.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryoprism.cli.main import main
from cryoprism.forward import gaussian_blob_volume, simulate_particles

N_HEADER_FLIPS = 40
N_TRUNCATIONS = 12


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid map, a valid 3.1 STAR + MRCS particle set and a valid .cs, made fresh."""
    d = tmp_path_factory.mktemp("good")
    vol = gaussian_blob_volume(16, centers_px=[[0, 0, 0], [3, -2, 1]], sigmas_px=[2.5, 1.5])
    with mrcfile.new(d / "map.mrc") as m:
        m.set_data(vol.astype(np.float32))
        m.voxel_size = 2.0
    simulate_particles(vol, 12, 2.0, snr=1.0, rng=0, out_star=d / "parts.star", out_mrcs=d / "parts.mrcs",
                       progress=False)
    return d


def _copy(good, tmp_path):
    for f in good.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def _run(args, capsys):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _check(rc, err, bad_file, out_dir: Path, outputs=()):
    assert rc in (0, 2), f"exit code {rc}; stderr: {err}"
    assert "Traceback" not in err
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1, f"expected one line, got: {err!r}"
        assert lines[0].startswith("cryoprism: error:")
        assert Path(bad_file).name in lines[0], f"the error does not name the file: {lines[0]}"
        for o in outputs:
            assert not Path(o).exists(), f"partial output left behind: {o}"
        leftovers = [p.name for p in out_dir.iterdir() if ".part" in p.name]
        assert not leftovers, f"temporary files left behind: {leftovers}"


# ---------------------------------------------------------------- MRC corruptions

def _mrc_variants(src: Path, dst_dir: Path):
    raw = src.read_bytes()
    rng = np.random.default_rng(7)
    out = {}

    def put(name, data):
        p = dst_dir / f"{name}.mrc"
        p.write_bytes(data)
        out[name] = p

    put("empty", b"")
    put("ten_bytes", raw[:10])
    put("header_only", raw[:1024])
    for k, cut in enumerate(rng.integers(1025, len(raw) - 1, N_TRUNCATIONS)):
        put(f"truncated_{k}", raw[:cut])
    put("garbage", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    put("text", b"this is not an MRC file\n" * 200)

    def with_int(name, offset, value, fmt="<i"):
        b = bytearray(raw)
        b[offset:offset + 4] = struct.pack(fmt, value)
        put(name, bytes(b))

    with_int("mode_99", 12, 99)
    with_int("mode_5", 12, 5)
    with_int("nx_zero", 0, 0)
    with_int("nx_negative", 0, -16)
    with_int("nz_huge", 8, 1_000_000_000)
    with_int("nsymbt_huge", 92, 2_000_000_000)
    b = bytearray(raw)
    b[208:212] = b"XXXX"
    put("no_map_id", bytes(b))
    b = bytearray(raw)
    b[212:216] = b"\x00\x00\x00\x00"
    put("no_machine_stamp", bytes(b))
    data = np.frombuffer(raw[1024:], dtype=np.float32).copy()
    data[5] = np.nan
    put("nan_voxel", raw[:1024] + data.tobytes())
    data[5] = np.inf
    put("inf_voxel", raw[:1024] + data.tobytes())
    for k in range(N_HEADER_FLIPS):
        b = bytearray(raw)
        for pos in rng.integers(0, 224, 3):
            b[pos] = int(rng.integers(0, 256))
        put(f"header_flip_{k}", bytes(b))
    return out


#: the quick suite tries every named corruption and this many of the random header flips
QUICK_HEADER_FLIPS = 6


# corrupted headers are read permissively with a RuntimeWarning (expected here) or refused
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_corrupted_mrc_inputs(good, tmp_path, capsys):
    _corrupted_mrc_inputs(good, tmp_path, capsys, QUICK_HEADER_FLIPS)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_corrupted_mrc_inputs_all_header_flips(good, tmp_path, capsys):
    _corrupted_mrc_inputs(good, tmp_path, capsys, N_HEADER_FLIPS)


def _corrupted_mrc_inputs(good, tmp_path, capsys, n_flips):
    variants = _mrc_variants(good / "map.mrc", tmp_path)
    variants = {k: v for k, v in variants.items()
                if not k.startswith("header_flip_") or int(k.rsplit("_", 1)[1]) < n_flips}
    tried = 0
    for name, p in variants.items():
        rc, out, err = _run(["info", p], capsys)
        _check(rc, err, p, tmp_path)
        rc, out, err = _run(["info", "--json", p], capsys)
        _check(rc, err, p, tmp_path)
        o = tmp_path / f"down_{name}.mrc"
        rc, out, err = _run(["downsample", p, o, "--box", "8"], capsys)
        _check(rc, err, p, tmp_path, [o])
        rc, out, err = _run(["fsc", good / "map.mrc", p], capsys)
        _check(rc, err, p, tmp_path)
        tried += 4
        if name in ("empty", "ten_bytes", "header_only", "garbage", "text", "mode_99", "nx_zero",
                    "nx_negative", "nz_huge", "nsymbt_huge") or name.startswith("truncated"):
            rc, _, err = _run(["info", p], capsys)
            assert rc == 2, f"{name} was accepted"
    assert len(variants) >= 20 + n_flips


def test_fsc_rejects_nan_and_wrong_dimensionality(good, tmp_path, capsys):
    v = _mrc_variants(good / "map.mrc", tmp_path)
    rc, _, err = _run(["fsc", good / "map.mrc", v["nan_voxel"]], capsys)
    assert rc == 2 and "nan_voxel" in err
    img = tmp_path / "image2d.mrc"
    with mrcfile.new(img) as m:
        m.set_data(np.zeros((16, 16), np.float32))
        m.voxel_size = 2.0
    rc, _, err = _run(["fsc", img, good / "map.mrc"], capsys)
    assert rc == 2 and "image2d" in err


# ---------------------------------------------------------------- STAR corruptions

def _star_variants(d: Path):
    """Variants of parts.star written into folder d (which holds parts.mrcs)."""
    text = (d / "parts.star").read_text()
    import starfile

    blocks = starfile.read(d / "parts.star", always_dict=True)
    optics, parts = blocks["optics"], blocks["particles"]
    out = {}

    def put(name, optics_df, parts_df):
        p = d / f"{name}.star"
        starfile.write({"optics": optics_df, "particles": parts_df}, p, overwrite=True)
        out[name] = p

    q = parts.copy()
    q.loc[3, "rlnImageName"] = "99@parts.mrcs"
    put("row_past_stack_end", optics, q)
    q = parts.copy()
    q["rlnOpticsGroup"] = 7
    put("missing_optics_group", optics, q)
    o = optics.copy()
    o["rlnImageSize"] = 32
    put("box_disagrees", o, parts)
    o = optics.drop(columns=[c for c in optics.columns if "PixelSize" in c])
    put("no_pixel_size", o, parts)
    q = parts.copy()
    q["rlnImageName"] = [f"{i + 1}@missing.mrcs" for i in range(len(q))]
    put("stack_missing", optics, q)
    q = parts.copy()
    q["rlnDefocusU"] = q["rlnDefocusU"].astype(object)
    q.loc[2, "rlnDefocusU"] = "abc"
    put("non_numeric_defocus", optics, q)
    q = parts.copy()
    q.loc[1, "rlnDefocusU"] = np.nan
    put("nan_defocus", optics, q)
    q = parts.drop(columns=["rlnImageName"])
    put("no_image_names", optics, q)
    put("no_rows", optics, parts.iloc[:0])
    for name, data in [("empty", ""), ("garbage", "\x00\x01\x02 nonsense {}\n" * 20),
                       ("truncated_header", text[: text.index("loop_", text.index("data_particles")) + 20]),
                       ("truncated_mid_row", text[: len(text) - 37])]:
        p = d / f"{name}.star"
        p.write_text(data)
        out[name] = p
    return out


@pytest.mark.parametrize("cmd", ["info", "reconstruct", "phase-flip"])
def test_corrupted_star_inputs(good, tmp_path, capsys, cmd):
    d = _copy(good, tmp_path)
    variants = _star_variants(d)
    must_fail = {"row_past_stack_end", "missing_optics_group", "box_disagrees", "stack_missing",
                 "non_numeric_defocus", "empty", "garbage", "truncated_mid_row"}
    # no_pixel_size is valid: the MRC header voxel size (2 Å) is the documented fallback
    for name, p in variants.items():
        outs = []
        if cmd == "info":
            args = ["info", "--json", p]
        elif cmd == "reconstruct":
            o = d / f"rec_{name}.mrc"
            outs = [o]
            args = ["reconstruct", p, "-o", o, "--maxiter", "2"]
        else:
            o = d / f"flip_{name}.star"
            outs = [o, o.with_suffix(".mrcs")]
            args = ["phase-flip", p, o]
        rc, out, err = _run(args, capsys)
        _check(rc, err, p, d, outs)
        if cmd != "info" and name in must_fail:
            assert rc == 2, f"{cmd} accepted {name}: {out[-300:]}"


# ---------------------------------------------------------------- cryoSPARC .cs corruptions

def test_corrupted_cs_inputs(data_dir, tmp_path, capsys):
    src = data_dir / "metadata" / "cryosparc_P12_J24_001_particles.cs"
    raw = src.read_bytes()
    rng = np.random.default_rng(3)
    variants = {"empty": b"", "garbage": rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()}
    for k, cut in enumerate(rng.integers(10, len(raw) - 1, 8)):
        variants[f"truncated_{k}"] = raw[:cut]
    arr = np.load(src)
    keep = [n for n in arr.dtype.names if not n.startswith("ctf/")]
    p = tmp_path / "no_ctf.cs"
    with open(p, "wb") as f:
        np.save(f, arr[keep])
    wrong = tmp_path / "not_structured.cs"
    with open(wrong, "wb") as f:
        np.save(f, np.arange(10.0))
    files = [p, wrong]
    for name, b in variants.items():
        q = tmp_path / f"{name}.cs"
        q.write_bytes(b)
        files.append(q)
    for q in files:
        rc, out, err = _run(["info", "--json", q], capsys)
        _check(rc, err, q, tmp_path)
        if q.stem in ("empty", "garbage", "not_structured") or q.stem.startswith("truncated"):
            assert rc == 2, f"{q.name} was accepted"


def test_missing_file(tmp_path, capsys):
    p = tmp_path / "nope.mrc"
    for args in (["info", p], ["fsc", p, p], ["downsample", p, tmp_path / "o.mrc", "--box", "8"]):
        rc, _, err = _run(args, capsys)
        assert rc == 2 and "nope.mrc" in err and "Traceback" not in err


def test_output_table_keeps_rows_and_columns(good, tmp_path, capsys):
    """phase-flip's output STAR keeps every input row and column in order (new columns at the end)."""
    d = _copy(good, tmp_path)
    import starfile

    rc, _, err = _run(["phase-flip", d / "parts.star", d / "flipped.star"], capsys)
    assert rc == 0, err
    a = starfile.read(d / "parts.star", always_dict=True)["particles"]
    b = starfile.read(d / "flipped.star", always_dict=True)["particles"]
    assert list(b.columns[: len(a.columns)]) == list(a.columns)
    cols = [c for c in a.columns if c != "rlnImageName"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True),
                                  check_dtype=False)


def test_interrupt_exits_130_without_output(tmp_path, capsys, monkeypatch):
    """Ctrl-C inside a command: exit code 130, one line, and no output file written."""
    import cryoprism.fourier as fourier

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fourier, "fourier_resize", interrupted)
    import cryoprism.fourier.resample as rs

    monkeypatch.setattr(rs, "fourier_resize", interrupted)
    src = tmp_path / "m.mrc"
    with mrcfile.new(src) as m:
        m.set_data(np.ones((16, 16, 16), np.float32))
        m.voxel_size = 1.0
    out = tmp_path / "o.mrc"
    rc, _, err = _run(["downsample", src, out, "--box", "8"], capsys)
    assert rc == 130 and "interrupted" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".part" in p.name]
