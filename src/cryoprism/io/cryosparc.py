"""cryoSPARC ``.cs`` particle files (numpy structured arrays) mapped to RELION columns.

Mapping (docs/io.md has the reasoning):

==========================  ==========================================================
``blob/path``, ``blob/idx``  ``rlnImageName = f"{idx + 1}@{path}"`` (``idx`` is 0-based; a leading
                             ``>`` that cryoSPARC puts on imported paths is dropped)
``blob/psize_A``             ``rlnImagePixelSize`` (optics table)
``blob/shape``               ``rlnImageSize`` (optics table)
``ctf/df1_A``, ``df2_A``     ``rlnDefocusU``, ``rlnDefocusV`` (Å)
``ctf/df_angle_rad``         ``rlnDefocusAngle`` (degrees)
``ctf/phase_shift_rad``      ``rlnPhaseShift`` (degrees)
``ctf/accel_kv``, ``cs_mm``  ``rlnVoltage``, ``rlnSphericalAberration`` (optics table)
``ctf/amp_contrast``         ``rlnAmplitudeContrast`` (optics table)
``ctf/bfactor``, ``scale``   ``rlnCtfBfactor``, ``rlnCtfScalefactor``
``ctf/exp_group_id``         part of the optics-group key
``alignments3D/pose``        rotation vector ``r``: ``R = exp([r]×)`` (Rodrigues); RELION's matrix is
                             ``A = Rᵀ``; ``rlnAngleRot/Tilt/Psi = matrix_to_euler(A)``
``alignments3D/shift``       ``rlnOriginX/YAngst = shift × alignments3D/psize_A`` (same sign)
``alignments3D/class``       ``rlnClassNumber = class + 1``
``alignments3D/split``       ``rlnRandomSubset = split + 1``
==========================  ==========================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryoprism.errors import InputError
from cryoprism.io.euler import matrix_to_euler
from cryoprism.io.star import StarFile

_OPTICS_KEY = ("ctf/exp_group_id", "blob/psize_A", "blob/shape", "ctf/accel_kv", "ctf/cs_mm",
               "ctf/amp_contrast")


def rotvec_to_matrix(rotvec) -> np.ndarray:
    """Rodrigues formula: ``(n, 3)`` rotation vectors (axis × angle, radians) → ``(n, 3, 3)`` active
    rotations ``R = I + sinθ [k]× + (1 − cosθ) [k]×²`` (same as scipy's ``Rotation.from_rotvec``)."""
    r = np.asarray(rotvec, dtype=np.float64).reshape(-1, 3)
    theta = np.linalg.norm(r, axis=1)
    safe = np.where(theta > 0, theta, 1.0)
    k = r / safe[:, None]
    K = np.zeros((len(r), 3, 3))
    K[:, 0, 1], K[:, 0, 2] = -k[:, 2], k[:, 1]
    K[:, 1, 0], K[:, 1, 2] = k[:, 2], -k[:, 0]
    K[:, 2, 0], K[:, 2, 1] = -k[:, 1], k[:, 0]
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3)[None] + s * K + (1 - c) * (K @ K)


def cryosparc_pose_to_relion_matrix(pose) -> np.ndarray:
    """RELION's ``A`` (volume → particle frame) from cryoSPARC ``alignments3D/pose``: ``A = exp([r]×)ᵀ``."""
    return np.transpose(rotvec_to_matrix(pose), (0, 2, 1))


def _f64(a) -> np.ndarray:
    """float32 fields as the float64 with the same shortest decimal form (1.31 stays 1.31, not
    1.3099999…), so STAR files written from them read cleanly."""
    a = np.asarray(a)
    if a.dtype == np.float32:
        return a.astype(str).astype(np.float64)
    return a.astype(np.float64)


def _decode(col) -> list[str]:
    out = []
    for x in np.asarray(col).tolist():
        s = x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
        out.append(s[1:] if s.startswith(">") else s)
    return out


