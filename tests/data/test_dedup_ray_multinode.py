"""The Ray engine on three Ray nodes of this machine survives losing a worker node mid-run.

    .venv/bin/python -m pytest -q tests/data/test_dedup_ray_multinode.py

Ray's own multi-node harness (``ray.cluster_utils.Cluster``): a head without CPUs (so every
task runs on a worker) and two one-CPU workers, each a raylet with its own object store. While
the dedup runs, one worker is killed without warning: the tasks it was running and the blocks
it held are lost, Ray retries the tasks and rebuilds the lost objects from lineage on the
surviving node, and the decisions are still exactly the local engine's (nothing lost, nothing
duplicated).
"""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from flywheel.core.settings.dedup import DedupSettings
from flywheel.core.settings.engine import RaySettings
from flywheel.data.dedup import deduplicate
from tests.data.dedup.conftest import planted_corpus

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

STORE = 120 << 20  # bytes of object store per node: plenty for ~2 MB of corpus


@pytest.fixture
def cluster():
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False},
    )
    workers = [cluster.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def running_dedup_task(node) -> bool:
    """Whether a worker of ``node`` is executing a dedup task now (Ray titles a worker
    process ``ray::<task name>`` while it runs one)."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    for worker in raylet.children(recursive=True):
        try:
            if worker.cmdline()[:1] and worker.cmdline()[0].startswith("ray::dedup."):
                return True
        except psutil.Error:  # a worker that ended while we looked
            pass
    return False


def test_a_killed_worker_node_loses_nothing(cluster) -> None:
    from flywheel.data.dedup.ray_engine import deduplicate_ray

    harness, workers = cluster
    ids, texts = planted_corpus(variants=900, seed=3)
    settings = DedupSettings()
    result: dict = {}

    def run() -> None:
        try:
            result["ray"] = deduplicate_ray(ids, texts, settings, RaySettings(partitions=8), 40)
        except Exception as e:  # re-raised below, in the test's thread
            result["error"] = e

    job = threading.Thread(target=run)
    job.start()
    # kill when the node is running a task (its first is one of the first stage's: most of
    # the run is still ahead); a time would race with the machine's speed (~2 s unharmed)
    deadline = time.monotonic() + 120
    while not running_dedup_task(workers[0]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert time.monotonic() < deadline, "no dedup task ever ran on the worker node"
    assert job.is_alive(), "the run ended before a node could be killed: make it longer"
    harness.remove_node(workers[0], allow_graceful=False)  # SIGKILL of its raylet and workers
    job.join(timeout=240)
    assert not job.is_alive(), "the run did not finish after the kill"
    if "error" in result:
        raise result["error"]
    local = deduplicate(ids, texts, settings)
    assert result["ray"].keep.tolist() == local.keep.tolist()
    assert result["ray"].duplicates.to_dicts() == local.duplicates.to_dicts()
    assert local.stats["removed"] > 300
