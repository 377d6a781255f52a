"""Extraction: boxes equal the simulated particle images; STAR + stack read back everywhere."""

import numpy as np
import pandas as pd
import pytest

from cryoprism.io import write_mrc
from cryoprism.io.job import Job
from cryoprism.preprocess.extract import cut_boxes, extract_particles, process_boxes

from .pick_data import PX


def test_box_centre_sits_on_the_rounded_coordinate():
    m = np.zeros((50, 60), np.float32)
    m[20, 30] = 1.0  # row 20, column 30
    b = cut_boxes(m, [30.4, 2.0], [19.6, 25.0], 10)  # the second box would leave the micrograph
    assert list(b.rows) == [0]
    assert b.images[0][5, 5] == 1.0 and b.images[0].sum() == 1.0
    np.testing.assert_allclose(b.origins_px[0], [-0.4, 0.4], atol=1e-12)  # particle at L//2 − origin


def test_normalisation_as_relion():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (4, 32, 32)).astype(np.float32)
    y, px = process_boxes(x, invert=True, pixel_size_A=1.5)
    yy, xx = np.mgrid[:32, :32] - 16
    bg = np.hypot(yy, xx) > 0.75 * 16
    np.testing.assert_allclose(y[:, bg].mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(y[:, bg].std(1), 1, atol=1e-5)
    assert px == 1.5
    assert np.corrcoef(y[0].ravel(), -x[0].ravel())[0, 1] > 0.999  # inverted


def test_extracted_particle_equals_the_simulated_image(volume):
    """One noiseless particle, CTF over the whole field: the box equals the projection with the CTF
    applied about the box centre (independent computation), centred within 0.5 px."""
    from cryoprism.ctf.model import ctf_2d
    from cryoprism.forward.micrographs import simulate_micrographs
    from cryoprism.forward.projection import project
    from cryoprism.fourier.core import fft2c, ifft2c
    from cryoprism.geometry import euler_to_matrix
    from cryoprism.image.align import align_translation

    M, L = 256, 64
    res = simulate_micrographs(volume, 1, M, 1, PX, snr=None, rng=4, progress=False, n_workers=1)
    row = res.coordinates.iloc[0]
    A = euler_to_matrix(row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi)
    proj = project(volume, A[None])[0].astype(np.float64)
    big = np.zeros((M, M))
    big[M // 2 - L // 2:M // 2 + L // 2, M // 2 - L // 2:M // 2 + L // 2] = proj
    expected = ifft2c(fft2c(big) * ctf_2d(M, PX, res.ctf.take(0), np.float64)).real
    expected = expected[M // 2 - L // 2:M // 2 + L // 2, M // 2 - L // 2:M // 2 + L // 2]
    box = cut_boxes(res.micrographs[0], [row.rlnCoordinateX], [row.rlnCoordinateY], L).images[0]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(box, expected, atol=2e-3 * scale)
    shift = align_translation(box[None], expected).shifts_px[0]
    assert np.all(np.abs(shift) < 0.5)


@pytest.fixture
def written(tmp_path, sim):
    paths = []
    for i in range(2):
        p = tmp_path / f"mic{i}.mrc"
        write_mrc(p, sim.micrographs[i], PX)
        paths.append(p)
    t = sim.coordinates
    coords = pd.DataFrame({"rlnMicrographName": [str(paths[int(n[-8:-4]) - 1]) for n in t.rlnMicrographName],
                           "rlnCoordinateX": t.rlnCoordinateX, "rlnCoordinateY": t.rlnCoordinateY,
                           "rlnAutopickFigureOfMerit": np.arange(len(t), dtype=float)})
    ctf = pd.DataFrame({"rlnMicrographName": [str(p) for p in paths],
                        "rlnDefocusU": sim.ctf.defocus_u_A, "rlnDefocusV": sim.ctf.defocus_v_A,
                        "rlnDefocusAngle": sim.ctf.defocus_angle_deg, "rlnVoltage": 300.0,
                        "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
                        "rlnMicrographPixelSize": PX})
    job = Job(tmp_path / "out", "extract", log_to_file=False)
    figs = extract_particles(paths, coords, 64, job, ctf_table=ctf, bin_box=32, progress=False)
    return figs, coords, sim, tmp_path / "out"


def test_star_and_stack_read_back(written):
    import starfile

    from cryoprism.io import read_particles

    figs, coords, sim, out = written
    assert figs["particles"] == len(coords) and figs["skipped_at_edge"] == 0  # simulated boxes fit
    ps = read_particles(out / "particles.star")
    assert ps.n == len(coords) and ps.box == 32
    assert ps.pixel_size_A == pytest.approx(PX * 2)
    imgs = ps.images(np.arange(3))
    assert imgs.shape == (3, 32, 32) and np.all(np.isfinite(imgs))
    c = ps.ctf_params()
    np.testing.assert_allclose(np.unique(c.defocus_u_A), np.sort(sim.ctf.defocus_u_A))
    star = starfile.read(out / "particles.star")
    for col in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnDefocusU",
                "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup", "rlnAutopickFigureOfMerit"):
        assert col in star["particles"].columns
    for col in ("rlnImagePixelSize", "rlnImageSize", "rlnVoltage", "rlnSphericalAberration",
                "rlnAmplitudeContrast"):
        assert col in star["optics"].columns
    np.testing.assert_allclose(star["particles"].rlnCoordinateX, coords.rlnCoordinateX)  # order kept
    assert list(star["particles"].rlnMicrographName) == list(coords.rlnMicrographName)


def test_cli_coordinate_outside_is_one_line_exit_2(tmp_path, sim, capsys):
    from cryoprism.cli.main import main
    from cryoprism.io import write_star

    p = tmp_path / "m.mrc"
    write_mrc(p, sim.micrographs[0], PX)
    write_star(tmp_path / "c.star", pd.DataFrame({"rlnMicrographName": [str(p)] * 2,
                                                  "rlnCoordinateX": [100.0, 900.0],
                                                  "rlnCoordinateY": [100.0, 50.0]}))
    rc = main(["extract", str(p), "--coords", str(tmp_path / "c.star"), "--box", "64", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "outside" in err[0]
    assert not (tmp_path / "o").exists()  # checked before the output folder is created


def test_relion_reads_the_particles(written, tmp_path):
    import shutil
    import subprocess

    exe = shutil.which("relion_stack_create")
    if exe is None:
        pytest.skip("RELION is not installed")
    figs, coords, sim, out = written
    r = subprocess.run([exe, "--i", "particles.star", "--o", str(tmp_path / "relion")], cwd=out,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    from cryoprism.io import read_mrc

    stack, _ = read_mrc(tmp_path / "relion.mrcs")
    assert stack.shape == (len(coords), 32, 32)
