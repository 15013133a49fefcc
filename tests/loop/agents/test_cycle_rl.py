"""An agent cycle's GRPO stage (``cycles.method: grpo``) from a spec, on a tiny Llama: the
cycle publishes a checkpoint that TRL trained on the environment's own training episodes,
with the agent's system prompt, and its metadata says so; settings GRPO cannot run are
refused before anything trains.

    python -m pytest -q tests/loop/agents/test_cycle_rl.py
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest

from flywheel.core import artifacts
from flywheel.core.report import Reporter
from flywheel.core.shards import ShardSet, ShardWriter
from flywheel.core.spec import Spec, load_spec

# The environment's module must hold its episode functions (agent_environment reads them there)
from flywheel.envs.guess import NumberGuess, held_out_episodes, train_episodes
from flywheel.loop.agents.cycle import episode_seed
from flywheel.loop.agents.cycle_rl import POOL
from flywheel.loop.cycles import checkpoint_root, training_set_root
from flywheel.loop.retrain import retrain_inputs, run_retrain
from tests.conftest import write_spec
from tests.loop.eval.conftest import TINY_LLAMA

__all__ = ["held_out_episodes", "train_episodes"]

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """
name: grpo-cycle
data_dir: data
catalog: catalog.duckdb
environments: [{name: guess, class_path: "tests.loop.agents.test_cycle_rl:RecordedGuess",
                settings: {min_n: 2, max_n: 16, held_out: 4}}]
agent: {environment: guess, max_turns: 2, max_new_tokens: 8, system_prompt: "Guess."}
sft: {micro_batch: 4, grad_accum: 2, log_every: 1}
cycles:
  method: grpo
  train: {steps: 2, warmup_steps: 0}
  preference_train: {steps: 2, warmup_steps: 0, num_generations: 2, lr: 0.001}
"""


class RecordedGuess(NumberGuess):
    """NumberGuess that records every episode it is reset to: ``(n, secret, prompt)``."""

    played: ClassVar[list[tuple[int, int, Any]]] = []

    def reset(self, n: int, secret: int, **row: Any) -> str:
        RecordedGuess.played.append((int(n), int(secret), row.get("prompt")))
        return super().reset(n, secret, **row)


@pytest.fixture(scope="module")
def champion(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> artifacts.Artifact:
    """A random-init tiny Llama with the agents' tokenizer, published as SFT publishes one."""
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model

    root = tmp_path_factory.mktemp("champion") / "sft_checkpoint"
    staging = artifacts.staging_dir(root)
    special = {k: getattr(tokenizer, k) for k in ("eos_token_id", "bos_token_id", "pad_token_id")}
    model = build_model(ModelSettings(config=TINY_LLAMA), len(tokenizer), 2048, special, seed=1)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return artifacts.publish(root, staging, stage="sft")


def write_training_set(spec: Spec) -> ShardSet:
    """Cycle 1's training set (read by the cycle, though GRPO alone trains on episodes)."""
    frame = pl.DataFrame(
        {
            "prompt_id": ["s0", "s1"],
            "prompt": ["Find the secret number.", "Find it."],
            "response": ["I guess 2.", "I guess 3."],
            "origin": ["seed", "seed"],
        }
    )
    with ShardWriter(training_set_root(spec, 1)) as writer:
        writer.write(frame)
        return writer.commit(cycle=1, parent_cycle=0)


def test_a_grpo_cycle_publishes_a_checkpoint_trained_on_the_environment(
    champion: artifacts.Artifact, tmp_path: Path
) -> None:
    spec = load_spec(write_spec(tmp_path, SPEC))
    write_training_set(spec)
    RecordedGuess.played.clear()
    with Reporter() as reporter:
        result = run_retrain(spec, reporter, 1, retrain_inputs(spec, 1, parent=champion.path))

    published = artifacts.read_current(checkpoint_root(spec, 1))
    assert result["version"] == published.version and published.meta["stage"] == "cycle"
    assert published.meta["lineage"]["method"] == "grpo"
    assert published.meta["lineage"]["parent_checkpoint"] == champion.version
    metrics = published.meta["metrics"]
    assert metrics["method"] == "grpo" and "steps" not in metrics  # no SFT before it
    # 2 steps of 2 x 4 completions, 2 per episode: 8 new episodes, each played twice
    assert metrics["grpo/grpo_env/steps"] == 2 and metrics["grpo/grpo_env/episodes"] == 8
    assert math.isfinite(metrics["grpo/grpo_env/final_loss"])
    assert 0.0 <= metrics["grpo/grpo_env/reward"] <= 1.0

    # TRL played the cycle's own training episodes (its seed, none held out), the agent's
    # system turn first in each prompt
    settings = NumberGuess.Settings(min_n=2, max_n=16, held_out=4)
    drawn = train_episodes(POOL, settings, seed=episode_seed(spec.agent, 1) + 17)[:8]
    played = RecordedGuess.played
    assert sorted((n, s) for n, s, _ in played) == sorted(
        (e["n"], e["secret"]) for e in drawn for _ in range(2)
    )
    held = {(e["n"], e["secret"]) for e in held_out_episodes(settings)}
    assert not held & {(n, s) for n, s, _ in played}
    assert all(p[0] == {"role": "system", "content": "Guess."} for _, _, p in played)

    from transformers import AutoModelForCausalLM

    from flywheel.train.tokenizer import load_tokenizer

    AutoModelForCausalLM.from_pretrained(published.path, local_files_only=True)
    assert load_tokenizer(published.path).eos_token == "<|endoftext|>"


def test_grpo_settings_it_cannot_run_fail_before_the_cycles_sft(
    champion: artifacts.Artifact, tmp_path: Path
) -> None:
    # 2 x 4 completions a step cannot hold whole groups of 3: refused before SFT trains
    spec = load_spec(
        write_spec(tmp_path, SPEC),
        ["cycles.method=sft+grpo", "cycles.preference_train.num_generations=3"],
    )
    write_training_set(spec)
    handed = retrain_inputs(spec, 1, parent=champion.path)
    message = r"cycles\.preference_train: .* = 8 completions .* num_generations \(3\)"
    with pytest.raises(ValueError, match=message), Reporter() as reporter:
        run_retrain(spec, reporter, 1, handed)
    root = checkpoint_root(spec, 1)
    assert not list(root.rglob("sft-model")) and not list(root.rglob("checkpoint-*"))
    assert not artifacts.has_current(root)
