"""STAR 3.0 / 3.1 / 5 and cryoSPARC .cs: every file in tests/data reads and round-trips; the
per-particle figures agree with numbers read off the files' text."""

from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from scipy.spatial.transform import Rotation

from cryoprism.errors import InputError
from cryoprism.io import (
    StarFile,
    ctf_params,
    origins_A,
    pixel_sizes_A,
    read_cs,
    read_star,
    rotations,
    write_star,
)
from cryoprism.io.cryosparc import cryosparc_pose_to_relion_matrix

DATA = Path(__file__).parents[1] / "data"
STAR_FILES = sorted(DATA.rglob("*.star"))
CS_FILES = sorted(DATA.rglob("*.cs"))
STYLES = {"empiar_10076_7.star": "3.0", "sample_relion_data.star": "3.0", "relion31.star": "3.1",
          "sample_particles_relion31.star": "3.1", "relion31.6opticsgroups.star": "3.1"}
COUNTS = {"empiar_10076_7.star": 7, "sample_relion_data.star": 17, "relion31.star": 5,
          "sample_particles_relion31.star": 17, "relion31.6opticsgroups.star": 139}


def _assert_same(a: StarFile, b: StarFile):
    assert list(a.blocks) == list(b.blocks)
    for k in a.blocks:
        if isinstance(a.blocks[k], pd.DataFrame):
            pdt.assert_frame_equal(a.blocks[k], b.blocks[k])
        else:
            assert a.blocks[k] == b.blocks[k]
    pdt.assert_frame_equal(a.particles, b.particles)
    assert a.style == b.style


def test_all_star_files_are_covered():
    # every STAR/.cs under tests/data is parametrized below; the known ones also get their style checked
    assert set(STYLES) <= {p.name for p in STAR_FILES}
    assert {"empiar_10076_7.cs", "cryosparc_P12_J24_001_particles.cs"} <= {p.name for p in CS_FILES}


@pytest.mark.parametrize("path", STAR_FILES, ids=lambda p: p.name)
def test_star_reads_and_round_trips(path, tmp_path):
    s = read_star(path)
    if path.name in STYLES:
        assert s.style == STYLES[path.name]
        assert s.n == COUNTS[path.name]
    # columns as in the file's header lines, in order
    header = [ln.split()[0][1:] for ln in path.read_text().splitlines() if ln.startswith("_rln")]
    assert list(s.particles.columns) == header[-len(s.particles.columns):]
    out = write_star(tmp_path / "rt.star", s)
    t = read_star(out)
    _assert_same(s, t)
    # and a second generation is byte-identical to the first
    out2 = write_star(tmp_path / "rt2.star", t)
    assert out2.read_text() == out.read_text()


@pytest.mark.parametrize("path", CS_FILES, ids=lambda p: p.name)
def test_cs_reads_and_round_trips_as_star31(path, tmp_path):
    s = read_cs(path)
    raw = np.load(path)
    assert s.n == len(raw) and s.style == "cryosparc"
    np.testing.assert_allclose(s.particles["rlnDefocusU"], raw["ctf/df1_A"], rtol=1e-6)
    t = read_star(write_star(tmp_path / "cs.star", s))
    assert t.style == "3.1"
    pdt.assert_frame_equal(t.particles, s.particles, check_dtype=False)
    pdt.assert_frame_equal(t.optics, s.optics, check_dtype=False)


def test_relion5_extra_blocks_and_columns_round_trip(tmp_path):
    text = """
# version 50001

data_general

_rlnTomoSubTomosAre2DStacks    1
_rlnSomeLabel                  "a b"

# version 50001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
1 opticsGroup1 300.0 2.7 0.1 1.5 64

# version 50001

data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnOpticsGroup #5
_rlnNewRelion5Column #6
_rlnOriginXAngst #7
_rlnOriginYAngst #8
1@stack.mrcs 10000.5 9000.25 12.0 1 0.123456789 1.5 -3.0
2@stack.mrcs 20000 19000 -45 1 7 0 0

# version 50001

data_extra

loop_
_rlnSomething #1
42
"""
    p = tmp_path / "r5.star"
    p.write_text(text)
    s = read_star(p)
    assert s.style == "5" and s.version == 50001
    assert list(s.blocks) == ["general", "optics", "particles", "extra"]
    assert s.particles["rlnNewRelion5Column"].iloc[0] == 0.123456789
    ctf = ctf_params(s)
    np.testing.assert_allclose(ctf.defocus_u_A, [10000.5, 20000])
    np.testing.assert_allclose(ctf.voltage_kV, [300.0, 300.0])
    np.testing.assert_allclose(origins_A(s), [[1.5, -3.0], [0, 0]])
    out = write_star(tmp_path / "out.star", s)
    assert "# version 50001" in out.read_text()
    _assert_same(s, read_star(out))


# --------------------------------------------------------------------------- per-particle figures
def test_relion30_pixel_size_ctf_and_pixel_origins():
    s = read_star(DATA / "particles/aspire_sample/sample_relion_data.star")
    ps = 5.0 * 1e4 / 37369.207031  # rlnDetectorPixelSize × 10⁴ / rlnMagnification from the file text
    np.testing.assert_allclose(pixel_sizes_A(s), ps)
    o = origins_A(s)
    np.testing.assert_allclose(o[0], [0.1996 * ps, 0.1996 * ps])  # row 1: rlnOriginX/Y in pixels
    np.testing.assert_allclose(o[3], [-0.0504 * ps, -0.3004 * ps])
    ctf = ctf_params(s)
    assert ctf.defocus_u_A[0] == pytest.approx(21186.804688)
    assert ctf.defocus_v_A[0] == pytest.approx(21363.109375)
    assert ctf.defocus_angle_deg[0] == pytest.approx(7.476096)
    assert ctf.voltage_kV[0] == 300 and ctf.cs_mm[0] == 2.7 and ctf.amplitude_contrast[0] == 0.1
    assert s.optics is not None and len(s.optics) == 1  # derived from the repeated optics columns


