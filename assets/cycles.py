"""The closed loop, one dynamic partition per flywheel cycle (group ``flywheel``).

    training_set -> cycle_checkpoint -> cycle_eval_scores -> promoted_model
                 -> synthetic_generations -> accepted_generations

Cycle 0 adopts the seed SFT checkpoint; cycle c >= 1 fine-tunes the champion on cycle c-1's
training set plus the generations accepted since. ``training_set`` cannot declare a
dependency on the previous cycle's ``accepted_generations`` (that would be a cycle in the
graph, and a dynamic partition cannot depend on itself), so
``flywheel.loop.cycles.cycle_inputs`` resolves the earlier cycles' products at run time, each
asset hands them to its stage, and the stage records their versions as its ``inputs``; the
accepted-data sensor closes the loop. Retraining, evaluation and generation run out of process
through Pipes in the ``gpu`` pool.
"""

from typing import TYPE_CHECKING

import dagster as dg
from dagster import AssetExecutionContext, PipesSubprocessClient

from assets.resources import FlywheelResource
from assets.training import GPU_POOL, launch_stage
from flywheel.core import products as P
from flywheel.core.spec import Spec

if TYPE_CHECKING:  # the flywheel modules are imported when an asset runs, not at load
    from flywheel.loop.accept import CheckOutcome

FLYWHEEL = "flywheel"
cycles_partitions = dg.DynamicPartitionsDefinition(name="cycles")


def _cycle(context: AssetExecutionContext) -> int:
    return int(context.partition_key)


def _asset(name: str, deps: list, kinds: set[str], pool: str | None = None, **kw):  # noqa: ANN201
    return dg.asset(
        name=name,
        deps=deps,
        partitions_def=cycles_partitions,
        group_name=FLYWHEEL,
        kinds=kinds,
        pool=pool,
        **kw,
    )


CHAMPION_CHECKS = [
    ("champion_verified", "The champion's files match its sha256 manifest."),
    ("champion_is_best", "No promoted candidate scored better than the champion."),
]
ACCEPTED_CHECKS = [
    ("not_empty", "At least one generation was accepted."),
    ("no_eval_prompts", "No accepted prompt is an evaluation prompt."),
    ("no_duplicates", "No accepted (prompt, response) repeats, in this cycle or earlier."),
]


def _checks(asset: str, specs: list[tuple[str, str]]) -> list[dg.AssetCheckSpec]:
    """Blocking checks: a failure stops the assets after this one in the run."""
    return [dg.AssetCheckSpec(n, asset=asset, blocking=True, description=d) for n, d in specs]


def _check_results(outcomes: list["CheckOutcome"]) -> list[dg.AssetCheckResult]:
    """flywheel's guard outcomes as Dagster asset check results."""
    return [
        dg.AssetCheckResult(
            check_name=o.name, passed=o.passed, description=o.description, metadata=o.metadata
        )
        for o in outcomes
    ]


def accepted_metadata(result) -> dict:  # noqa: ANN001 - flywheel.core.shards.Built
    """What the UI shows (and plots per cycle) for one cycle's accepted generations."""
    metadata: dict = dict(result.metadata)
    metadata["accepted_rows"] = result.manifest["accepted"]  # what the sensor sums
    if "preview" in metadata:  # the vision loop's thumbnails of accepted answers
        metadata["preview"] = dg.MetadataValue.md(metadata["preview"])
    metadata["path"] = dg.MetadataValue.path(str(result.path))
    return metadata


