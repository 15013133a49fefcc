"""Generation replicas on a local Ray cluster: the same completions as the in-process backend,
and a replica killed before its chunk costs a retry, not the run.

    .venv/bin/python -m pytest -q tests/loop/generate/test_replicas.py
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from flywheel.core.chat import render_prompts
from flywheel.core.settings.loop import GenerationSettings
from flywheel.data.arithmetic import arithmetic_examples
from flywheel.loop.generate.backends import TransformersBackend, open_backend
from flywheel.loop.generate.base import SamplingParams
from flywheel.loop.generate.replicas import RayReplicaBackend, chunk_params

ray = pytest.importorskip("ray")

PROMPTS = [e["prompt"] for e in arithmetic_examples(24, 20, seed=8)]
PARAMS = SamplingParams(
    n=3, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6, seed=5, greedy_first=True
)
BATCH = 4


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


def expected(checkpoint: Path) -> list[list]:
    """The in-process backend, chunk by chunk with each chunk's own seed."""
    local = TransformersBackend(checkpoint, BATCH)
    texts = render_prompts(local.tokenizer, PROMPTS)
    out = []
    for lo in range(0, len(texts), BATCH):
        chunk = texts[lo : lo + BATCH]
        out += local.complete(chunk, chunk_params(chunk, PARAMS))
    return out


def test_two_replicas_give_the_in_process_completions(chat_checkpoint: Path, local_ray) -> None:
    with RayReplicaBackend(TransformersBackend, chat_checkpoint, BATCH, replicas=2) as backend:
        assert len(set(backend.pids())) == 2  # two processes, each with its own model
        got = backend.generate(PROMPTS, PARAMS)
        assert backend.generate(PROMPTS, PARAMS) == got  # and again: seeded by chunk
    assert got == expected(chat_checkpoint)
    assert len({c.text for row in got for c in row[1:]}) > 1  # sampled, not all greedy


def test_a_killed_replica_costs_a_retry_not_the_run(chat_checkpoint: Path, local_ray) -> None:
    with RayReplicaBackend(TransformersBackend, chat_checkpoint, BATCH, replicas=2) as backend:
        os.kill(backend.pids()[0], signal.SIGKILL)
        got = backend.generate(PROMPTS, PARAMS)
        assert backend.retried >= 1 and len(backend.actors) == 1
    assert got == expected(chat_checkpoint)


def test_the_spec_selects_replicas_and_refuses_them_elsewhere(
    chat_checkpoint: Path, local_ray
) -> None:
    settings = GenerationSettings(replicas=2, batch_size=BATCH)
    with open_backend(settings, chat_checkpoint) as backend:
        assert isinstance(backend, RayReplicaBackend) and len(backend.actors) == 2
    with pytest.raises(ValueError, match="generation.replicas=2 runs copies of backend"):
        GenerationSettings(replicas=2, backend="openai")
