"""A flywheel cycle through Dagster, in process: one that fails midway (after retraining and
promotion, in generation) is rerun and completes, reusing its trained checkpoint; a cycle
requested again retrains nothing; and the failure is recorded by the run-failure sensor.

The failure is injected by taking the cycle's prompt file away before its run and putting it
back before the rerun, so it fails the same way on any machine.

    .venv/bin/python -m pytest -q tests/dagster/test_cycle_reliability.py
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from definitions import build_definitions
from flywheel.core.spec import load_spec
from flywheel.data.arithmetic import addition_examples
from flywheel.loop import cycles, promotion, runs

CYCLE = ["training_set", "cycle_checkpoint", "cycle_eval_scores", "promoted_model"]
GENERATE = ["synthetic_generations", "accepted_generations"]


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, cycle: int):
    job = defs.resolve_job_def("cycle_job")
    return job.execute_in_process(instance=instance, partition_key=str(cycle), raise_on_error=False)


def _mats(result) -> dict[str, dg.AssetMaterialization]:
    return {
        e.asset_key.to_user_string(): e.materialization
        for e in result.get_asset_materialization_events()
    }


def _errors(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every error in the run's event log (what the UI shows): the step's failure and the
    stage's own exception, which Pipes relays from the subprocess."""
    events = (r.dagster_event for r in instance.all_logs(run_id) if r.dagster_event)
    data = (e.event_specific_data for e in events)
    return "\n".join(str(d.error) for d in data if getattr(d, "error", None) is not None)


def _prompt_file(tmp_path: Path) -> Path:
    """Generation prompts as a jsonl file: 3-digit sums, as the spec's built-in ones are."""
    path = tmp_path / "prompts.jsonl"
    rows = addition_examples(8, 3, 3, 3, seed=11)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.integration
def test_a_failed_cycle_reruns_to_completion_without_retraining(
    flywheel_spec: Path, tmp_path: Path
) -> None:
    prompts = _prompt_file(tmp_path)
    overrides = ["generation.prompts.kind=jsonl", f"generation.prompts.path={prompts}"]
    spec = load_spec(flywheel_spec, overrides)
    defs = build_definitions(str(flywheel_spec), overrides)
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("flywheel_job").execute_in_process(instance=instance).success
    instance.add_dynamic_partitions("cycles", ["0", "1"])
    zero = _run(defs, instance, 0)
    assert zero.success and set(_mats(zero)) == {*CYCLE, *GENERATE}
    checks = zero.get_asset_check_evaluations()
    assert len(checks) == 5 and all(c.passed for c in checks)

    # Generation breaks after cycle 1 was trained, evaluated and decided: no prompt file.
    hidden = prompts.rename(tmp_path / "prompts.hidden")
    failed = _run(defs, instance, 1)
    assert not failed.success
    assert set(_mats(failed)) == set(CYCLE)
    assert f"FileNotFoundError: {prompts}" in _errors(instance, failed.run_id)
    trained = _mats(failed)["cycle_checkpoint"]
    assert trained.metadata["steps"].value == 4

    hidden.rename(prompts)
    rerun = _run(defs, instance, 1)
    assert rerun.success and set(_mats(rerun)) == {*CYCLE, *GENERATE}
    again = _mats(rerun)["cycle_checkpoint"]
    # The rerun retrained nothing: the same published checkpoint, one version on disk.
    assert again.tags["dagster/data_version"] == trained.tags["dagster/data_version"]
    published = [p for p in cycles.checkpoint_root(spec, 1).glob("v-*") if p.is_dir()]
    assert len(published) == 1
    assert [d.cycle for d in promotion.decisions(spec)] == [0, 1]

    # The run-failure sensor records the failed cycle for flywheel report.
    sensor = defs.resolve_sensor_def("cycle_failure_sensor")
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=failed.dagster_run,
        dagster_event=failed.get_run_failure_event(),
        resources=defs.resources,
    ).for_run_failure()
    sensor(context)
    [failure] = runs.failures(spec)
    assert failure.cycle == 1 and failure.run_id == failed.run_id
    # The step that failed and the stage's own exception, relayed by Pipes from its process.
    assert failure.step == "synthetic_generations"
    assert failure.message.startswith(f"FileNotFoundError: {prompts}")
    # The rerun's success, recorded by the run-success sensor, resolves it; history keeps it.
    sensor = defs.resolve_sensor_def("cycle_success_sensor")
    sensor(
        dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_instance=instance,
            dagster_run=rerun.dagster_run,
            dagster_event=rerun.get_run_success_event(),
            resources=defs.resources,
        )
    )
    assert runs.failures(spec) == []
    assert [f.run_id for f in runs.failures(spec, include_resolved=True)] == [failed.run_id]
