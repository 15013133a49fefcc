"""The Ray cluster of ``engine: ray``, as dagster-ray's resource (``ray_cluster``).

Imported by ``definitions.py`` only for a spec with ``engine: ray``: dagster-ray and Ray are
the ``ray`` extra, which an install for the local engine does not have.
"""

from __future__ import annotations

from dagster_ray import Lifecycle, RayResource  # imports no Ray: the resource connects lazily

from flywheel.core.spec import Spec


class FlywheelRay(RayResource):
    """The Ray cluster of ``engine: ray``, through dagster-ray: the document assets' step
    joins ``ray.address`` (or starts a local cluster with ``ray.num_cpus``) before the stage
    runs, and dagster-ray logs the connection in the asset's run. Only ``engine: ray``
    definitions have it (``definitions.py``), so Ray is never imported otherwise."""

    address: str | None = None

    @property
    def host(self) -> str:
        return (self.address or "127.0.0.1").removeprefix("ray://").split(":")[0]

    @property
    def ray_address(self) -> str:  # type: ignore[override]
        # "local", not None: ray.init(address=None) joins whatever cluster Ray's
        # ray_current_cluster file names (the last `ray start`, or a test's Cluster) and then
        # refuses num_cpus; "local" always starts one. RAY_ADDRESS still wins over either.
        return self.address or "local"

    @property
    def name(self) -> str:
        return f"Ray at {self.address}" if self.address else "a local Ray"

    @property
    def created(self) -> bool:
        return True  # a cluster to join exists already, or ray.init starts one

    @property
    def ready(self) -> bool:
        return True


def ray_resource(spec: Spec) -> FlywheelRay:
    """The spec's cluster, joined by the document steps of ``engine: ray``."""
    options = {} if spec.ray.address else {"include_dashboard": False}
    if spec.ray.num_cpus:
        options["num_cpus"] = spec.ray.num_cpus
    return FlywheelRay(
        address=spec.ray.address,
        ray_init_options=options,
        lifecycle=Lifecycle(connect=True),  # create and wait: no-ops for an existing cluster
    )
