"""The loop's triggers on a real (ephemeral) Dagster instance, ticked with
``build_sensor_context``: cycle 0 bootstraps from the seed model, new accepted rows start the
next cycle once, a repeated tick never requests a cycle twice, and patience stops the loop."""

from __future__ import annotations

import textwrap
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from definitions import build_definitions
from flywheel.core.shards import ShardWriter
from flywheel.core.spec import load_spec
from flywheel.loop import cycles, promotion, runs
from flywheel.loop.report import report_footer
from tests.loop.test_cycles import SPEC, _publish_model, _run_cycle

ACCEPTED = dg.AssetKey("accepted_generations")


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "flywheel.yaml"
    body = textwrap.dedent(SPEC).replace(
        "cycles: {patience: 2,", "cycles: {threshold_rows: 5, sensor_interval_s: 5, patience: 2,"
    )
    path.write_text(body)
    return path


def _accepted(spec, cycle: int, n: int) -> None:
    """An accepted set that passes its guard checks, and its materialization event."""
    rows = [
        {
            "generation_id": f"g{cycle}-{i}",
            "prompt_id": f"p{i}",
            "prompt": f"{cycle}+{i}",
            "response": str(cycle + i),
        }
        for i in range(n)
    ]
    with ShardWriter(cycles.accepted_root(spec, cycle)) as writer:
        writer.write(pl.DataFrame(rows))
        writer.commit(cycle=cycle)


def _event(instance, cycle: int, n: int) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(ACCEPTED, partition=str(cycle), metadata={"accepted_rows": n})
    )


class Tick:
    """A sensor's answer, whichever type it returned."""

    def __init__(self, result, cursor):
        skip = result if isinstance(result, dg.SkipReason) else result.skip_reason
        self.skip_message = skip.skip_message if skip else None
        self.run_requests = [] if isinstance(result, dg.SkipReason) else result.run_requests
        self.dynamic_partitions_requests = getattr(result, "dynamic_partitions_requests", [])
        self.cursor = getattr(result, "cursor", None) or cursor


def _tick(sensor, instance, defs, cursor) -> Tick:
    # Called directly: evaluate_tick would validate the requested partition key before the
    # daemon applies the same result's add-partition request.
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
    )
    return Tick(sensor(context), cursor)


