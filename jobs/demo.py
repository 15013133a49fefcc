"""The embedded demo: materialize the graph, then let the daemon turn the flywheel.

    python -m jobs.demo [--timeout 1200] [--skip-base]        (what make demo runs)

0. ``flywheel check``'s preflight of the spec: any error stops the demo before a launch.
1. ``dg launch --job flywheel_job``: raw corpora -> ... -> seed SFT model -> its eval.
2. ``dagster-daemon run``: the accepted-data sensor (RUNNING by default) starts cycle 0, and
   every cycle whose accepted generations reach ``cycles.threshold_rows`` starts the next,
   until ``cycles.max_cycles`` or ``cycles.patience`` stops the loop. Nothing here launches
   a cycle: the sensor does, exactly as in a deployment.
3. Once the loop has stopped and no cycle run is queued or running, the daemon is stopped,
   and ``flywheel summary`` and the per-cycle table (``flywheel report``) are printed.

A failed cycle run ends the demo with its error (exit 1); the daemon's log is kept under
``$DAGSTER_HOME/daemon.log``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flywheel.core.spec import load_spec
from flywheel.preflight import errors, preflight

POLL_S = 2.0
BIN = Path(sys.executable).parent  # the venv's scripts: dg, dagster-daemon
ACTIVE = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def _daemon(home: Path) -> subprocess.Popen:
    log = open(home / "daemon.log", "ab")  # noqa: SIM115 - lives as long as the daemon
    argv = [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _cycle_runs(instance) -> list:  # noqa: ANN001
    from dagster import RunsFilter

    return list(instance.get_runs(filters=RunsFilter(job_name="cycle_job")))


def wait_for_loop(timeout_s: float) -> int:
    """Poll until the loop stops with no cycle run active; 1 on a failed run or timeout."""
    from dagster import DagsterInstance

    from flywheel.loop.promotion import loop_state

    spec = load_spec()
    instance = DagsterInstance.get()
    deadline, shown = time.monotonic() + timeout_s, set()
    while time.monotonic() < deadline:
        runs = _cycle_runs(instance)
        for run in runs:
            key = (run.run_id, run.status.value)
            if key not in shown:
                shown.add(key)
                cycle = run.tags.get("dagster/partition")
                print(f"[demo] cycle {cycle}: run {run.run_id[:8]} {run.status.value}", flush=True)
        failed = [r for r in runs if r.status.value == "FAILURE"]
        if failed:
            print(f"[demo] cycle run {failed[0].run_id} failed; see the UI (make ui)")
            return 1
        state = loop_state(spec)
        if state.stopped and not any(r.status.value in ACTIVE for r in runs):
            print(f"[demo] the flywheel {state.reason}", flush=True)
            return 0
        time.sleep(POLL_S)
    print(f"[demo] timed out after {timeout_s:.0f} s; the loop had not stopped")
    return 1


def spec_ready() -> bool:
    """Preflight the spec (``flywheel check``): print every problem; False on any error,
    so a missing file or a bad reference stops the demo before anything is launched."""
    problems = preflight(load_spec())
    for problem in problems:
        print(f"[demo] {problem}", flush=True)
    if errors(problems):
        print("[demo] the spec has errors (see above; flywheel check repeats them): not started")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for the cycles")
    parser.add_argument("--skip-base", action="store_true", help="skip flywheel_job")
    args = parser.parse_args(argv)
    if not spec_ready():
        return 1
    home = Path(os.environ["DAGSTER_HOME"])
    if not args.skip_base:
        subprocess.run([str(BIN / "dg"), "launch", "--job", "flywheel_job"], check=True)
    daemon = _daemon(home)
    try:
        code = wait_for_loop(args.timeout)
    finally:
        _stop(daemon)
    for verb in ("summary", "report"):  # the data products, then the per-cycle table
        subprocess.run([sys.executable, "-m", "flywheel.cli", verb], check=False)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
