"""The transformers policy end to end on a tiny random-init Llama: valid rows, one batched
generate per turn, and recorded logprobs equal to a fresh forward pass over the tokens."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from flywheel.envs.guess import NumberGuess, Settings, episode, train_episodes
from flywheel.loop.agents.collect import CollectSettings, collect
from flywheel.loop.agents.hf_policy import TransformersPolicy
from flywheel.loop.agents.trajectories import SCHEMA
from tests.loop.eval.conftest import TINY_LLAMA

EASY = Settings(min_n=4, max_n=128, held_out=2)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model

    special = {
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return build_model(ModelSettings(config=TINY_LLAMA), len(tokenizer), 2048, special, seed=1)


def test_transformers_policy_collects_valid_rows(model: Any, tokenizer: Any) -> None:
    policy = TransformersPolicy(model, tokenizer, max_new_tokens=12, temperature=0.7, seed=4)
    # one- to three-digit ranges: prompts of different lengths, so rows are left-padded
    episodes = [episode(5, 2), episode(40, 17), episode(120, 99)]
    settings = CollectSettings(max_turns=3)
    frame = collect(
        policy, tokenizer, lambda: NumberGuess(EASY), episodes, "guess", settings=settings
    )
    assert frame.schema == SCHEMA and frame.height == 3
    assert frame["prompt_ids"].list.len().n_unique() == 3
    assert policy.calls == frame["num_turns"].max()  # one generate per turn, all episodes
    assert set(frame["backend"]) == {"transformers"}
    assert json.loads(frame["sampling"][0])["temperature"] == 0.7
    for row in frame.iter_rows(named=True):
        ids, mask, logprobs = row["completion_ids"], row["completion_mask"], row["logprobs"]
        assert len(ids) == len(mask) == len(logprobs) and mask[0] == 1 and mask[-1] == 1
        assert all(lp <= 0.0 for lp in logprobs)
        assert all(lp == 0.0 for lp, m in zip(logprobs, mask, strict=True) if not m)
        assert 1 <= row["num_turns"] <= 3 and row["end_reason"] in {
            "done",
            "env_truncated",
            "max_turns",
        }
        assert row["reward"] in (0.0, 1.0)
        # the recorded logprobs are the model's at temperature 0.7, at the tokens it generated
        full = torch.tensor([row["prompt_ids"] + ids])
        with torch.no_grad():
            logits = model(full).logits[0, len(row["prompt_ids"]) - 1 : -1].float() / 0.7
        fresh = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        model_made = torch.tensor(mask, dtype=torch.bool)
        recorded = torch.tensor(logprobs)
        torch.testing.assert_close(recorded[model_made], fresh[model_made], atol=2e-3, rtol=0)


def test_greedy_is_reproducible_and_checks_its_arguments(model: Any, tokenizer: Any) -> None:
    episodes = train_episodes(2, EASY, seed=3)

    def once() -> list[list[int]]:
        policy = TransformersPolicy(model, tokenizer, max_new_tokens=6, temperature=0.0)
        frame = collect(
            policy,
            tokenizer,
            lambda: NumberGuess(EASY),
            episodes,
            "guess",
            settings=CollectSettings(max_turns=2),
        )
        return frame["completion_ids"].to_list()

    assert once() == once()
    with pytest.raises(ValueError, match="temperature"):
        TransformersPolicy(model, tokenizer, temperature=-1.0)
