"""One ``flywheel run`` a project, one Dagster daemon an instance (``jobs.run``).

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/dagster/test_one_driver.py

Two ``flywheel run`` in one project materialized the graph twice at once (the second waited at
the gpu pool, spinning a core); ``flywheel ui`` opened during a run started a second daemon on
the instance. The daemons here are real processes named as Dagster's are, on a Dagster home.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import jobs.run as run_command
from jobs.run import Daemon, other_daemons, sole_run

SLEEP = "import time; time.sleep(120)"


def test_a_second_flywheel_run_is_told_who_holds_the_project(tmp_path: Path) -> None:
    with sole_run(tmp_path) as first:
        assert first is None
        with sole_run(tmp_path) as second:
            assert second is not None and f"pid {os.getpid()}," in second
    with sole_run(tmp_path) as again:  # released with the first
        assert again is None


def test_the_lock_goes_with_a_killed_holder(tmp_path: Path) -> None:
    code = "from pathlib import Path\nfrom jobs.run import sole_run\n"
    code += f"with sole_run(Path({str(tmp_path)!r})):\n    {SLEEP}"
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 30
        lock = tmp_path / "run.lock"
        while not (lock.exists() and lock.read_text().startswith("pid")):
            assert time.monotonic() < deadline, "the holder never took the lock"
            time.sleep(0.1)
        with sole_run(tmp_path) as other:
            assert other is not None and f"pid {holder.pid}," in other
    finally:
        holder.kill()
        holder.wait()
    with sole_run(tmp_path) as after:
        assert after is None


def _fake_daemon(tmp_path: Path, home: Path, style: str) -> subprocess.Popen:
    """A sleeping process whose command line is a Dagster daemon's, on ``home``: the
    ``dagster-daemon run`` script (flywheel run's) or ``python -m dagster._daemon run``
    (``dagster dev``'s)."""
    script = tmp_path / "dagster-daemon"
    script.write_text(SLEEP)
    argv = [sys.executable, str(script), "run"] if style == "script" else None
    if argv is None:
        (tmp_path / "dagster").mkdir(exist_ok=True)
        (tmp_path / "dagster" / "__init__.py").write_text("")
        (tmp_path / "dagster" / "_daemon.py").write_text(SLEEP)
        argv = [sys.executable, "-m", "dagster._daemon", "run"]
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 30
    while "run" not in psutil.Process(proc.pid).cmdline():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("style", ["script", "module"])
def test_daemons_are_found_by_their_dagster_home(tmp_path: Path, style: str) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    elsewhere.mkdir()
    ours = _fake_daemon(tmp_path, home, style)
    theirs = _fake_daemon(tmp_path, elsewhere, style)
    try:
        assert other_daemons(home) == [ours.pid]
        assert other_daemons(home, mine=ours) == []
        assert other_daemons(elsewhere) == [theirs.pid]
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()


def test_one_daemon_turns_the_loop_whoever_started_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No daemon: flywheel run starts its own. ``flywheel ui`` opens one: flywheel run stops
    its own. That one goes away: flywheel run starts its own again."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setattr(  # its own daemon, as a process it can stop (no workspace to load)
        run_command, "_daemon", lambda h, w, c: _fake_daemon(tmp_path, h, "script")
    )
    daemon = Daemon(home, tmp_path / "workspace.yaml", tmp_path)
    ui = None
    try:
        daemon.ensure()
        first = daemon.proc
        assert first is not None and first.poll() is None
        daemon.ensure()
        assert daemon.proc is first  # still the one
        ui = _fake_daemon(tmp_path, home, "module")  # flywheel ui opened mid-run
        daemon.ensure()
        assert first.wait(timeout=40) is not None  # handed over
        assert other_daemons(home) == [ui.pid]
        ui.kill()
        ui.wait()
        daemon.ensure()
        assert daemon.proc is not first and daemon.proc.poll() is None  # taken over again
    finally:
        daemon.stop()
        if ui is not None:
            ui.kill()
    said = capsys.readouterr().out
    assert said.count("dagster-daemon started") == 2
    assert f"another Dagster daemon on this home (pid {ui.pid}) turns the flywheel now" in said
