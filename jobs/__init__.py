"""Jobs: the graph up to the seed model, the document plane, the training plane, and one
flywheel cycle (partitioned by cycle; the sensor and the schedule launch it)."""

from __future__ import annotations

import dagster as dg

from assets.cycles import FLYWHEEL, cycles_partitions

flywheel_job = dg.define_asset_job(
    "flywheel_job",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups(FLYWHEEL),
    description="Materialize the graph from raw corpora to the seed SFT model and its eval; "
    "the flywheel's cycles then run as cycle_job, started by its sensor.",
)

cycle_job = dg.define_asset_job(
    "cycle_job",
    selection=dg.AssetSelection.groups(FLYWHEEL),
    partitions_def=cycles_partitions,
    description="One flywheel cycle: training set -> retrain -> eval -> promotion gate -> "
    "generation -> acceptance.",
)

data_job = dg.define_asset_job(
    "data_job",
    selection=dg.AssetSelection.groups("ingest", "curate"),
    description="Raw corpora -> filtered documents -> deduplicated shards.",
)

train_job = dg.define_asset_job(
    "train_job",
    selection=dg.AssetSelection.groups("train", "evaluate"),
    description="Tokenizer -> packed dataset -> pre-training -> SFT -> evaluation.",
)

JOBS = [flywheel_job, data_job, train_job, cycle_job]
