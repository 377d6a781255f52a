"""io.job.Job: one output folder, atomic writers, the one checkpoint format, the log and the summary."""

import json
import logging

import numpy as np
import pytest

from cryoprism.errors import InputError
from cryoprism.io import read_mrc
from cryoprism.io.job import Job


def test_writers_summary_and_log(tmp_path):
    out = tmp_path / "out"
    with Job(out, "demo-cmd", {"a": 1, "x": np.float32(0.5)}) as job:
        p = job.write_mrc("sub/v.mrc", np.ones((4, 4, 4), np.float32), 2.0)
        job.write_csv("t.csv", {"i": [1, 2], "v": [0.5, 1.5]})
        job.write_stack("s.mrcs", (np.full((2, 3, 3), k, np.float32) for k in range(3)), 6, 3, 1.5)
        job.log.info("hello %d", 7)
        job.record(volume=p, values=[np.int64(3), float("inf")])
        summary = job.finish()
    assert read_mrc(out / "sub" / "v.mrc")[1] == pytest.approx(2.0)
    s, px = read_mrc(out / "s.mrcs")
    assert s.shape == (6, 3, 3) and np.array_equal(s[:, 0, 0], [0, 0, 1, 1, 2, 2]) and px == pytest.approx(1.5)
    assert (out / "t.csv").read_text().splitlines() == ["i,v", "1,0.5", "2,1.5"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["command"] == "demo-cmd" and on_disk["settings"] == {"a": 1, "x": 0.5}
    assert on_disk["volume"] == str(out / "sub" / "v.mrc") and on_disk["values"] == [3, None]
    assert summary["time_s"] >= 0
    assert "hello 7" in (out / "job.log").read_text()
    assert not [f for f in out.rglob("*") if ".part" in f.name]
    assert not logging.getLogger("cryoprism.demo-cmd").handlers  # the log file is detached


def test_checkpoints_are_fingerprinted_with_settings_and_inputs(tmp_path):
    job = Job(tmp_path, "c", {"k": 1, "maxiter": 5}, {"data": "abc"}, volatile=("maxiter",), log_to_file=False)
    job.add_inputs(n=10)
    job.checkpoints.save("step", {"x": np.arange(3)})
    with pytest.raises(RuntimeError):
        job.add_inputs(n=11)  # the fingerprint is fixed once checkpoints are open
    # same settings and inputs (a volatile setting may change): resumed
    again = Job(tmp_path, "c", {"k": 1, "maxiter": 9}, {"data": "abc"}, volatile=("maxiter",), resume=True,
                log_to_file=False)
    again.add_inputs(n=10)
    arrays, _ = again.checkpoints.load("step")
    assert np.array_equal(arrays["x"], [0, 1, 2])
    # another setting or input: refused with the entry named
    with pytest.raises(InputError, match="setting.k"):
        Job(tmp_path, "c", {"k": 2, "maxiter": 5}, {"data": "abc"}, resume=True, log_to_file=False).checkpoints
    other = Job(tmp_path, "c", {"k": 1, "maxiter": 5}, {"data": "abc"}, volatile=("maxiter",), resume=True,
                log_to_file=False)
    other.add_inputs(n=12)
    with pytest.raises(InputError, match=r"input.n \(checkpoint 10, now 12\)"):
        other.checkpoints
    with pytest.raises(InputError, match="no checkpoint"):
        Job(tmp_path / "fresh", "c", resume=True)
    assert not (tmp_path / "fresh").exists()  # a refused resume creates nothing


def test_for_file_writes_only_the_file(tmp_path):
    job = Job.for_file(tmp_path / "a.mrc", "x")
    job.write_mrc("a.mrc", np.zeros((2, 2), np.float32), 1.0)
    job.finish()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.mrc"]


def test_root_options_set_the_logger_level_and_the_settings(tmp_path, capsys):
    from cryoprism.cli.main import main
    from cryoprism.io import write_mrc
    from cryoprism.parallel import config

    f = tmp_path / "v.mrc"
    write_mrc(f, np.zeros((4, 4, 4), np.float32), 1.0)
    log = logging.getLogger("cryoprism")
    try:
        assert main(["-q", "--workers", "2", "info", str(f)]) == 0
        assert log.level == logging.WARNING and not config.settings().progress
        assert config.default_workers() == 2
        assert main(["-vv", "info", str(f)]) == 0
        assert log.level == logging.DEBUG and config.settings().progress
        assert config.settings().workers is None  # each invocation starts from the defaults
        assert main(["info", str(f)]) == 0
        assert log.level == logging.INFO
    finally:
        config.reset()
        log.setLevel(logging.INFO)
