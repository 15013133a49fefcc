"""Two CPU processes (gloo DDP) through ``accelerate launch --multi_gpu --num_processes 2``.

With FLYWHEEL_TRAIN_DEBUG=1 every rank writes, into each step checkpoint, the sha256 of its own
live parameters and its own unaveraged losses; the run gets a real (file-based) Dagster Pipes
context, so we can count who opened it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster_pipes import encode_env_var

from flywheel.train import state
from flywheel.train.model import load_model
from tests.train.conftest import build_inputs, done_record, entry_env, run_entry, work_dir


def _pipes_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    context = {
        "asset_keys": ["pretrained_checkpoint"],
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "test-run",
        "job_name": None,
        "retry_number": 0,
        "extras": {},
    }
    ctx, messages = tmp_path / "context.json", tmp_path / "messages.jsonl"
    ctx.write_text(json.dumps(context))
    env = {
        "DAGSTER_PIPES_CONTEXT": encode_env_var({"path": str(ctx)}),
        "DAGSTER_PIPES_MESSAGES": encode_env_var({"path": str(messages)}),
    }
    return env, messages


@pytest.mark.integration
def test_two_ranks_stay_identical_and_report_once(tmp_path: Path) -> None:
    spec_path = build_inputs(tmp_path)
    pipes, messages = _pipes_env(tmp_path)
    env = entry_env(FLYWHEEL_TRAIN_DEBUG="1", **pipes)
    overrides = ("pretrain.num_processes=2", "pretrain.steps=20")
    proc = run_entry(spec_path, *overrides, env=env)

    work = work_dir(tmp_path / "data")
    for step in (10, 20):
        saved = state.step_dir(work, step) / state.STATE
        debug = [json.loads((saved / f"debug-{r}.json").read_text()) for r in (0, 1)]
        data = json.loads((saved / "data.json").read_text())
        assert data["world_size"] == 2 and data["step"] == step and data["batches"] == step
        # both ranks hold the same parameters, and they are the ones saved
        on_disk = state.params_sha256(load_model(saved.parent))
        assert debug[0]["params_sha256"] == debug[1]["params_sha256"] == on_disk
        # each rank saw its own rows; the recorded loss is their mean
        own = [d["losses"] for d in debug]
        assert len(own[0]) == len(own[1]) == len(data["losses"]) == step
        assert all(abs(a - b) > 1e-6 for a, b in zip(*own, strict=True))
        mean = [(a + b) / 2 for a, b in zip(*own, strict=True)]
        assert data["losses"] == pytest.approx(mean, abs=1e-6)
        assert {f"rng-{r}.pt" for r in (0, 1)} <= {p.name for p in saved.iterdir()}

    record = done_record(tmp_path / "data")
    meta = record["metadata"]
    assert meta["num_processes"] == 2 and meta["tokens"] == 20 * 4 * 2 * 64
    assert proc.stderr.count("step 20/20") == 1  # rank 1 logs nothing of its own
    # only rank 0 opened Dagster Pipes: one session, one materialization
    methods = [json.loads(line)["method"] for line in messages.read_text().splitlines()]
    assert methods.count("opened") == 1 and methods.count("closed") == 1
    (report,) = [
        json.loads(line)["params"]
        for line in messages.read_text().splitlines()
        if json.loads(line)["method"] == "report_asset_materialization"
    ]
    assert report["data_version"] == record["version"]
    assert report["metadata"]["num_processes"]["raw_value"] == 2
    assert report["metadata"]["final_loss"]["raw_value"] == pytest.approx(meta["final_loss"])