def read_cs(path) -> StarFile:
    """Read a cryoSPARC particle ``.cs`` file into a :class:`StarFile` with RELION columns
    (style ``"cryosparc"``; it is written back as RELION 3.1)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found (expected a cryoSPARC .cs file)", path)
    try:
        cs = np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"not a readable cryoSPARC .cs file ({type(e).__name__}: {e})", path) from None
    if not isinstance(cs, np.ndarray) or cs.dtype.names is None:
        raise InputError("expected a numpy structured array (cryoSPARC .cs)", path)
    names = set(cs.dtype.names)
    n = len(cs)
    p: dict[str, object] = {}
    if "blob/path" in names:
        paths = _decode(cs["blob/path"])
        idx = cs["blob/idx"].astype(np.int64) if "blob/idx" in names else np.zeros(n, np.int64)
        p["rlnImageName"] = [f"{i + 1:06d}@{q}" for i, q in zip(idx.tolist(), paths)]
    if "location/micrograph_path" in names:
        p["rlnMicrographName"] = _decode(cs["location/micrograph_path"])
    for src, dst, conv in (("ctf/df1_A", "rlnDefocusU", None), ("ctf/df2_A", "rlnDefocusV", None),
                           ("ctf/df_angle_rad", "rlnDefocusAngle", np.rad2deg),
                           ("ctf/phase_shift_rad", "rlnPhaseShift", np.rad2deg),
                           ("ctf/bfactor", "rlnCtfBfactor", None), ("ctf/scale", "rlnCtfScalefactor", None)):
        if src in names:
            v = _f64(cs[src])
            p[dst] = conv(v) if conv is not None else v
    if "alignments3D/pose" in names:
        A = cryosparc_pose_to_relion_matrix(cs["alignments3D/pose"])
        rot, tilt, psi = matrix_to_euler(A)
        p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"] = rot, tilt, psi
    if "alignments3D/shift" in names:
        if "alignments3D/psize_A" in names:
            ps = _f64(cs["alignments3D/psize_A"])
        elif "blob/psize_A" in names:
            ps = _f64(cs["blob/psize_A"])
        else:
            raise InputError("alignments3D/shift is given in pixels but no psize_A field says their size",
                             path)
        sh = _f64(cs["alignments3D/shift"])
        p["rlnOriginXAngst"] = sh[:, 0] * ps
        p["rlnOriginYAngst"] = sh[:, 1] * ps
    if "alignments3D/class" in names:
        p["rlnClassNumber"] = cs["alignments3D/class"].astype(np.int64) + 1
    if "alignments3D/split" in names:
        p["rlnRandomSubset"] = cs["alignments3D/split"].astype(np.int64) + 1

    # optics groups: distinct (exp group, pixel size, box, voltage, Cs, Q)
    key_cols = [k for k in _OPTICS_KEY if k in names]
    if key_cols:
        key = pd.DataFrame({k: _f64(cs[k][:, 0] if cs[k].ndim == 2 else cs[k]) for k in key_cols})
        uniq = key.drop_duplicates().reset_index(drop=True)
        uniq["rlnOpticsGroup"] = np.arange(1, len(uniq) + 1)
        group = key.merge(uniq, on=key_cols, how="left", sort=False)["rlnOpticsGroup"].to_numpy()
        optics = pd.DataFrame({"rlnOpticsGroup": uniq["rlnOpticsGroup"].to_numpy(),
                               "rlnOpticsGroupName": [f"opticsGroup{i}" for i in uniq["rlnOpticsGroup"]]})
        for src, dst in (("ctf/amp_contrast", "rlnAmplitudeContrast"),
                         ("ctf/cs_mm", "rlnSphericalAberration"),
                         ("ctf/accel_kv", "rlnVoltage"), ("blob/psize_A", "rlnImagePixelSize"),
                         ("blob/shape", "rlnImageSize")):
            if src in uniq.columns:
                optics[dst] = uniq[src].to_numpy()
        if "rlnImageSize" in optics.columns:
            optics["rlnImageSize"] = optics["rlnImageSize"].astype(np.int64)
            optics["rlnImageDimensionality"] = 2
        p["rlnOpticsGroup"] = group.astype(np.int64)
        for c in optics.columns:
            if optics[c].dtype.kind == "f":
                optics[c] = optics[c].astype(np.float64)
    else:
        optics = None
    particles = pd.DataFrame(p, index=pd.RangeIndex(n))
    blocks = {"optics": optics, "particles": particles} if optics is not None else {"particles": particles}
    return StarFile(particles=particles, optics=optics, blocks=blocks, style="cryosparc",
                    particles_block="particles", optics_block="optics" if optics is not None else None,
                    path=path, version=30001)