def test_accepted_rows_start_each_cycle_once(spec_path: Path) -> None:
    defs = build_definitions(str(spec_path))
    spec = load_spec(spec_path)
    sensor = defs.resolve_sensor_def("accepted_data_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 5
    instance = dg.DagsterInstance.ephemeral()

    result = _tick(sensor, instance, defs, None)
    assert not result.run_requests and "no seed SFT checkpoint" in result.skip_message
    _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    result = _tick(sensor, instance, defs, result.cursor)
    [request] = result.run_requests
    assert (request.partition_key, request.run_key) == ("0", "cycle-0")
    [add] = result.dynamic_partitions_requests
    assert add.partition_keys == ["0"]
    instance.add_dynamic_partitions("cycles", ["0"])
    again = _tick(sensor, instance, defs, result.cursor)
    assert not again.run_requests and "already requested" in again.skip_message

    # Cycle 0 runs: decided, then its generations are accepted (3 rows < threshold 5).
    _run_cycle(spec, 0, 0.1)
    _accepted(spec, 0, 3)
    _event(instance, 0, 3)
    result = _tick(sensor, instance, defs, again.cursor)
    assert not result.run_requests and "3 new accepted rows" in result.skip_message
    # Re-accepting cycle 0 with more rows counts only the difference: 3 + 3 = 6 >= 5.
    _accepted(spec, 0, 6)
    _event(instance, 0, 6)
    first = _tick(sensor, instance, defs, result.cursor)
    [request] = first.run_requests
    assert (request.partition_key, request.run_key) == ("1", "cycle-1")
    # A repeated tick from the same cursor asks for the same run key: Dagster dedupes it.
    repeat = _tick(sensor, instance, defs, result.cursor)
    assert [r.run_key for r in repeat.run_requests] == ["cycle-1"]
    instance.add_dynamic_partitions("cycles", ["1"])
    after = _tick(sensor, instance, defs, first.cursor)
    assert not after.run_requests and "already requested" in after.skip_message


def test_the_loop_stops_after_patience_cycles_without_promotion(spec_path: Path) -> None:
    defs = build_definitions(str(spec_path))
    spec = load_spec(spec_path)
    _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    for cycle, accuracy in enumerate([0.5, 0.4, 0.3]):
        if cycle:
            _accepted(spec, cycle - 1, 5)
        assert _run_cycle(spec, cycle, accuracy).promoted == (cycle == 0)
    assert promotion.loop_state(spec).stopped
    instance = dg.DagsterInstance.ephemeral()
    _accepted(spec, 2, 50)
    _event(instance, 2, 50)
    result = _tick(defs.resolve_sensor_def("accepted_data_sensor"), instance, defs, None)
    assert not result.run_requests
    assert "2 cycle(s) in a row without promotion" in result.skip_message
    schedule = defs.resolve_schedule_def("flywheel_cycle_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    context = dg.build_schedule_context(instance=instance, resources=defs.resources)
    skipped = schedule(context)
    assert isinstance(skipped, dg.SkipReason) and "without promotion" in skipped.skip_message


@dg.op
def _fine() -> None:
    pass


@dg.job
def _tagged_job() -> None:
    _fine()


def _run_status(defs, name: str, instance, result) -> None:
    """Tick a run-status sensor for ``result``'s run, as the daemon would."""
    sensor = defs.resolve_sensor_def(name)
    event = result.get_run_failure_event() if not result.success else result.get_run_success_event()
    context = dg.build_run_status_sensor_context(
        sensor_name=name,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=event,
        resources=defs.resources,
    )
    sensor(context.for_run_failure() if not result.success else context)


def test_a_failed_cycle_run_is_reported_until_a_later_run_succeeds(spec_path: Path) -> None:
    defs = build_definitions(str(spec_path))
    spec = load_spec(spec_path)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("cycles", ["1"])
    # A real cycle run that fails at once: cycle 1 needs cycle 0's training set.
    failed = defs.resolve_job_def("cycle_job").execute_in_process(
        instance=instance, partition_key="1", raise_on_error=False
    )
    assert not failed.success
    _run_status(defs, "cycle_failure_sensor", instance, failed)
    [failure] = runs.failures(spec)
    assert (failure.cycle, failure.run_id) == (1, failed.run_id)
    # The step that failed and its own error, not Dagster's "Steps failed: [...]" summary.
    assert failure.step == "training_set"
    assert failure.message.startswith("FileNotFoundError: cycle 1's training_set reads")
    assert any(line.startswith("failed: cycle 1 run") for line in report_footer(spec))
    # A later successful run of cycle 1 resolves it; the history keeps it.
    ok = _tagged_job.execute_in_process(instance=instance, tags={"dagster/partition": "1"})
    _run_status(defs, "cycle_success_sensor", instance, ok)
    assert runs.failures(spec) == []
    assert not any(line.startswith("failed:") for line in report_footer(spec))
    assert [f.run_id for f in runs.failures(spec, include_resolved=True)] == [failed.run_id]


@dg.asset(
    name="accepted_generations",
    check_specs=[dg.AssetCheckSpec("not_empty", asset="accepted_generations", blocking=True)],
)
def _nothing_accepted() -> dg.MaterializeResult:
    check = dg.AssetCheckResult(check_name="not_empty", passed=False)
    return dg.MaterializeResult(check_results=[check])


def test_a_failed_blocking_check_is_recorded_by_its_name(spec_path: Path) -> None:
    """Dagster words a failed blocking check as its own error; the record names the check."""
    from flywheel.loop import status

    defs = build_definitions(str(spec_path))
    spec = load_spec(spec_path)
    instance = dg.DagsterInstance.ephemeral()
    failed = dg.materialize(
        [_nothing_accepted],
        instance=instance,
        tags={"dagster/partition": "0"},
        raise_on_error=False,
    )
    assert not failed.success
    _run_status(defs, "cycle_failure_sensor", instance, failed)
    [failure] = status.failure_summary(spec)
    assert (failure.cycle, failure.step) == (0, "accepted_generations: not_empty")
    assert (
        failure.line()
        == f"cycle 0 run {failed.run_id}: check accepted_generations: not_empty failed"
    )


@pytest.mark.integration
def test_a_lora_cycle_started_by_the_sensor_publishes_its_merged_model_and_adapter(
    tmp_path: Path,
) -> None:
    """The spec sets ``lora`` on the cycles' retraining: the run the sensor requests retrains
    the seed (a real tiny model) out of process and publishes the merged checkpoint and the
    adapter beside it, with the adapter's lineage in the catalog."""
    from flywheel.core import artifacts
    from flywheel.loop.lineage_keys import artifact_lineage
    from flywheel.train.model import load_model
    from tests.train.test_preference import build_champion

    path = tmp_path / "flywheel.yaml"
    lora = "lora: {enabled: true, r: 4, alpha: 8}"
    train = f"train: {{steps: 4, warmup_steps: 0, save_every: 2, {lora}}}"
    body = textwrap.dedent(SPEC).replace(
        "cycles: {patience: 2,", f"cycles: {{threshold_rows: 5, {train}, patience: 2,"
    )
    path.write_text(body.replace("sft:\n", "sft:\n  micro_batch: 4\n  max_length: 64\n"))
    defs = build_definitions(str(path))
    spec = load_spec(path)
    seed = build_champion(spec.product_dir("sft_checkpoint"))
    _run_cycle(spec, 0, 0.1)  # cycle 0 adopts the seed and is decided
    _accepted(spec, 0, 6)
    instance = dg.DagsterInstance.ephemeral()
    _event(instance, 0, 6)
    sensor = defs.resolve_sensor_def("accepted_data_sensor")
    [request] = _tick(sensor, instance, defs, None).run_requests
    assert request.partition_key == "1"
    instance.add_dynamic_partitions("cycles", ["1"])
    retrain = [dg.AssetKey("training_set"), dg.AssetKey("cycle_checkpoint")]
    result = defs.resolve_job_def("cycle_job").execute_in_process(
        instance=instance, partition_key="1", tags=request.tags, asset_selection=retrain
    )
    assert result.success
    [event] = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "cycle_checkpoint"
    ]
    meta = {k: v.value for k, v in event.metadata.items()}
    assert meta["steps"] == 4 and 0 < meta["lora/trainable_params"] < meta["lora/total_params"]

    checkpoint = artifacts.read_current(cycles.checkpoint_root(spec, 1))
    assert event.tags["dagster/data_version"] == checkpoint.version
    load_model(checkpoint.path)  # the merged model, plain: eval and generation load it as is
    adapter = artifacts.read_current(Path(meta["adapter_path"]).parent)
    assert adapter.version == meta["adapter"] == checkpoint.meta["lineage"]["adapter"]
    assert (adapter.path / "sft" / "adapter_model.safetensors").exists()
    lineage = adapter.meta["lineage"]
    assert lineage["base_checkpoint"] == seed.version and lineage["cycle"] == 1
    assert lineage["training_set"] == checkpoint.meta["lineage"]["training_set"]
    facts = artifact_lineage(spec, str(adapter.path))  # flywheel lineage ADAPTER_DIR
    assert facts["used_by"] == [{"checkpoint": checkpoint.version, "stage": "cycle"}]
