"""Turning a flywheel stage result into what Dagster records: metadata and a data version."""

from __future__ import annotations

import dagster as dg

from flywheel.data.stages import StageResult


def materialize_result(result: StageResult) -> dg.MaterializeResult:
    metadata: dict[str, object] = dict(result.metadata)
    metadata["path"] = dg.MetadataValue.path(str(result.shardset.path))
    metadata["preview"] = dg.MetadataValue.md(result.preview_markdown)
    return dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(result.shardset.version)
    )
