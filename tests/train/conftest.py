"""Real inputs for pre-training tests: prose -> deduplicated shards -> tokenizer -> packed rows.

The pipeline's own builders (``flywheel.train.tokenizer``, ``flywheel.train.packing``) turn the
Python documentation topics into a 400-token BPE vocabulary and ~3,600 packed rows of 64 tokens in
well under a second; a 2-layer, 32-wide Llama then trains 60 steps in about one second.
Attention dropout is on, so a resumed run matches only if the RNG state is restored too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flywheel.core import products as P
from flywheel.core.spec import load_spec
from flywheel.train import launch
from tests.conftest import prose

PRODUCT = "pretrained_checkpoint"
TINY_SPEC = """
    name: pretrain-test
    data_dir: data
    catalog: catalog.duckdb
    tokenizer: {vocab_size: 400}
    packing: {seq_len: 64, shard_rows: 256, heldout_fraction: 0.1}
    model:
      config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
               num_attention_heads: 2, num_key_value_heads: 2, attention_dropout: 0.1}
    pretrain: {steps: 60, micro_batch: 4, lr: 0.003, warmup_steps: 5, save_every: 10,
               keep_checkpoints: 10, log_every: 10}
"""


def build_inputs(directory: Path, spec_text: str = TINY_SPEC) -> Path:
    """Write a spec into ``directory`` and materialize what pre-training reads; its path."""
    from flywheel.core.shards import ShardWriter
    from flywheel.train.packing import build_tokenized_dataset
    from flywheel.train.tokenizer import build_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "flywheel.yaml"
    path.write_text(textwrap.dedent(spec_text))
    spec = load_spec(path)
    texts = prose(40)
    with ShardWriter(spec.product_dir("deduplicated_shards")) as writer:
        writer.write(pl.DataFrame({"id": [f"doc{i}" for i in range(len(texts))], "text": texts}))
        writer.commit()
    build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    build_tokenized_dataset(spec, P.resolve_inputs(spec, P.TOKENIZED))
    return path


def entry_argv(spec_path: Path, *overrides: str, launcher: bool = True) -> list[str]:
    """``accelerate launch`` as the asset runs it (launch.command), or the bare module."""
    if not launcher:
        sets = [a for o in overrides for a in ("--set", o)]
        return [sys.executable, "-m", "flywheel.train.pretrain", "--spec", str(spec_path), *sets]
    spec = load_spec(spec_path, list(overrides))
    return launch.command("pretrain", spec, launch.write_run_spec(spec, "pretrain"))


def entry_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def run_entry(
    spec_path: Path, *overrides: str, launcher: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the pre-training entry to completion; fail the test with its log if it fails."""
    proc = subprocess.run(
        entry_argv(spec_path, *overrides, launcher=launcher),
        cwd=spec_path.parent,
        env=env or entry_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def work_dir(data_dir: Path) -> Path:
    (work,) = (data_dir / PRODUCT / "work").iterdir()  # one fingerprint per test directory
    return work


def done_record(data_dir: Path) -> dict[str, Any]:
    return json.loads((work_dir(data_dir) / "done.json").read_text())


@pytest.fixture
def fresh_accelerator() -> Iterator[Any]:
    """A factory of in-process Accelerators; accelerate's singletons are reset around it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    def make(grad_accum: int = 1) -> Any:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        return Accelerator(cpu=True, gradient_accumulation_steps=grad_accum)

    yield make
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def packed_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spec whose tokenizer and tokenized dataset are materialized (shared, read-only)."""
    return build_inputs(tmp_path_factory.mktemp("packed"))
