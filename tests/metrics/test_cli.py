"""``cryoprism fsc`` and ``cryoprism align-volumes`` end to end (through the real entry point)."""

import json
import warnings

import mrcfile
import numpy as np
import pytest

from cryoprism.cli.main import main
from cryoprism.fourier import downsample
from cryoprism.geometry import angular_distance_deg, euler_to_matrix

HB = "tests/data/maps/emd_3488_hemoglobin.mrc"
S50 = "tests/data/maps/50S_states/vol_018.mrc"


def _write(path, data, voxel):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        m.voxel_size = voxel
    return str(path)


def _lowpass(v, cut):
    L = v.shape[0]
    k = np.meshgrid(*[np.arange(L) - L // 2] * 3, indexing="ij")
    keep = np.sqrt(sum(g.astype(float) ** 2 for g in k)) <= cut
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v)))
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(F * keep))).real


def test_fsc_cli_json_and_plot(tmp_path, capsys):
    with mrcfile.open(HB, permissive=True) as m:
        v = m.data.astype(np.float64)
        px = float(m.voxel_size.x)
    b = _write(tmp_path / "lp.mrc", _lowpass(v, 20.5), px)
    png = tmp_path / "fsc.png"
    assert main(["fsc", HB, b, "--json", "--plot", str(png)]) == 0
    d = json.loads(capsys.readouterr().out)
    s_cut = 20.5 / (100 * px)
    assert abs(1 / d["resolution_0.143_A"] - s_cut) <= 1 / (100 * px)
    assert len(d["fsc"]) == len(d["freq_invA"]) == 51
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    # human output names both thresholds in Å
    assert main(["fsc", HB, b]) == 0
    out = capsys.readouterr().out
    assert "0.143" in out and "0.5" in out and "Å" in out


def test_fsc_cli_mask(tmp_path, capsys):
    with mrcfile.open(HB, permissive=True) as m:
        v = m.data.astype(np.float64)
    rng = np.random.default_rng(0)
    a = _write(tmp_path / "a.mrc", v + 0.05 * rng.standard_normal(v.shape), 1.05)
    b = _write(tmp_path / "b.mrc", v + 0.05 * rng.standard_normal(v.shape), 1.05)
    k = np.meshgrid(*[np.arange(100) - 50] * 3, indexing="ij")
    mk = _write(tmp_path / "m.mrc", (np.sqrt(sum(g ** 2.0 for g in k)) < 30).astype(np.float32), 1.05)
    assert main(["fsc", a, b, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["fsc", a, b, "--mask", mk, "--json"]) == 0
    masked = json.loads(capsys.readouterr().out)
    # masking away solvent noise raises the FSC (and so the resolution number drops)
    assert masked["resolution_0.143_A"] < plain["resolution_0.143_A"]


def test_fsc_cli_bad_input(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["fsc", HB, S50]) == 2  # different boxes
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs" in err
    assert main(["fsc", HB, str(tmp_path / "missing.mrc")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    z = _write(tmp_path / "z.mrc", np.zeros((8, 8, 8)), 0.0)
    assert main(["fsc", z, z]) == 2  # unknown voxel size
    assert "--pixel-size" in capsys.readouterr().err
    assert main(["fsc", z, z, "--pixel-size", "2"]) == 0


def test_align_volumes_cli(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(S50, permissive=True) as m:
            v = downsample(m.data.astype(np.float64), 24, ndim=3)[0]
    Q = euler_to_matrix(30.0, 60.0, -45.0)
    # rotate with scipy: out(p) = v(Qᵀ p)
    from scipy import ndimage

    P = np.eye(3)[::-1]
    c = np.full(3, 12.0)
    mat = P @ Q.T @ P
    tgt = ndimage.affine_transform(v, mat, offset=c - mat @ c, order=3)
    ref = _write(tmp_path / "ref.mrc", tgt, 6.55 * 64 / 24)
    mov = _write(tmp_path / "mov.mrc", v, 6.55 * 64 / 24)
    out = tmp_path / "aligned.mrc"
    assert main(["align-volumes", ref, mov, "--out", str(out), "--json", "--n-coarse", "1500"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["flipped"] is False
    assert angular_distance_deg(np.array(d["rotation"]), Q) < 4.0
    with mrcfile.open(out) as m:
        assert np.corrcoef(m.data.ravel(), tgt.ravel())[0, 1] > 0.97


@pytest.mark.parametrize("cmd", ["fsc", "align-volumes"])
def test_help_mentions_units(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    assert "Å" in capsys.readouterr().out
