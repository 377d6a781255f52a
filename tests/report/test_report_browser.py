"""The HTML report opens in headless Chromium: the page loads, every figure renders, no console errors."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from cryoprism.report import Report, fsc_figure, gallery_figure, histogram_figure, volume_slices_figure

# installing Chromium on a fresh machine takes about a minute: with the scientific validations
pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


def _find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.fixture(scope="session")
def chromium():
    exe = _find_chromium()
    if exe is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, timeout=600,
                           capture_output=True)
        except (subprocess.TimeoutExpired, OSError):
            pass
        exe = _find_chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed and could not be installed (apt-get chromium)")
    return exe


def _open(chromium, page, tmp_path):
    r = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                        "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body([^>]*)>", r.stdout)
    assert body, f"the page did not load: {r.stderr[-500:]}"
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
    return attrs, console


def _report(out):
    rng = np.random.default_rng(0)
    rep = Report(out, title="test report")
    rep.section("Resolution", "FSC of two half maps")
    f = np.linspace(0, 0.25, 30)
    rep.figure(fsc_figure({"half maps": (f, np.exp(-(f / 0.1) ** 2))}), "fsc", "FSC")
    rep.table({"resolution (Å)": 7.3, "particles": 1000})
    rep.figure(histogram_figure(rng.integers(1, 3, 100)), "classes", "classes")
    rep.figure(gallery_figure(rng.standard_normal((6, 16, 16))), "gallery", "class averages")
    rep.figure(volume_slices_figure({"mean": rng.standard_normal((12, 12, 12))}), "slices", "slices")
    return rep.write()


def test_report_renders_in_chromium(chromium, tmp_path):
    page = _report(tmp_path / "report")
    attrs, console = _open(chromium, page, tmp_path)
    assert attrs.get("data-images") == "4"
    assert attrs.get("data-images-broken") == "0"
    assert console == []


def test_broken_report_is_detected(chromium, tmp_path):
    page = _report(tmp_path / "report")
    (tmp_path / "report" / "gallery.png").unlink()
    page.write_text(page.read_text().replace("</body>", "<script>notDefined();</script></body>"))
    attrs, console = _open(chromium, page, tmp_path)
    assert attrs.get("data-images-broken") == "1"
    assert any("notDefined" in ln for ln in console)