def test_relion31_ctf_from_optics_group_and_rotations():
    s = read_star(DATA / "particles/relion31/relion31.star")
    ctf = ctf_params(s)
    assert ctf.defocus_u_A[0] == pytest.approx(13108.082418)
    assert ctf.defocus_angle_deg[0] == pytest.approx(-160.39)
    assert ctf.cs_mm[1] == pytest.approx(0.01)  # from data_optics
    assert ctf.scale[0] == 1.0 and ctf.bfactor_A2[0] == 0.0
    np.testing.assert_allclose(pixel_sizes_A(s), 2.806)
    np.testing.assert_allclose(origins_A(s)[1], [-0.25248, 0.403454])
    A = rotations(s)
    # independent: RELION's A = (Rz(rot) Ry(tilt) Rz(psi))ᵀ with active rotations (scipy)
    ref = Rotation.from_euler("ZYZ", [-102.30296, 82.318041, 124.706463], degrees=True).as_matrix().T
    np.testing.assert_allclose(A[0], ref, atol=1e-12)


def test_six_optics_groups_assign_per_particle_values():
    s = read_star(DATA / "metadata/relion31.6opticsgroups.star")
    ps = pixel_sizes_A(s)
    group = s.particles["rlnOpticsGroup"].to_numpy()
    table = dict(zip(s.optics["rlnOpticsGroup"], s.optics["rlnImagePixelSize"]))
    np.testing.assert_allclose(ps, [table[g] for g in group])
    assert set(np.unique(ps)) == {1.24, 1.25}
    cs = ctf_params(s).cs_mm
    assert set(np.unique(cs[group == 4])) == {2.6}  # optics group 4 has Cs 2.6 in the file


def test_star_and_cs_of_the_same_particles_give_the_same_ctf():
    a = ctf_params(read_star(DATA / "particles/empiar10076_7/empiar_10076_7.star"))
    b = ctf_params(read_cs(DATA / "particles/empiar10076_7/empiar_10076_7.cs"))
    for f in ("defocus_u_A", "defocus_v_A", "voltage_kV", "cs_mm", "amplitude_contrast", "phase_shift_deg",
              "bfactor_A2", "scale"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-6, err_msg=f)
    np.testing.assert_allclose(a.defocus_angle_deg, b.defocus_angle_deg, atol=1e-5)
    ps_star = pixel_sizes_A(read_star(DATA / "particles/empiar10076_7/empiar_10076_7.star"))
    ps_cs = pixel_sizes_A(read_cs(DATA / "particles/empiar10076_7/empiar_10076_7.cs"))
    np.testing.assert_allclose(ps_star, ps_cs, rtol=1e-6)


def test_cryosparc_pose_and_shift_mapping():
    path = DATA / "metadata/cryosparc_P12_J24_001_particles.cs"
    raw = np.load(path)
    s = read_cs(path)
    assert s.n == 2019
    # A is the transpose of the active rotation of cryoSPARC's rotation vector (scipy as reference)
    R = Rotation.from_rotvec(raw["alignments3D/pose"].astype(np.float64)).as_matrix()
    np.testing.assert_allclose(rotations(s), np.transpose(R, (0, 2, 1)), atol=1e-6)
    np.testing.assert_allclose(origins_A(s), raw["alignments3D/shift"] * 2.95, rtol=1e-6)
    assert s.particles["rlnClassNumber"].min() == 1
    np.testing.assert_allclose(s.particles["rlnDefocusAngle"], np.rad2deg(raw["ctf/df_angle_rad"]),
                               rtol=1e-6)


def test_cryosparc_inplane_rotation_is_psi():
    # a rotation vector along z by θ: R = Rz(θ); A = Rz(θ)ᵀ = RELION's matrix for (0, 0, psi = θ)
    A = cryosparc_pose_to_relion_matrix(np.array([[0.0, 0.0, 0.5]]))[0]
    ref = Rotation.from_euler("ZYZ", [0, 0, np.rad2deg(0.5)], degrees=True).as_matrix().T
    np.testing.assert_allclose(A, ref, atol=1e-12)


# ------------------------------------------------------------------------------------ bad input
def test_missing_optics_group(tmp_path):
    text = (DATA / "particles/relion31/relion31.star").read_text()
    lines = text.splitlines()
    # change the optics group of the 3rd particle (column 23) to 7
    rows = [i for i, ln in enumerate(lines) if "@relion31.mrcs" in ln]
    f = lines[rows[2]].split()
    f[22] = "7"
    lines[rows[2]] = " ".join(f)
    p = tmp_path / "bad.star"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="row 3 refers to optics group 7") as e:
        read_star(p)
    assert "bad.star" in str(e.value)


def test_missing_star_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_star(tmp_path / "none.star")
    with pytest.raises(InputError, match="not found"):
        read_cs(tmp_path / "none.cs")


def test_not_a_star_file(tmp_path):
    p = tmp_path / "x.star"
    p.write_text("hello\n")
    with pytest.raises(InputError):
        read_star(p)
