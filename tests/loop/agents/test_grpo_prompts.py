"""GRPO's episodes look to the model as the collector's do: TRL's own prompt token ids (caught
where it renders them) equal the collector's for the same episode, with and without the
agent's system prompt (and with a checkpoint whose template predates ``list_tools``); its tool
turns are the collector's ids; a turn generates at most the agent's ``max_new_tokens``.

    python -m pytest -q tests/loop/agents/test_grpo_prompts.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flywheel.core.settings.agents import AgentSettings
from flywheel.core.settings.loop import PreferenceSettings
from flywheel.envs.guess import NumberGuess, Settings, train_episodes
from flywheel.loop.agents.collect import CollectSettings, collect
from flywheel.loop.agents.cycle_rl import grpo_inputs
from flywheel.loop.agents.grpo_env import build_grpo_env_trainer, grpo_env_config
from flywheel.loop.agents.toolcalls import format_tool_call
from flywheel.train.tokenizer import CHAT_TEMPLATE, load_tokenizer
from tests.loop.agents.conftest import Scripted
from tests.loop.eval.conftest import TINY_LLAMA

pytestmark = pytest.mark.usefixtures("one_thread")

GUESS = Settings(min_n=4, max_n=64, held_out=8)
SYSTEM = "Call guess(number) as <tool_call> JSON."
# CHAT_TEMPLATE as it was before list_tools: it lists the tools whenever it is given them
LISTING_SWITCH = "if tools and (list_tools is not defined or list_tools)"
OLD_TEMPLATE = CHAT_TEMPLATE.replace(LISTING_SWITCH, "if tools")


def guess() -> NumberGuess:
    return NumberGuess(GUESS)


class Stop(Exception):
    """Ends the GRPO step once TRL has rendered its prompts."""


@pytest.fixture(scope="module")
def checkpoint(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny Llama with the agents' test tokenizer: rendering needs no skill."""
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model

    out = tmp_path_factory.mktemp("guess-checkpoint")
    special = {k: getattr(tokenizer, k) for k in ("eos_token_id", "bos_token_id", "pad_token_id")}
    build_model(ModelSettings(config=TINY_LLAMA), len(tokenizer), 512, special).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def trl_prompts(config: Any, model_dir: Path, episodes: list[dict]) -> dict[tuple, list[int]]:
    """The prompt ids TRL generates from, by the (n, secret) of each row's environment."""
    trainer, _ = build_grpo_env_trainer(config, model_dir, guess, episodes)
    seen: dict[tuple, list[int]] = {}
    tokenize = trainer._tokenize_prompts

    def caught(prompts: list) -> Any:
        out = tokenize(prompts)
        for env, ids in zip(trainer.environments, out[0], strict=True):
            seen[(env.n, env.secret)] = list(ids)
        raise Stop

    trainer._tokenize_prompts = caught
    with pytest.raises(Stop):
        trainer.train()
    return seen


@pytest.mark.parametrize(
    ("system", "template"),
    [(None, CHAT_TEMPLATE), (SYSTEM, CHAT_TEMPLATE), (SYSTEM, OLD_TEMPLATE)],
    ids=["tools-listed", "own-system-prompt", "own-system-prompt-old-template"],
)
def test_grpo_prompts_are_the_collectors(
    checkpoint: Path, tmp_path: Path, system: str | None, template: str
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for f in checkpoint.iterdir():
        (model_dir / f.name).symlink_to(f)
    tokenizer = load_tokenizer(checkpoint)
    tokenizer.chat_template = template
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer.save_pretrained(model_dir)

    agent = AgentSettings(environment="guess", max_turns=8, max_new_tokens=8, system_prompt=system)
    base = PreferenceSettings(steps=1, micro_batch=8, num_generations=2, lr=1e-5).model_dump()
    settings, episodes = grpo_inputs(agent, base, train_episodes(4, GUESS, seed=3))
    config = grpo_env_config(settings, tmp_path / "work")
    rendered = trl_prompts(config, model_dir, episodes)

    # the collector, on the checkpoint's own tokenizer, two turns of each episode
    played = load_tokenizer(model_dir)
    policy = Scripted(played, [format_tool_call("guess", {"number": 1})])
    frame = collect(
        policy, played, guess, train_episodes(4, GUESS, seed=3), "guess",
        settings=CollectSettings(max_turns=2, system_prompt=system),
    )  # fmt: skip
    assert len(rendered) == 4
    trainer, _ = build_grpo_env_trainer(config, model_dir, guess, episodes)
    for row in frame.iter_rows(named=True):
        episode = json.loads(row["episode"])
        assert rendered[(episode["n"], episode["secret"])] == row["prompt_ids"]
        listed = "<tools>" in played.decode(row["prompt_ids"])
        assert listed == (system is None)
        # the tool turn between the two model turns, as TRL builds it from the same reply
        mask, ids = row["completion_mask"], row["completion_ids"]
        first = mask.index(0)
        between = ids[first : mask.index(1, first)]
        reply = [t for t in json.loads(row["turns"]) if t["role"] == "tool"][0]
        suffix = trainer._get_tool_suffix_ids(
            [{"role": "tool", "name": "guess", "content": reply["content"]}]
        )
        assert suffix == between
    # a turn is as long as the collector's, the episode long enough for all its turns
    assert trainer.generation_config.max_new_tokens == agent.max_new_tokens
    assert trainer.max_completion_length >= agent.max_turns * (agent.max_new_tokens + len(between))
