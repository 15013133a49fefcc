"""Why the loop is stuck, and failures as state vs history, on real catalogs and artifacts:
a seed model that scores 0 and whose generations are all rejected, a failed run superseded
by a successful rerun, a failure outside acceptance, a stopped loop.

    .venv/bin/python -m pytest -q tests/loop/test_status.py
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flywheel.cli import main
from flywheel.core import products as P
from flywheel.core.spec import load_spec
from flywheel.loop import cycles, runs, status
from flywheel.loop.accept import accept_generations
from flywheel.loop.report import report_footer
from tests.loop.test_accept import write_generations
from tests.loop.test_cycles import SPEC, _accept, _publish_model, _run_cycle

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# What the failure sensor records when acceptance's blocking check fails (sensors/cycles.py).
CHECK_ERROR = (
    "DagsterAssetCheckFailedError: 1 blocking asset check failed with ERROR severity:\n"
    "accepted_generations: not_empty"
)


@pytest.fixture
def spec(tmp_path: Path):
    path = tmp_path / "flywheel.yaml"
    path.write_text(textwrap.dedent(SPEC).replace("cycles: {", "cycles: {threshold_rows: 3, "))
    return load_spec(path)


def _generate(spec, right: bool) -> None:
    """Cycle 0's generations on 4 prompts x 2 samples: all right, or all wrong (one prompt
    without a reference answer to check against)."""
    prompts = [(f"What is {i} + {i}?", str(2 * i)) for i in range(1, 5)]
    rows = [(p, a, [a if right else "7", a if right else "9"]) for p, a in prompts]
    if not right:
        rows[0] = (rows[0][0], None, ["2", "2"])
    write_generations(spec, 0, rows)
    accept_generations(spec, 0, cycles.cycle_inputs(spec, P.ACCEPTED, 0))


def _stuck_at_zero(spec) -> None:
    """Cycle 0 decided with the seed model scoring 0.0; none of its generations accepted;
    acceptance's blocking check failed the run."""
    _publish_model(spec.product_dir(P.SFT), "seed")
    _run_cycle(spec, 0, 0.0)
    _generate(spec, right=False)
    runs.record_failure(spec, "0", "run-1", CHECK_ERROR, T0, step="accepted_generations")


def test_zero_accepted_says_why_the_loop_is_stuck(spec, capsys) -> None:
    _stuck_at_zero(spec)
    reason = status.stuck_reason(spec)
    assert reason is not None
    assert reason.startswith(
        "0 of 8 generations accepted in cycle 0 (incorrect: 6, no_reference: 2); "
    )
    assert "the seed model scores 0.0000 on accuracy/addition" in reason
    assert "0 new row(s), fewer than cycles.threshold_rows=3, so cycle 1 is not started" in reason
    assert reason.endswith("cycle 0 run run-1: check accepted_generations: not_empty failed")
    assert reason.startswith(status.starved(spec))  # what flywheel run waits on, then prints
    [failure] = status.failure_summary(spec)
    assert (failure.cycle, failure.step) == (0, "accepted_generations: not_empty")
    assert "\n" not in failure.error and failure.error.endswith("not_empty")
    footer = report_footer(spec)
    assert f"stuck: {reason}" in footer
    assert "failed: cycle 0 run run-1: check accepted_generations: not_empty failed" in footer
    assert main(["report", "--spec", str(spec.base_dir / "flywheel.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stuck"] == reason and report["failures"][0]["run_id"] == "run-1"
    assert [r["accepted"] for r in report["cycles"]] == [0] and "history" not in report


def test_a_successful_rerun_supersedes_the_failure(spec, capsys) -> None:
    _stuck_at_zero(spec)
    # The seed model was fixed and cycle 0 rerun: its generations pass, the run succeeded.
    _generate(spec, right=True)
    runs.record_success(spec, 0, "run-2", T0 + timedelta(minutes=5))
    assert status.failure_summary(spec) == []
    assert status.stuck_reason(spec) is None  # 8 new rows >= threshold_rows: cycle 1 starts
    assert status.starved(spec) is None
    footer = report_footer(spec)
    assert not any(line.startswith(("failed:", "stuck:", "history:")) for line in footer)
    [old] = status.failure_history(spec)
    assert (old.run_id, old.resolved_by) == ("run-1", "run-2")
    history = report_footer(spec, history=True)
    assert history[-1] == (
        "history: cycle 0 run run-1: check accepted_generations: not_empty failed "
        "(resolved by run run-2)"
    )
    spec_file = str(spec.base_dir / "flywheel.yaml")
    assert main(["report", "--spec", spec_file, "--json", "--history"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failures"] == [] and report["stuck"] is None
    assert [h["resolved_by"] for h in report["history"]] == ["run-2"]


def test_an_unresolved_failure_names_its_step_and_error(spec) -> None:
    _publish_model(spec.product_dir(P.SFT), "seed")
    _run_cycle(spec, 0, 0.5)
    _accept(spec, 0, 5)  # enough rows: only the failure keeps the loop from moving
    _run_cycle(spec, 1, 0.6)
    error = "FileNotFoundError: no input files match 'prompts.jsonl'"
    runs.record_failure(spec, 1, "run-9", error, T0, step="synthetic_generations")
    assert status.stuck_reason(spec) == f"cycle 1 run run-9 at synthetic_generations: {error}"
    # A run of another cycle succeeding resolves nothing; one of cycle 1 does.
    runs.record_success(spec, 2, "run-10", T0 + timedelta(minutes=1))
    assert [f.run_id for f in status.failure_summary(spec)] == ["run-9"]
    runs.record_success(spec, 1, "run-11", T0 + timedelta(minutes=2))
    assert status.failure_summary(spec) == []


def test_no_seed_model_and_a_stopped_loop(spec) -> None:
    assert status.stuck_reason(spec) == (
        "no seed model yet: materialize flywheel_job first (flywheel run)"
    )
    _publish_model(spec.product_dir(P.SFT), "seed")
    assert status.stuck_reason(spec) is None  # cycle 0 can start
    _run_cycle(spec, 0, 0.5)
    for c in (1, 2):  # patience 2: two cycles without a promotion stop the loop
        _accept(spec, c - 1, 5)
        _run_cycle(spec, c, 0.1)
    reason = status.stuck_reason(spec)
    assert reason == "the loop stopped: 2 cycle(s) in a row without promotion (cycles.patience=2)"
    assert status.starved(spec) is None  # stopped, not starved
