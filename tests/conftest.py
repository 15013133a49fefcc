"""Shared fixtures: small real corpora and specs written into a temporary directory."""

from __future__ import annotations

import json
import os
import pydoc_data.topics
import shutil
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on the 2-core machine; flywheel.train.launch gives a rank all
    # the cores it can see, which would run two launched trainings on four threads. The workers'
    # own torch keeps its threads (it is imported first); what they launch gets one core each.
    import torch  # noqa: F401

    os.environ.setdefault("OMP_NUM_THREADS", "1")

TOPICS = pydoc_data.topics.topics


def prose(n: int = 40) -> list[str]:
    """Real English prose: the longest Python documentation topics."""
    texts = sorted(TOPICS.values(), key=len, reverse=True)
    return [t for t in texts if len(t.split()) > 200][:n]


@pytest.fixture
def corpus_jsonl(tmp_path: Path) -> Path:
    """A JSONL corpus of real prose with planted exact and near duplicates and bad records."""
    docs = prose(30)
    rows = [{"id": f"doc{i}", "text": t} for i, t in enumerate(docs)]
    rows.append({"id": "exact0", "text": docs[0]})  # an exact copy
    words = docs[1].split()
    words[len(words) // 2] = "CHANGED"  # one word changed: a near duplicate
    rows.append({"id": "near1", "text": " ".join(words)})
    path = tmp_path / "corpus.jsonl"
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"id": "empty", "text": "   "}) + "\n")
    return path


# The training plane at toy size: every stage runs in seconds on 2 CPU cores.
TINY_TRAINING = """
        tokenizer: {vocab_size: 400}
        packing: {seq_len: 64, shard_rows: 256}
        model:
          config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                   num_attention_heads: 2, num_key_value_heads: 2}
        pretrain: {steps: 12, micro_batch: 4, warmup_steps: 2, save_every: 5, log_every: 2}
        sft:
          steps: 6
          micro_batch: 4
          warmup_steps: 1
          save_every: 3
          log_every: 1
          max_length: 64
          data: {kind: arithmetic, num_examples: 48}
        eval:
          perplexity_batches: 2
          micro_batch: 4
          tasks: [{name: arithmetic, kind: arithmetic, num_examples: 6, max_new_tokens: 4}]
"""


def write_spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "flywheel.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def small_spec(tmp_path: Path, corpus_jsonl: Path) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: test
        data_dir: data
        catalog: catalog.duckdb
        sources:
          - name: corpus
            kind: jsonl
            path: {corpus_jsonl.name}
        filters:
          gopher_quality:
            min_words: 20
        {TINY_TRAINING}
        """,
    )


# The flywheel at toy size: addition seed SFT, one cycle of a few prompts. The tiny model's
# answers are mostly wrong, so plumbing tests accept any non-empty answer (accept_nonempty).
TINY_FLYWHEEL = """
        sft:
          steps: 6
          micro_batch: 4
          warmup_steps: 1
          save_every: 3
          log_every: 1
          max_length: 64
          data: {kind: addition, num_examples: 48, min_digits: 1, max_digits: 2, width: 3}
        eval:
          perplexity_batches: 2
          micro_batch: 4
          tasks: [{name: addition, kind: addition, num_examples: 8, min_digits: 3,
                   max_digits: 3, width: 3, verifier: exact, max_new_tokens: 6}]
        generation:
          prompts: {kind: addition, num_prompts: 8, min_digits: 3, max_digits: 3, width: 3}
          samples_per_prompt: 2
          max_new_tokens: 6
        acceptance:
          verifier: {kind: python, function: "tests.conftest:accept_nonempty"}
        cycles:
          threshold_rows: 1
          max_cycles: 1
          patience: 5
          sensor_interval_s: 1
          gate: {metric: accuracy/addition}
          train: {steps: 4, warmup_steps: 0, save_every: 10}  # the rest is sft's
"""


def accept_nonempty(prompt: str, completion: str, answer: str | None) -> tuple[bool, str]:
    """A verifier for plumbing tests: any non-empty completion is accepted."""
    return bool(completion.strip()), "empty completion"


@pytest.fixture
def flywheel_spec(tmp_path: Path, corpus_jsonl: Path) -> Path:
    """The small corpus, the tiny training plane and one tiny flywheel cycle."""
    training = TINY_TRAINING.split("        sft:")[0]  # TINY_FLYWHEEL has its own sft/eval
    return write_spec(
        tmp_path,
        f"""
        name: test-flywheel
        data_dir: data
        catalog: catalog.duckdb
        sources:
          - name: corpus
            kind: jsonl
            path: {corpus_jsonl.name}
        filters:
          gopher_quality:
            min_words: 20
        {training}
        {TINY_FLYWHEEL}
        """,
    )


@pytest.fixture
def user_module(tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    """``write(stem, source) -> module name``: a module next to the test's spec (in
    ``tmp_path``, which is not on ``sys.path``), named uniquely so no earlier import is
    reused. Afterwards the modules and the verifier kinds they registered are forgotten."""
    from flywheel.loop.verifiers import VERIFIERS

    registered, names = dict(VERIFIERS), []

    def write(stem: str, source: str) -> str:
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)
    VERIFIERS.clear()
    VERIFIERS.update(registered)


def require_postgres() -> None:
    """Skip where PostgreSQL's server binaries are missing and cannot be installed here (not
    root, or no apt-get); where ``.ci/run`` would have installed them, fail instead, so a CI
    run never passes with the Postgres tests silently skipped."""
    from flywheel.project.postgres import PostgresError, binaries

    try:
        binaries()
    except PostgresError as exc:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(f"{exc} (.ci/run does: apt-get install postgresql)")
        pytest.skip(f"{exc}; it cannot be installed here (not root, or no apt-get)")


@pytest.fixture
def postgres_dir() -> Iterator[Path]:
    """Where a test's server lives: under a fresh private directory in /tmp, not in
    ``tmp_path``, whose parents pytest keeps private (0700, re-applied by every pytest session,
    even one started meanwhile) where the server's user could not enter them."""
    require_postgres()
    base = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    try:
        yield base / "pg"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_server(postgres_dir: Path) -> Iterator[Any]:
    """A PostgreSQL server started by ``flywheel.project.postgres``, stopped afterwards."""
    from flywheel.project import postgres

    server = postgres.start(postgres_dir)
    try:
        yield server
    finally:
        postgres.stop(server.directory)
