"""The online RL stages of an agent cycle (``cycles.method``): PPO (or GRPO) in the agent's
environment, from the champion or from the cycle's SFT model.

    accelerate launch -m flywheel.loop.retrain --spec examples/agent/flywheel.yaml --cycle 2 \
        --set cycles.method=sft+ppo

``flywheel.loop.retrain`` calls ``rl_stage`` after (or instead of) the cycle's SFT. The
episodes are the environment's ``train_episodes`` (never a held-out one), drawn with a seed of
the cycle's own, so each cycle's RL plays new episodes; the system prompt, turn budget and
timeout are the agent section's, so RL trains in the format the agent plays and is evaluated
in. The stage resumes from its own states under ``work`` (a rerun after kill -9 goes on).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flywheel.core.report import Reporter
from flywheel.core.spec import Spec
from flywheel.loop.agents.cycle import agent_environment, agent_settings, episode_seed

POOL = 4096  # episodes drawn per cycle for RL to sample its rollouts from
# Room for one tool turn as the template renders it between two model turns: NumberGuess's
# "higher than 17; 3 left" is 16 tokens with the example's tokenizer, an error reply ~32. TRL
# stops an episode whose next tool turn would overrun the completion budget, so a budget of
# max_new_tokens x max_turns (64 in the example) cut episodes after 3-4 of their 7 guesses.
TOOL_TURN_TOKENS = 32


def rl_kind(spec: Spec) -> str | None:
    """``ppo`` or ``grpo`` when ``cycles.method`` has an online RL stage, else None."""
    method = spec.cycles.method
    return method.rsplit("+", 1)[-1] if method.rsplit("+", 1)[-1] in ("ppo", "grpo") else None


def trains_sft(spec: Spec) -> bool:
    return spec.cycles.method.startswith("sft")


def check_rl_settings(spec: Spec) -> None:
    """Refuse settings the RL stage would refuse only after the cycle's SFT, naming the keys:
    GRPO's groups must fill its steps (``cycles.preference_train``, as for a preference run)."""
    if rl_kind(spec) == "grpo":
        from flywheel.loop.preference import check_settings

        settings = spec.cycles.preference_settings(spec.sft)
        check_settings("grpo", settings, settings.num_processes)


def rl_stage(
    spec: Spec,
    cycle: int,
    start: Path,
    out: Path,
    work: Path,
    reporter: Reporter,
    adapter: Path | None = None,
) -> dict[str, Any]:
    """Run the cycle's RL stage from the model in ``start``; the final policy goes to ``out``
    (merged, and its adapter to ``adapter``, when the stage trains LoRA). Returns its metrics,
    prefixed ``ppo/``."""
    kind, agent, env = rl_kind(spec), agent_settings(spec), agent_environment(spec)
    episodes = env.train_episodes(POOL, env.settings, seed=episode_seed(agent, cycle) + 17)
    if kind == "grpo":
        return _grpo(spec, agent, env, episodes, start, out, work, reporter, adapter)
    if kind != "ppo":
        raise ValueError(f"cycles.method {spec.cycles.method!r}: no RL stage {kind!r} here")
    from flywheel.loop.agents.ppo_rollouts import EnvRollouts
    from flywheel.loop.agents.ppo_train import train_ppo

    rollouts = EnvRollouts(
        env.factory, episodes, env.name, agent.timeout_s, system_prompt=agent.system_prompt
    )
    # The agent's turn budget and turn length, as it plays and is evaluated
    turns = {"max_turns": agent.max_turns, "max_new_tokens": agent.max_new_tokens}
    # An unset cycles.ppo.lora is the cycle's (cycles.train's, else sft's)
    adapted = spec.cycles.ppo.lora or spec.cycles.train_settings(spec.sft).lora
    update = {"seed": spec.cycles.ppo.seed + cycle, "lora": adapted, **turns}
    settings = spec.cycles.ppo.model_copy(update=update)
    metrics = train_ppo(start, out, work, rollouts, settings, reporter, adapter_dir=adapter)
    return {f"ppo/{k}": v for k, v in metrics.items()}


def _grpo(
    spec: Spec, agent: Any, env: Any, episodes: list, start: Path, out: Path, work: Path,
    reporter: Reporter, adapter: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """TRL's GRPO with the environment as ``environment_factory``, on
    ``cycles.preference_train``'s settings (steps, lr, beta, num_generations). Its prompts are
    the collector's token for token: with the agent's own system prompt TRL is told not to
    list the tools (``list_tools``), as the collector never does then; without one, the
    template's listing is the collector's system turn word for word. A turn may generate
    ``agent.max_new_tokens`` as in collection, and the episode's completion (model turns and
    the tool turns between them) has room for ``agent.max_turns`` of both."""
    from flywheel.loop.agents.grpo_env import train_grpo_env

    base = spec.cycles.preference_settings(spec.sft).model_dump()
    settings, episodes = grpo_inputs(agent, base, episodes)
    # A step scores micro_batch x grad_accum x processes completions, num_generations of each
    # episode: so many new episodes a step (fewer would be played again).
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = settings.micro_batch * settings.grad_accum * world // settings.num_generations
    metrics = train_grpo_env(
        start, out, env.factory, episodes[: max(settings.steps * per_step, 1)], settings,
        reporter, work, spec.model.attn_implementation, adapter,
    )  # fmt: skip
    return {f"grpo/{k}": v for k, v in metrics.items()}


def grpo_inputs(agent: Any, base: dict[str, Any], episodes: list[dict]) -> tuple[Any, list[dict]]:
    """GRPO's settings (``base``: the preference run's, with the agent's turn budget) and its
    episode rows (the agent's system turn first, when it has one)."""
    from flywheel.loop.agents.grpo_env import EnvRLSettings

    settings = EnvRLSettings.model_validate(
        base
        | {
            "max_new_tokens": agent.max_turns * (agent.max_new_tokens + TOOL_TURN_TOKENS),
            "turn_tokens": agent.max_new_tokens,
            "list_tools": agent.system_prompt is None,
            "max_tool_calling_iterations": agent.max_turns,
            "temperature": max(agent.temperature, 1e-3),
        }
    )
    if agent.system_prompt is not None:
        system = {"role": "system", "content": agent.system_prompt}
        episodes = [e | {"prompt": [system, *e["prompt"]]} for e in episodes]
    return settings, episodes
