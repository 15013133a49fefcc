"""A flywheel cycle through Dagster, in process: one that fails midway (after retraining and
promotion, in generation) is rerun and completes, reusing its trained checkpoint; a cycle
requested again retrains nothing; and the failure is recorded by the run-failure sensor."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from definitions import build_definitions
from flywheel.core.spec import load_spec
from flywheel.loop import cycles, promotion

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


@pytest.mark.integration
def test_a_failed_cycle_reruns_to_completion_without_retraining(flywheel_spec: Path) -> None:
    spec = load_spec(flywheel_spec)
    defs = build_definitions(str(flywheel_spec))
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("flywheel_job").execute_in_process(instance=instance).success
    instance.add_dynamic_partitions("cycles", ["0", "1"])
    zero = _run(defs, instance, 0)
    assert zero.success and set(_mats(zero)) == {*CYCLE, *GENERATE}
    checks = zero.get_asset_check_evaluations()
    assert len(checks) == 5 and all(c.passed for c in checks)

    # Generation breaks after cycle 1 was trained, evaluated and decided: vLLM is not here.
    broken = build_definitions(str(flywheel_spec), ["generation.backend=vllm"])
    failed = _run(broken, instance, 1)
    assert not failed.success
    assert set(_mats(failed)) == set(CYCLE)
    trained = _mats(failed)["cycle_checkpoint"]
    assert trained.metadata["steps"].value == 4

    rerun = _run(defs, instance, 1)
    assert rerun.success and set(_mats(rerun)) == {*CYCLE, *GENERATE}
    again = _mats(rerun)["cycle_checkpoint"]
    # The rerun retrained nothing: the same published checkpoint, one version on disk.
    assert again.tags["dagster/data_version"] == trained.tags["dagster/data_version"]
    published = [p for p in cycles.checkpoint_root(spec, 1).glob("v-*") if p.is_dir()]
    assert len(published) == 1
    assert [d["cycle"] for d in promotion.decisions(spec)] == [0, 1]

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
    [failure] = cycles.failures(spec)
    assert failure["cycle"] == "1" and failure["run_id"] == failed.run_id
