"""Sensors: re-curate when a source changes (a new corpus snapshot lands).

The sensor fingerprints each source (file names, sizes and mtimes; for the built-in source,
the installed distributions) and, when one changes, requests a run of that source's raw asset
and the curation stages after it. Dedup is incremental, so only the new snapshot's documents
get signatures computed. Stopped by default: turn it on in the UI under Automation.
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from assets.documents import raw_asset_key
from assets.resources import FlywheelResource
from flywheel.core import products as P
from flywheel.core.spec import Spec
from flywheel.data import stages as pipeline
from jobs import data_job


def build_source_change_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        job=data_job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Re-ingest and re-curate a source when its files change.",
    )
    def source_change_sensor(
        context: dg.SensorEvaluationContext, flywheel: FlywheelResource
    ) -> dg.SensorResult | dg.SkipReason:
        spec = flywheel.spec()
        cursor = json.loads(context.cursor or "{}")
        changed = []
        for source in spec.sources:
            fingerprint = pipeline.source_fingerprint(spec, source.name)
            if cursor.get(source.name) != fingerprint:
                cursor[source.name] = fingerprint
                changed.append(source.name)
        if not changed:
            return dg.SkipReason("no source changed since the last tick")
        run_key = hashlib.sha1(json.dumps(cursor, sort_keys=True).encode()).hexdigest()[:16]
        selection = [raw_asset_key(n) for n in changed]
        selection += [dg.AssetKey(P.FILTERED), dg.AssetKey(P.DEDUPLICATED)]
        request = dg.RunRequest(
            run_key=run_key, asset_selection=selection, tags={"changed_sources": ",".join(changed)}
        )
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor))

    return source_change_sensor


def build_sensors(spec: Spec) -> list[dg.SensorDefinition]:
    from sensors.cycles import (
        build_accepted_data_sensor,
        cycle_failure_sensor,
        cycle_success_sensor,
    )

    # Sensors read the live spec at each tick through the resource; the interval and the
    # default status come from the spec the definitions were loaded with.
    return [
        build_source_change_sensor(),
        build_accepted_data_sensor(spec),
        cycle_failure_sensor,
        cycle_success_sensor,
    ]


def build_schedules(spec: Spec) -> list[dg.ScheduleDefinition]:
    from sensors.cycles import build_cycle_schedule

    return [build_cycle_schedule(spec)]
