"""The one Dagster ``Definitions`` of this flywheel, built from the spec.

    flywheel ui [--spec S]                (dagster dev on the project's instance; make ui)
    flywheel run [--spec S] [--set k=v]   (the graph, then the flywheel; make demo)
    dg launch --job flywheel_job          (from the repository, a dg project)

Installed with the ``flywheel`` wheel as the top-level module ``definitions``, so a workspace
file anywhere loads it (``python_module: definitions``; ``flywheel init`` writes one). The
graph's shape comes from the spec (``flywheel.yaml`` in the working directory, or the file
``$FLYWHEEL_SPEC`` names, with ``$FLYWHEEL_SET``'s overrides): one raw asset per source, then
the curation stages (with ``images.sources``, one raw asset per image source and
``curated_images``), then the training plane (tokenizer, packed dataset, pre-training, SFT,
evaluation), then the flywheel's cycles (training set, retraining, eval, promotion,
generation, acceptance; with an ``agent`` section, trajectories and accepted
trajectories; one dynamic partition per cycle), its sensors and its schedule. A spec
error fails the load with the spec's own message, which the UI shows as the code location's
error.
"""

from __future__ import annotations

import dagster as dg

from assets import (
    FlywheelResource,
    build_agent_assets,
    build_cycle_assets,
    build_document_assets,
    build_document_checks,
    build_image_assets,
    build_training_assets,
)
from assets.pipes import LineMessageReader
from flywheel.core.spec import env_overrides, load_spec, spec_path
from jobs import JOBS
from sensors import build_schedules, build_sensors


def build_definitions(
    path: str | None = None, overrides: list[str] | None = None
) -> dg.Definitions:
    """``overrides`` unset: ``$FLYWHEEL_SET``'s, as ``flywheel run --set`` hands them down."""
    overrides = env_overrides() if overrides is None else overrides
    spec = load_spec(path, overrides)
    resource = FlywheelResource(spec_path=str(spec_path(path)), overrides=overrides)
    return dg.Definitions(
        assets=[
            *build_document_assets(spec),
            *build_image_assets(spec),
            *build_training_assets(spec),
            *build_cycle_assets(spec),
            *build_agent_assets(spec),
        ],
        asset_checks=build_document_checks(spec),
        jobs=JOBS,
        sensors=build_sensors(spec),
        schedules=build_schedules(spec),
        # Every job (and every materialization launched from the UI) runs its steps in its run
        # worker, one after another, not a process per step (Dagster's default): each heavy
        # stage (training, evaluation, generation, play) runs in a process of its own through
        # Pipes, data stages scale out inside the stage (engine: ray), and the rest are seconds
        # of polars. A process per step cost ~3 s of start and code loading each (11 steps up
        # to the seed model, 6-8 a cycle) and ran nothing in parallel that mattered: the graph
        # is a chain, and its stages share the gpu pool.
        executor=dg.in_process_executor,
        resources={
            "flywheel": resource,
            "pipes": dg.PipesSubprocessClient(message_reader=LineMessageReader()),
            **_ray_cluster(spec),
        },
    )


def _ray_cluster(spec) -> dict:  # noqa: ANN001
    """dagster-ray's resource of ``engine: ray`` (the ``ray`` extra: imported only then)."""
    if spec.engine != "ray":
        return {}
    from assets.ray_cluster import ray_resource

    return {"ray_cluster": ray_resource(spec)}


defs = build_definitions()
