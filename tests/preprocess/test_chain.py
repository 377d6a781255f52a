"""The pick CLI and the preprocess chain on small simulated micrographs."""

import json

import numpy as np
import pytest

from cryoprism.io import write_mrc

from . import pick_data
from .pick_data import PX


@pytest.fixture
def sim():
    return pick_data.simulated()


@pytest.fixture
def mic_files(tmp_path, sim):
    paths = []
    for i in range(2):
        p = tmp_path / f"mic{i}.mrc"
        write_mrc(p, -sim.micrographs[i], PX)  # dark particles, as recorded
        paths.append(p)
    return paths


def test_pick_cli_writes_coordinates_and_pngs(tmp_path, mic_files, capsys):
    import starfile

    from cryoprism.cli.main import main

    out = tmp_path / "pk"
    rc = main(["pick", *map(str, mic_files), "-o", str(out), "--diameter", "100", "--no-ctf", "--json"])
    assert rc == 0
    fig = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    t = starfile.read(out / "coordinates.star")
    assert list(t.columns) == ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
    assert len(t) == fig["picks"] > 20
    assert fig["polarity"] == [-1, -1]
    for p in mic_files:
        assert (out / "picks" / f"{p.stem}.png").stat().st_size > 1000


@pytest.mark.slow
def test_preprocess_chain_and_resume(tmp_path, mic_files, capsys):
    from cryoprism.cli.main import main
    from cryoprism.io import read_particles

    out = tmp_path / "pp"
    args = ["preprocess", *map(str, mic_files), "-o", str(out), "--diameter", "100", "--box", "64", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for f in ("micrographs_ctf.star", "coordinates.star", "particles.star", "particles.mrcs"):
        assert (out / f).exists()
    assert len(list((out / "checkpoints").glob("*.ckpt.npz"))) == 2
    ps = read_particles(out / "particles.star")
    assert ps.n == first["particles"] > 20 and ps.box == 64
    assert first["inverted"] is True
    img = ps.images(np.arange(min(ps.n, 20))).mean(0)
    yy, xx = np.mgrid[:64, :64] - 32
    assert img[np.hypot(yy, xx) < 10].mean() > 0  # inverted: particles bright, as RELION expects
    assert main(args + ["--resume"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["resumed"] == 2 and second["particles"] == first["particles"]


def _one_line_exit_2(capsys, args, out):
    from cryoprism.cli.main import main

    rc = main([str(a) for a in args])
    err = [s for s in capsys.readouterr().err.splitlines() if s.strip() and "%|" not in s]  # not tqdm's
    assert rc == 2 and len(err) == 1 and err[0].startswith("cryoprism: error:"), err
    assert not out.exists()  # nothing written: the inputs are checked before OUT is created
    return err[0]


def test_preprocess_bad_movies_are_one_line_and_write_nothing(tmp_path, capsys):
    import tifffile

    with tifffile.TiffWriter(tmp_path / "bad.tif") as w:
        w.write(np.zeros((40, 50), np.uint8))
        w.write(np.zeros((40, 48), np.uint8))
    out = tmp_path / "o"
    err = _one_line_exit_2(capsys, ["preprocess", tmp_path / "bad.tif", "-o", out, "--diameter", 20,
                                    "--pixel-size", 1], out)
    assert "disagree in size" in err
    frames = np.random.default_rng(0).poisson(5.0, (3, 64, 64)).astype(np.float32)
    write_mrc(tmp_path / "movie.mrcs", frames, 1.0, is_stack=True)
    write_mrc(tmp_path / "gain.mrc", np.ones((64, 66), np.float32), 1.0)
    err = _one_line_exit_2(capsys, ["preprocess", tmp_path / "movie.mrcs", "-o", out, "--diameter", 20,
                                    "--gain", tmp_path / "gain.mrc"], out)
    assert "gain reference is 66x64" in err
    (tmp_path / "x.eer").write_bytes(b"\0" * 16)
    err = _one_line_exit_2(capsys, ["preprocess", tmp_path / "x.eer", "-o", out, "--diameter", 20,
                                    "--pixel-size", 1], out)
    assert "EER" in err


def test_pick_and_extract_refuse_a_movie_before_writing(tmp_path, capsys):
    write_mrc(tmp_path / "movie.mrcs", np.zeros((3, 64, 64), np.float32), 1.0, is_stack=True)
    out = tmp_path / "o"
    err = _one_line_exit_2(capsys, ["pick", tmp_path / "movie.mrcs", "-o", out, "--diameter", 20], out)
    assert "3 sections" in err
    (tmp_path / "c.star").write_text("data_\nloop_\n_rlnMicrographName\n_rlnCoordinateX\n_rlnCoordinateY\n"
                                     f"{tmp_path / 'movie.mrcs'} 10 10\n")
    err = _one_line_exit_2(capsys, ["extract", tmp_path / "movie.mrcs", "--coords", tmp_path / "c.star", "--box",
                                    16, "-o", out], out)
    assert "3 sections" in err


def test_preprocess_aligns_a_movie_then_picks(tmp_path, sim, capsys):
    """A movie (6 frames of one simulated micrograph, shifted by whole pixels, each with its own noise)
    goes through motion correction, CTF, picking and extraction."""
    from cryoprism.cli.main import main
    from cryoprism.io import read_mrc, read_particles

    rng = np.random.default_rng(2)
    clean = -sim.micrographs[0][:512, :512].astype(np.float64)
    shifts = np.cumsum(rng.integers(-2, 3, (6, 2)), axis=0)
    frames = np.stack([np.roll(clean, tuple(s), axis=(0, 1)) / 6 + rng.normal(0, 0.2 * clean.std(), clean.shape)
                       for s in shifts]).astype(np.float32)
    write_mrc(tmp_path / "mov.mrcs", frames, PX, is_stack=True)
    out = tmp_path / "pp"
    assert main(["preprocess", str(tmp_path / "mov.mrcs"), "-o", str(out), "--diameter", "100", "--box", "64",
                 "--json"]) == 0
    fig = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    mic, px = read_mrc(out / "micrographs" / "mov.mrc")
    assert mic.shape == (512, 512) and px == pytest.approx(PX)
    assert fig["picks"] >= 5 and read_particles(out / "particles.star").n == fig["particles"] > 0


@pytest.mark.slow
def test_real_micrograph_ctf_pick_extract_cli(tmp_path, data_dir, capsys):
    """A real micrograph (2048² crop at 0.8538 Å/px) through the three commands, each reading the last
    one's output, without error."""
    import starfile

    from cryoprism.cli.main import main

    mic = data_dir / "micrographs" / "fei_crop2048.mrc"

    def run(*args):
        assert main([str(a) for a in args] + ["--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    ctf = run("ctf-estimate", mic, "-o", tmp_path / "ctf")
    assert 9000 < ctf["defocus_mean_A"] < 12000  # nominal 0.9 µm, fitted ≈ 1.05 µm on the whole micrograph
    star = tmp_path / "ctf" / "micrographs_ctf.star"
    picks = run("pick", mic, "-o", tmp_path / "pick", "--diameter", 120, "--ctf", star)
    assert picks["picks"] >= 10 and picks["polarity"] == [-1]
    assert (tmp_path / "pick" / "picks" / "fei_crop2048.png").stat().st_size > 1000
    ex = run("extract", mic, "--coords", tmp_path / "pick" / "coordinates.star", "--box", 200, "--bin-box", 100,
             "--ctf", star, "-o", tmp_path / "ex")
    assert ex["particles"] + ex["skipped_at_edge"] == picks["picks"] and ex["box"] == 100
    t = starfile.read(tmp_path / "ex" / "particles.star", always_dict=True)["particles"]
    assert {"rlnDefocusU", "rlnCoordinateX", "rlnImageName", "rlnMicrographName"} <= set(t.columns)
