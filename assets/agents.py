"""Agent trajectories of each flywheel cycle (only when the spec has an ``agent`` section).

    promoted_model -> trajectories -> accepted_trajectories

Same dynamic partition (one per cycle) and group as the loop, so ``cycle_job`` plays the
episodes after promotion. Playing runs out of process through Pipes
(``flywheel.loop.agents.play``), in the ``gpu`` pool like generation; acceptance is plain
Parquet work. The logic is ``flywheel.loop.agents.cycle``.
"""

import dagster as dg
from dagster import AssetExecutionContext, PipesSubprocessClient

from assets.cycles import _asset, _cycle
from assets.resources import FlywheelResource
from assets.training import GPU_POOL, launch_stage
from flywheel.core import products as P
from flywheel.core.spec import Spec


def _result(result) -> dg.MaterializeResult:  # noqa: ANN001 - flywheel.core.shards.Built
    metadata: dict = {**result.metadata, "reused": result.reused}
    metadata["path"] = dg.MetadataValue.path(str(result.path))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(result.version))


def build_agent_assets(spec: Spec) -> list[dg.AssetsDefinition]:
    """The two agent assets, or none when the spec has no ``agent`` section."""
    if spec.agent is None:
        return []
    owners = spec.owners

    @_asset(P.TRAJECTORIES, P.deps(P.TRAJECTORIES, spec), {"pytorch"}, GPU_POOL, owners=owners)
    def trajectories(  # noqa: ANN202
        context: AssetExecutionContext, flywheel: FlywheelResource, pipes: PipesSubprocessClient
    ):
        """The champion's multi-turn episodes in the agent's environment (tokens, rewards)."""
        from flywheel.loop.cycles import cycle_inputs

        handed = cycle_inputs(flywheel.spec(), P.TRAJECTORIES, _cycle(context), deep=False)
        extra = ["--cycle", context.partition_key]
        return launch_stage("play", context, flywheel, pipes, extra, P.versions(handed))

    @_asset(
        P.ACCEPTED_TRAJECTORIES,
        P.deps(P.ACCEPTED_TRAJECTORIES, spec),
        {"parquet"},
        owners=owners,
    )
    def accepted_trajectories(context: AssetExecutionContext, flywheel: FlywheelResource):  # noqa: ANN202
        """Trajectories that passed acceptance (rejected ones kept with reasons)."""
        from flywheel.loop.agents.cycle import build_accepted_trajectories
        from flywheel.loop.cycles import cycle_inputs

        spec, cycle = flywheel.spec(), _cycle(context)
        handed = cycle_inputs(spec, P.ACCEPTED_TRAJECTORIES, cycle)
        return _result(build_accepted_trajectories(spec, cycle, handed))

    return [trajectories, accepted_trajectories]
