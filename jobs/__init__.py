"""Jobs: the whole flywheel graph, and the document plane on its own."""

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

JOBS = [flywheel_job, data_job]
