"""The run-time settings object: environment defaults read once, configure(), the finufft thread rule."""

import pytest

from cryoprism.parallel import config as S


@pytest.fixture(autouse=True)
def _fresh():
    S.reset()
    yield
    S.reset()


def test_environment_gives_the_defaults_once(monkeypatch):
    monkeypatch.setenv("CRYOPRISM_WORKERS", "3")
    monkeypatch.setenv("CRYOPRISM_FFT_WORKERS", "2")
    monkeypatch.setenv("CRYOPRISM_SCHEDULER", "tcp://nowhere:1")
    s = S.reset()
    assert (s.workers, s.fft_workers, s.scheduler) == (3, 2, "tcp://nowhere:1")
    monkeypatch.setenv("CRYOPRISM_WORKERS", "5")  # read once: later changes do not apply
    assert S.default_workers() == 3 and S.fft_workers() == 2


def test_configure_changes_only_what_it_names(monkeypatch):
    monkeypatch.delenv("CRYOPRISM_WORKERS", raising=False)
    S.reset()
    S.configure(workers=4, progress=False)
    assert S.default_workers() == 4 and not S.settings().progress
    assert S.settings().fft_workers == -1
    S.configure(workers=None)
    assert S.default_workers() == S.cpu_count()
    with pytest.raises(ValueError):
        S.configure(workers=0)
    with pytest.raises(TypeError):
        S.configure(no_such_setting=1)


def test_finufft_thread_rule():
    S.configure(workers=6)
    assert S.finufft_threads() == 1            # batches run on 6 threads: one thread per call
    assert S.finufft_threads(4) == 1
    assert S.finufft_threads(4, batches=1) == 6  # a single batch: the call gets every worker
    assert S.finufft_threads(1) == 6
    S.configure(workers=1)
    assert S.finufft_threads() == 1


def test_quiet_hides_progress_bars():
    S.configure(progress=False)
    assert S.progress_bar(total=3, progress=True).disable
    S.configure(progress=True)
    assert not S.progress_bar(total=3, progress=True).disable
    assert S.progress_bar(total=3, progress=False).disable