def build_cycle_assets(spec: Spec) -> list[dg.AssetsDefinition]:
    owners = spec.owners

    def deps(product: str) -> list[str]:  # the declaration is flywheel.core.products'
        return P.deps(product, spec)

    @_asset(P.TRAINING_SET, deps(P.TRAINING_SET), {"parquet"}, owners=owners)
    def training_set(context: AssetExecutionContext, flywheel: FlywheelResource):  # noqa: ANN202
        """The cycle's SFT data: the previous cycle's set plus newly accepted generations."""
        from flywheel.loop.cycles import NothingToTrain, build_training_set, cycle_inputs

        spec, cycle = flywheel.spec(), _cycle(context)
        try:
            shards = build_training_set(spec, cycle, cycle_inputs(spec, P.TRAINING_SET, cycle))
        except NothingToTrain as exc:
            raise dg.Failure(description=str(exc)) from None
        m = shards.manifest
        keys = ["rows", "new_rows", "seed_rows", "generation_rows", "parent_cycle"]
        metadata = {k: m[k] for k in keys if m.get(k) is not None}
        metadata["parent_training_set"] = str(m.get("parent_version"))
        metadata["accepted_versions"] = dg.MetadataValue.json(m.get("accepted_versions", {}))
        metadata["build_changes"] = "; ".join(m.get("build_changes", []))  # since the last
        metadata["path"] = dg.MetadataValue.path(str(shards.path))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(shards.version))

    @_asset(
        P.CYCLE_CHECKPOINT, deps(P.CYCLE_CHECKPOINT), {"pytorch", "trl"}, GPU_POOL, owners=owners
    )
    def cycle_checkpoint(
        context: AssetExecutionContext, flywheel: FlywheelResource, pipes: PipesSubprocessClient
    ) -> dg.MaterializeResult:
        """The cycle's candidate: the champion fine-tuned on the cycle's training set."""
        from flywheel.loop.cycle_keys import check_seed_model
        from flywheel.loop.cycles import cycle_inputs
        from flywheel.loop.promotion import candidate

        cycle, spec = _cycle(context), flywheel.spec()
        if cycle == 0:  # the seed SFT model is cycle 0's candidate: nothing to train
            seed = check_seed_model(spec, candidate(spec, 0))  # trained on today's seed data
            metadata = {"checkpoint": dg.MetadataValue.path(str(seed.path)), "adopted": True}
            return dg.MaterializeResult(
                metadata=metadata, data_version=dg.DataVersion(seed.version)
            )
        # The champion cycle c-1 left, not "the champion now": reruns stay put.
        handed = cycle_inputs(spec, P.CYCLE_CHECKPOINT, cycle, deep=False)
        extra = ["--cycle", str(cycle)]
        return launch_stage("retrain", context, flywheel, pipes, extra, P.versions(handed))

    @_asset(P.CYCLE_EVAL, deps(P.CYCLE_EVAL), {"pytorch"}, GPU_POOL, owners=owners)
    def cycle_eval_scores(
        context: AssetExecutionContext, flywheel: FlywheelResource, pipes: PipesSubprocessClient
    ) -> dg.MaterializeResult:
        """Held-out perplexity and task accuracy of the cycle's candidate (plotted per cycle)."""
        from flywheel.loop.cycles import cycle_inputs

        handed = cycle_inputs(flywheel.spec(), P.CYCLE_EVAL, _cycle(context), deep=False)
        extra = ["--cycle", context.partition_key]
        return launch_stage("eval", context, flywheel, pipes, extra, P.versions(handed))

    @_asset(
        P.PROMOTED,
        deps(P.PROMOTED),
        {"huggingface"},
        owners=owners,
        check_specs=_checks(P.PROMOTED, CHAMPION_CHECKS),
    )
    def promoted_model(context: AssetExecutionContext, flywheel: FlywheelResource):  # noqa: ANN202
        """The champion after this cycle: the candidate only if it beat the champion."""
        from flywheel.loop.cycles import cycle_inputs
        from flywheel.loop.promotion import champion_checks, promote

        spec, cycle = flywheel.spec(), _cycle(context)
        d = promote(spec, cycle, cycle_inputs(spec, P.PROMOTED, cycle))
        context.log.info(f"cycle {d.cycle}: promoted={d.promoted} ({d.reason})")
        champion = d.candidate if d.promoted else d.champion_before
        metadata = {
            "promoted": d.promoted,
            "reason": d.reason,
            "champion": champion,
            "candidate": d.candidate,
            d.metric: d.value,
            "champion_value_before": d.champion_value,
        }
        metadata = {k: v for k, v in metadata.items() if v is not None}
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=dg.DataVersion(champion),
            check_results=_check_results(champion_checks(spec)),
        )

    @_asset(P.GENERATIONS, deps(P.GENERATIONS), {"pytorch"}, GPU_POOL, owners=owners)
    def synthetic_generations(
        context: AssetExecutionContext, flywheel: FlywheelResource, pipes: PipesSubprocessClient
    ) -> dg.MaterializeResult:
        """k sampled completions per prompt from the champion, with how each was made."""
        from flywheel.loop.cycles import cycle_inputs

        handed = cycle_inputs(flywheel.spec(), P.GENERATIONS, _cycle(context), deep=False)
        extra = ["--cycle", context.partition_key]
        return launch_stage("generate", context, flywheel, pipes, extra, P.versions(handed))

    @_asset(
        P.ACCEPTED,
        deps(P.ACCEPTED),
        {"parquet"},
        owners=owners,
        check_specs=_checks(P.ACCEPTED, ACCEPTED_CHECKS),
    )
    def accepted_generations(context: AssetExecutionContext, flywheel: FlywheelResource):  # noqa: ANN202
        """Verified, filtered, deduplicated generations (rejected ones kept with reasons)."""
        from flywheel.loop.accept import accept_generations, accepted_checks
        from flywheel.loop.cycles import cycle_inputs

        spec, cycle = flywheel.spec(), _cycle(context)
        if spec.vision is not None:  # a VLM's answers: judged per image, thumbnails shown
            from flywheel.loop.vision.accept import accept_answers as accept_generations
            from flywheel.loop.vision.accept import answer_checks as accepted_checks
        result = accept_generations(spec, cycle, cycle_inputs(spec, P.ACCEPTED, cycle))
        return dg.MaterializeResult(
            metadata=accepted_metadata(result),
            data_version=dg.DataVersion(result.version),
            check_results=_check_results(accepted_checks(spec, cycle)),
        )

    assets = [training_set, cycle_checkpoint, cycle_eval_scores, promoted_model]
    if spec.agent is None:  # an agent's loop trains on its trajectories instead
        assets += [synthetic_generations, accepted_generations]
    return assets
