"""Great Expectations suites as Dagster asset checks on every document product.

A failing check is blocking (unless the spec says otherwise): downstream assets in the same run
do not materialize, and the check's metadata says which expectation failed on how many rows.
"""

from __future__ import annotations

import dagster as dg

from assets.resources import FlywheelResource
from flywheel.core import products as P
from flywheel.core.spec import Spec
from flywheel.data import stages as pipeline


def build_document_check(
    asset_key: dg.AssetKey, product: str, blocking: bool
) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key,
        name="gx_document_suite",
        blocking=blocking,
        description=f"Great Expectations suite for {product}: ids non-null and unique, text "
        "length within bounds, at least min_rows rows"
        + ("; no exact duplicates left." if product == P.DEDUPLICATED else "."),
    )
    def _check(flywheel: FlywheelResource) -> dg.AssetCheckResult:
        report = pipeline.check_product(flywheel.spec(), product)
        metadata = {
            "rows": report.rows,
            "failed_expectations": len(report.failures),
            "report": dg.MetadataValue.md("```\n" + report.summary() + "\n```"),
        }
        for outcome in report.failures:
            key = f"{outcome.expectation}:{outcome.column or 'table'}"
            metadata[key] = f"{outcome.unexpected} of {outcome.total} rows failed"
        return dg.AssetCheckResult(
            passed=report.success,
            metadata=metadata,
            description=report.summary().splitlines()[0]
            + "".join("; " + o.describe() for o in report.failures),
        )

    return _check


def build_document_checks(spec: Spec) -> list[dg.AssetChecksDefinition]:
    if not spec.validation.enabled:
        return []
    blocking = spec.validation.blocking
    products = [*(P.raw(s.name) for s in spec.sources), P.FILTERED, P.DEDUPLICATED]
    return [build_document_check(dg.AssetKey(p), p, blocking) for p in products]
