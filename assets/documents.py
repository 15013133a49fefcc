"""The document plane: raw corpora -> quality-filtered documents -> deduplicated shards.

One ``raw_<source>`` asset per source declared in the spec (an asset factory); the spec's
other sections parameterize the rest. With ``engine: ray`` the ingest, filter and dedup
steps join the spec's Ray cluster through dagster-ray's resource (``ray_cluster``) and the
stages run their work there; their logs and metadata reach the asset as with the local engine. Each
asset calls one ``flywheel.data.stages`` function, handing it the inputs
``flywheel.core.products`` declares; its ``deps`` are those same inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from assets._materialize import materialize_result
from assets.resources import FlywheelResource
from flywheel.core import products as P
from flywheel.core.spec import Spec
from flywheel.data import stages as pipeline

INGEST, CURATE = "ingest", "curate"


def raw_asset_key(source_name: str) -> dg.AssetKey:
    return dg.AssetKey(P.raw(source_name))


def raw_source_asset(
    key: dg.AssetKey,
    source,  # noqa: ANN001
    owners: list[str],
    description: str,
    ingest: Callable[[Spec, str], dict],
    resources: frozenset[str] = frozenset({"flywheel"}),
) -> dg.AssetsDefinition:
    """The ingest asset of one source (text or image): ``ingest(spec, source name)``'s result
    (``resources``: ``ray_cluster`` too where the ingest runs on Ray)."""

    @dg.asset(
        key=key,
        group_name=INGEST,
        kinds={"python", "parquet"},
        owners=owners,
        description=description,
        tags={"source_kind": source.kind},
        required_resource_keys=set(resources),
    )
    def _raw(context) -> dg.MaterializeResult:  # noqa: ANN001 (see build_document_assets)
        flywheel: FlywheelResource = context.resources.flywheel
        return materialize_result(ingest(flywheel.spec(), source.name))

    return _raw


def build_raw_asset(
    source,  # noqa: ANN001
    owners: list[str],
    resources: frozenset[str] = frozenset({"flywheel"}),
) -> dg.AssetsDefinition:
    description = (
        source.description or f"Raw documents of the {source.kind} source {source.name!r}."
    )
    return raw_source_asset(
        raw_asset_key(source.name), source, owners, description, pipeline.run_ingest, resources
    )


def build_document_assets(spec: Spec) -> list[dg.AssetsDefinition]:
    # The Ray cluster is a resource of these steps only with engine: ray (dagster-ray's
    # resource starts or joins it when a step starts): the keys are chosen here, so the steps
    # take a bare context (Dagster refuses a string annotation of it, which __future__ makes).
    # The built-in python_env source is read where the step runs, so it needs no cluster.
    resources = frozenset({"flywheel", "ray_cluster"} if spec.engine == "ray" else {"flywheel"})
    local = frozenset({"flywheel"})
    raw = [
        build_raw_asset(s, spec.owners, local if s.kind == "python_env" else resources)
        for s in spec.sources
    ]

    @dg.asset(
        name=P.FILTERED,
        deps=P.deps(P.FILTERED, spec),
        group_name=CURATE,
        kinds={"polars", "parquet"},
        owners=spec.owners,
        required_resource_keys=resources,
    )
    def filtered_documents(context) -> dg.MaterializeResult:  # noqa: ANN001 (see below)
        """Documents that passed the heuristic quality filters; drops are kept with reasons."""
        live = context.resources.flywheel.spec()
        return materialize_result(pipeline.run_filters(live, P.resolve_inputs(live, P.FILTERED)))

    @dg.asset(
        name=P.DEDUPLICATED,
        deps=P.deps(P.DEDUPLICATED, spec),
        group_name=CURATE,
        kinds={"duckdb", "parquet"},
        owners=spec.owners,
        required_resource_keys=resources,
    )
    def deduplicated_shards(context) -> dg.MaterializeResult:  # noqa: ANN001 (see below)
        """Filtered documents with exact and MinHash near-duplicates removed, incrementally."""
        live = context.resources.flywheel.spec()
        return materialize_result(pipeline.run_dedup(live, P.resolve_inputs(live, P.DEDUPLICATED)))

    return [*raw, filtered_documents, deduplicated_shards]
