"""The source-change sensor, evaluated with Dagster's test context."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from assets.resources import FlywheelResource
from definitions import build_definitions
from tests.conftest import write_spec


def _tick(sensor: dg.SensorDefinition, spec: Path, cursor: str | None):
    context = dg.build_sensor_context(
        cursor=cursor, resources={"flywheel": FlywheelResource(spec_path=str(spec))}
    )
    return sensor.evaluate_tick(context)


def test_requests_a_run_only_for_changed_sources(tmp_path: Path, corpus_jsonl: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": 1, "text": "one two three"}) + "\n")
    spec = write_spec(
        tmp_path,
        f"""
        sources:
          - {{name: alpha, kind: jsonl, path: {corpus_jsonl.name}}}
          - {{name: beta, kind: jsonl, path: {other.name}}}
        """,
    )
    sensor = build_definitions(str(spec)).resolve_sensor_def("source_change_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED

    first = _tick(sensor, spec, None)
    [request] = first.run_requests
    assert {k.to_user_string() for k in request.asset_selection} == {
        "raw_alpha",
        "raw_beta",
        "filtered_documents",
        "deduplicated_shards",
    }

    second = _tick(sensor, spec, first.cursor)
    assert second.run_requests == [] and second.skip_message

    with other.open("a") as f:  # a new snapshot of one source
        f.write(json.dumps({"id": 2, "text": "four five six"}) + "\n")
    os.utime(other, ns=(1, 1))
    third = _tick(sensor, spec, second.cursor)
    [request] = third.run_requests
    assert {k.to_user_string() for k in request.asset_selection} == {
        "raw_beta",
        "filtered_documents",
        "deduplicated_shards",
    }
    assert request.run_key != first.run_requests[0].run_key
