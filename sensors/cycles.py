"""The loop's triggers: new accepted data starts the next cycle; a schedule runs cycles on a
cron; finished cycle runs are recorded.

The accepted-data sensor keeps a cursor over ``accepted_generations`` materializations
(``accepted_trajectories`` with an ``agent`` section) and sums the accepted rows of cycles
it has not counted yet (only cycles whose guard checks pass). At ``cycles.threshold_rows``
it adds the next cycle's partition and requests its run with ``run_key="cycle-N"``, so a
repeated tick can never launch a cycle twice. It bootstraps cycle 0 once the seed SFT
checkpoint exists, and stops (saying why) when the loop is stopped: ``cycles.patience``
cycles without a promotion, or ``cycles.max_cycles``. It is RUNNING by default: the flywheel
turns by itself as soon as a daemon runs (``dagster dev``, make demo).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg

from assets.cycles import cycles_partitions
from assets.resources import FlywheelResource
from flywheel.core import products as P
from flywheel.core.spec import Spec
from jobs import cycle_job

# How often finished cycle runs are recorded (Dagster's default is 30 s): flywheel run waits
# for the record before it stops the daemon.
RECORD_INTERVAL_S = 5


def _request(cycle: int, trigger: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"cycle-{cycle}",
        partition_key=str(cycle),
        tags={"flywheel/cycle": str(cycle), "flywheel/trigger": trigger},
    )


def _count_new(context: dg.SensorEvaluationContext, spec: Spec, cursor: dict) -> None:
    """Add the new accepted rows of newly materialized (and passing) cycles to the cursor.

    ``counted`` remembers the rows already counted per cycle, so re-materializing a cycle
    adds only the difference (e.g. more prompts), and a repeated event adds nothing.
    """
    from flywheel.loop.accept import accepted_checks

    if spec.vision is not None:  # answers about images: checked by image, not prompt text
        from flywheel.loop.vision.accept import answer_checks as accepted_checks
    agent = spec.agent is not None  # accepted trajectories, counted in episodes
    result = context.instance.fetch_materializations(
        dg.AssetKey(P.accepted_product(spec)),
        limit=1000,
        cursor=cursor.get("after"),
        ascending=True,
    )
    for record in result.records:
        part, mat = record.partition_key, record.asset_materialization
        if part is None or mat is None:
            continue
        failed = [] if agent else [o.name for o in accepted_checks(spec, int(part)) if not o.passed]
        if failed:
            context.log.warning(f"cycle {part}: accepted set fails {failed}; not counted")
            continue
        rows = mat.metadata.get("accepted" if agent else "accepted_rows")
        rows = int(getattr(rows, "value", rows) or 0)
        cursor["pending"] += max(0, rows - cursor["counted"].get(part, 0))
        cursor["counted"][part] = max(rows, cursor["counted"].get(part, 0))
    cursor["after"] = result.cursor


def build_accepted_data_sensor(spec: Spec) -> dg.SensorDefinition:
    @dg.sensor(
        job=cycle_job,
        minimum_interval_seconds=spec.cycles.sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING
        if spec.cycles.enabled
        else dg.DefaultSensorStatus.STOPPED,
        description="Start the next flywheel cycle when enough new generations were accepted.",
    )
    def accepted_data_sensor(
        context: dg.SensorEvaluationContext, flywheel: FlywheelResource
    ) -> dg.SensorResult | dg.SkipReason:
        from flywheel.core.artifacts import has_current
        from flywheel.loop.promotion import loop_state

        spec = flywheel.spec()
        cursor = json.loads(context.cursor or "{}")
        cursor.setdefault("pending", 0)
        cursor.setdefault("counted", {})
        state = loop_state(spec)
        if state.stopped:
            return dg.SkipReason(f"the flywheel is {state.reason}")
        _count_new(context, spec, cursor)
        existing = set(context.instance.get_dynamic_partitions(cycles_partitions.name))
        cycle = state.next_cycle
        skip = None
        if str(cycle) in existing:
            skip = f"cycle {cycle} was already requested; waiting for its promotion decision"
        elif cycle == 0 and not has_current(spec.product_dir(P.SFT)):
            skip = "no seed SFT checkpoint yet: materialize flywheel_job first"
        elif cycle > 0 and cursor["pending"] < spec.cycles.threshold_rows:
            skip = (
                f"{cursor['pending']} new accepted rows; cycle {cycle} starts at "
                f"cycles.threshold_rows={spec.cycles.threshold_rows}"
            )
        if skip:
            return dg.SensorResult(skip_reason=skip, cursor=json.dumps(cursor))
        trigger = "seed" if cycle == 0 else f"{cursor['pending']} accepted rows"
        cursor["pending"] = 0
        return dg.SensorResult(
            run_requests=[_request(cycle, trigger)],
            dynamic_partitions_requests=[cycles_partitions.build_add_request([str(cycle)])],
            cursor=json.dumps(cursor),
        )

    return accepted_data_sensor


def build_cycle_schedule(spec: Spec) -> dg.ScheduleDefinition:
    status = dg.DefaultScheduleStatus.RUNNING if spec.cycles.schedule_running else None

    @dg.schedule(
        cron_schedule=spec.cycles.cron,
        job=cycle_job,
        default_status=status or dg.DefaultScheduleStatus.STOPPED,
        description="A recurring flywheel cycle, even below the sensor's threshold.",
    )
    def flywheel_cycle_schedule(
        context: dg.ScheduleEvaluationContext, flywheel: FlywheelResource
    ) -> dg.RunRequest | dg.SkipReason:
        from flywheel.loop.cycles import new_accepted_rows
        from flywheel.loop.promotion import loop_state

        spec = flywheel.spec()
        state = loop_state(spec)
        if state.stopped:
            return dg.SkipReason(f"the flywheel is {state.reason}")
        cycle = state.next_cycle
        if context.instance.has_dynamic_partition(cycles_partitions.name, str(cycle)):
            return dg.SkipReason(f"cycle {cycle} was already requested")
        if cycle > 0 and new_accepted_rows(spec, cycle) == 0:
            return dg.SkipReason(f"no accepted generation is new since cycle {cycle - 1}")
        context.instance.add_dynamic_partitions(cycles_partitions.name, [str(cycle)])
        return _request(cycle, "schedule")

    return flywheel_cycle_schedule


def _finished_at(context: dg.RunStatusSensorContext) -> datetime:
    """When the run ended (not when this sensor ticked), so a failure and a later success of
    the same cycle are ordered as they happened."""
    record = context.instance.get_run_record_by_id(context.dagster_run.run_id)
    ended = record.end_time if record else None
    return datetime.fromtimestamp(ended, UTC) if ended else datetime.now(UTC)


@dg.run_failure_sensor(
    monitored_jobs=[cycle_job],
    minimum_interval_seconds=RECORD_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Record every failed flywheel cycle run (flywheel report lists the unresolved).",
)
def cycle_failure_sensor(context: dg.RunFailureSensorContext, flywheel: FlywheelResource) -> None:
    from flywheel.loop.runs import record_failure

    run = context.dagster_run
    cycle = run.tags.get("dagster/partition")
    step, message = _step_failure(context)
    stored = context.instance.get_run_by_id(run.run_id) or run  # tags set after the failure
    if stored.tags.get("dagster/will_retry") == "true":  # a crash: run_retries reruns it
        message += " (Dagster retries the run from the failed step)"
    record_failure(flywheel.spec(), cycle, run.run_id, message, _finished_at(context), step)
    context.log.error(f"flywheel cycle {cycle} failed in run {run.run_id} at {step}: {message}")


def _step_failure(context: dg.RunFailureSensorContext) -> tuple[str | None, str]:
    """The first failed step and its error as the user would word it: the asset's own
    exception (not Dagster's wrapper around it, nor Pipes' "process failed with code 1" when
    the stage's process reported its exception), its class without the module path; a run
    that failed outside any step: None and the run's message."""
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        if error is not None and error.cls_name == "DagsterExecutionStepExecutionError":
            error = error.cause or error  # the wrapper's cause is the asset's exception
        if error is not None and error.cls_name == "DagsterPipesExecutionError":
            error = _pipes_error(context, event.step_key) or error
        if error is None:
            continue
        head, sep, rest = error.message.strip().partition(": ")
        if sep and " " not in head:  # a qualified class name: keep its last part
            head = head.rsplit(".", 1)[-1]
        return event.step_key, head + sep + rest
    return None, context.failure_event.message or "run failed"


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[cycle_job],
    minimum_interval_seconds=RECORD_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Record every successful flywheel cycle run: it resolves the cycle's earlier "
    "failures.",
)
def cycle_success_sensor(context: dg.RunStatusSensorContext, flywheel: FlywheelResource) -> None:
    from flywheel.loop.runs import record_success

    run = context.dagster_run
    cycle = run.tags.get("dagster/partition")
    record_success(flywheel.spec(), cycle, run.run_id, _finished_at(context))


def _pipes_error(context: dg.RunFailureSensorContext, step: str | None):  # noqa: ANN202
    """The exception a stage's process reported through Pipes before it exited (Dagster logs
    it as an engine event of the step), or None."""
    records = context.instance.get_records_for_run(
        run_id=context.dagster_run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
    ).records
    for record in reversed(records):
        event = record.event_log_entry.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        if event is not None and event.step_key == step and error is not None:
            return error
    return None
