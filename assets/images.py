"""The image plane: raw image-text sources -> curated images (filtered, deduplicated).

One ``raw_images_<source>`` asset per ``images.sources`` entry (an asset factory) and one
``curated_images`` asset reading them all; none without image sources. Each calls one
``flywheel.data.images.pipeline`` function; its ``deps`` are the inputs
``flywheel.core.products`` declares. The ``preview`` metadata is a markdown gallery of
thumbnails inlined as data: URIs, which the UI's markdown renderer shows as images.
"""

from __future__ import annotations

import dagster as dg

from assets._materialize import materialize_result
from assets.documents import CURATE, raw_source_asset
from assets.resources import FlywheelResource
from flywheel.core import products as P
from flywheel.core.spec import Spec
from flywheel.data.images import pipeline


def build_raw_image_asset(source, owners: list[str]) -> dg.AssetsDefinition:  # noqa: ANN001
    description = source.description or (
        f"Image-text records of the {source.kind} source {source.name!r}; images in the store."
    )
    key = dg.AssetKey(P.raw_images(source.name))
    return raw_source_asset(key, source, owners, description, pipeline.run_image_ingest)


def build_image_assets(spec: Spec) -> list[dg.AssetsDefinition]:
    if not spec.images.sources:
        return []
    raw = [build_raw_image_asset(s, spec.owners) for s in spec.images.sources]

    @dg.asset(
        name=P.CURATED_IMAGES,
        deps=P.deps(P.CURATED_IMAGES, spec),
        group_name=CURATE,
        kinds={"polars", "parquet"},
        owners=spec.owners,
    )
    def curated_images(flywheel: FlywheelResource) -> dg.MaterializeResult:
        """Image-text records past the image filters, exact and pHash duplicates removed."""
        live = flywheel.spec()
        inputs = P.resolve_inputs(live, P.CURATED_IMAGES)
        return materialize_result(pipeline.run_image_curation(live, inputs))

    return [*raw, curated_images]
