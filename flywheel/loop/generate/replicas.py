"""Data-parallel generation on a Ray cluster: replicas of the champion as Ray actors.

    python -m flywheel.loop.generate --spec flywheel.yaml --cycle 1 --checkpoint DIR \
        --set generation.replicas=2              # RAY_ADDRESS=host:port joins a cluster
    python bench/generation_replicas.py          # completions/s, 2 replicas vs 1

With ``generation.replicas`` > 1 (backend ``transformers``), each replica is a Ray actor
that loads the checkpoint once and serves chunks of rendered prompts with the in-process
backend. Ray places the actors on the cluster ``RAY_ADDRESS`` names (Ray's own convention;
``ray.address`` in the spec sets it), or starts a local one. A replica asks Ray for
``cpus_per_replica`` CPUs and runs torch on that many threads, so replicas never contend.

Requests are spread by pulling: the prompts are cut into fixed chunks of ``batch_size``,
every replica takes the next chunk as soon as it is free, and a chunk whose replica died
(its node lost, the process killed) goes back to the queue for the others, so one lost
replica costs one chunk's retry, never the run. Only when every replica is gone does the
call fail, naming the last error.

Each chunk is generated with its own seed, derived from the sampling seed and the chunk's
first prompt (``base.prompt_seed``), so the result does not depend on which replica served
a chunk, how often it was retried, or how many replicas there are: it equals the in-process
backend run chunk by chunk with those seeds (tested). Ray is imported here only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from flywheel.core.chat import Messages, render_prompts
from flywheel.loop.generate.base import Closing, Completion, SamplingParams, prompt_seed

log = logging.getLogger(__name__)


class _Replica:
    """One copy of the model in a Ray actor process (the in-process backend inside)."""

    def __init__(self, make: Callable, checkpoint_dir: str, batch_size: int, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.backend = make(Path(checkpoint_dir), batch_size)

    def complete(self, texts: list[str], params: SamplingParams) -> list[list[Completion]]:
        return self.backend.complete(texts, params)

    def pid(self) -> int:
        return os.getpid()


def chunk_params(texts: list[str], params: SamplingParams) -> SamplingParams:
    """The sampling of one chunk: its own seed, from the run's seed and its first prompt."""
    return replace(params, seed=prompt_seed(params.seed, texts[0]))


class RayReplicaBackend(Closing):
    """``replicas`` Ray actors, each holding the checkpoint in ``make(checkpoint_dir,
    batch_size)`` (the in-process transformers backend); free replicas pull the chunks."""

    name = "transformers"

    def __init__(
        self,
        make: Callable,
        checkpoint_dir: Path,
        batch_size: int,
        replicas: int,
        cpus_per_replica: int = 1,
        address: str | None = None,
    ):
        import ray

        from flywheel.train.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(checkpoint_dir)
        self.batch_size = batch_size
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            # RAY_ADDRESS (or ``address``) joins a cluster; neither starts a local one.
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        actor = ray.remote(num_cpus=cpus_per_replica)(_Replica)
        where = str(checkpoint_dir)
        self.actors = [
            actor.remote(make, where, batch_size, cpus_per_replica) for _ in range(replicas)
        ]
        self.retried = 0  # chunks served again after their replica died

    def generate(
        self, prompts: list[Messages | str], params: SamplingParams
    ) -> list[list[Completion]]:
        return self.complete(render_prompts(self.tokenizer, prompts), params)

    def complete(self, texts: list[str], params: SamplingParams) -> list[list[Completion]]:
        import ray
        from ray.exceptions import RayActorError

        chunks = [texts[lo : lo + self.batch_size] for lo in range(0, len(texts), self.batch_size)]
        todo = list(range(len(chunks)))[::-1]  # pop() takes the first chunk first
        done: dict[int, list[list[Completion]]] = {}
        running: dict[Any, tuple[int, Any]] = {}  # future -> (chunk, actor)
        idle = list(self.actors)
        started = time.monotonic()
        while todo or running:
            while todo and idle:
                i, actor = todo.pop(), idle.pop()
                future = actor.complete.remote(chunks[i], chunk_params(chunks[i], params))
                running[future] = (i, actor)
            if not running:
                raise RuntimeError(f"every generation replica died; {len(todo)} chunks left")
            (future,), _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(future)
            try:
                done[i] = ray.get(future)
                idle.append(actor)
            except RayActorError as exc:  # the replica is gone: its chunk goes to another
                log.warning("generation replica died (%s); chunk %d is retried", exc, i)
                self.actors.remove(actor)
                todo.append(i)
                self.retried += 1
        log.info(
            "%d prompts in %d chunks on %d replicas in %.1fs (%d retried)",
            len(texts), len(chunks), len(self.actors), time.monotonic() - started, self.retried,
        )  # fmt: skip
        return [row for i in range(len(chunks)) for row in done[i]]

    def pids(self) -> list[int]:
        """The replicas' process ids (to watch or kill one)."""
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.started_ray:
            ray.shutdown()
