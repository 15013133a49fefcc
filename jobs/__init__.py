"""Jobs: the whole flywheel graph, the document plane, and the training plane."""

from __future__ import annotations

import dagster as dg

flywheel_job = dg.define_asset_job(
    "flywheel_job",
    selection=dg.AssetSelection.all(),
    description="Materialize the whole flywheel graph, end to end.",
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

JOBS = [flywheel_job, data_job, train_job]
