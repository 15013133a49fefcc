"""Two vision cycles through the sensor, as a user runs them: ``flywheel run`` on a tiny copy
of ``examples/vision/flywheel.yaml`` materializes the graph (rendered images -> curated image
shards; prose -> tokenizer; the seed VLM SFT), and a real ``dagster-daemon`` turns the loop:
cycle 0's champion answers new images (out of process through Pipes), the right counts are
accepted (thumbnails in the asset metadata), the sensor starts cycle 1, which fine-tunes the
VLM on them, is evaluated on held-out images and decided on the hard end's accuracy.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/dagster/test_vision_cycles.py -s
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from flywheel.core.catalog import Catalog
from flywheel.core.shards import read_current
from flywheel.core.spec import load_spec
from flywheel.loop import cycles

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHAPES = (
    '[{"name": "shapes_easy", "kind": "visual_counting", "count": 48, "max_objects": 3}, '
    '{"name": "shapes_mixed", "kind": "visual_counting", "count": 16, "max_objects": 6, '
    '"seed": 8}]'
)
TINY = [
    "tokenizer.vocab_size=300",
    "tokenizer.max_docs=200",
    f"images.sources={SHAPES}",
    "sft.steps=150",
    "sft.micro_batch=8",
    "sft.lr=0.003",
    "sft.save_every=100",
    "vision.eval_examples=10",
    "vision.images_per_cycle=12",
    "vision.samples_per_image=2",
    "cycles.max_cycles=1",
    "cycles.seed_replay=20",
    "cycles.sensor_interval_s=1",
    "cycles.train.steps=4",
]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_two_vision_cycles_turn_through_the_sensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_file = tmp_path / "flywheel.yaml"
    shutil.copy(ROOT / "examples" / "vision" / "flywheel.yaml", spec_file)
    home = tmp_path / "dagster_home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    overrides = [arg for item in TINY for arg in ("--set", item)]
    run = subprocess.run(
        [str(BIN / "flywheel"), "run", "--spec", str(spec_file), "--timeout", "450", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=550,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "reached cycles.max_cycles" in run.stdout

    spec = load_spec(spec_file, TINY)
    generated = read_current(cycles.generations_root(spec, 0))
    assert generated.num_rows == 12 * 2 and "image_id" in generated.schema
    accepted = read_current(cycles.accepted_root(spec, 0)).read()
    assert accepted.height >= 1
    # cycle 1 trained on those answers, each with its image, and was decided on the hard end
    training = read_current(cycles.training_set_root(spec, 1)).read()
    answers = training.filter(pl.col("origin") == "generation")
    assert set(answers["generation_id"]) == set(accepted["generation_id"])
    decisions = Catalog.open(spec.catalog).decisions()
    assert [d.cycle for d in decisions] == [0, 1]
    assert {d.metric for d in decisions} == {"vision/hard/accuracy"}
    # what the UI shows: thumbnails of the accepted answers in the asset's metadata
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the instance flywheel run wrote to
    with dg.DagsterInstance.get() as instance:
        key = dg.AssetKey("accepted_generations")
        records = instance.fetch_materializations(key, limit=10).records
        previews = [r.asset_materialization.metadata["preview"].value for r in records]
    assert previews and all("data:image/png;base64," in p for p in previews)
    report_env = {**env, "FLYWHEEL_SPEC": str(spec_file)}
    report = subprocess.run(
        [str(BIN / "flywheel"), "report"], cwd=tmp_path, env=report_env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert "vision/hard/accuracy" in report.stdout, report.stdout + report.stderr
    print(report.stdout)
