"""Where the PPO stage's rollouts come from, and the padded tensors it trains on.

    python -m pytest -q tests/loop/agents/test_ppo_train.py

A rollout source holds a pool of items and plays the ones it is given with a
``TransformersPolicy`` wrapping the current policy model. Both sources return rows shaped like
trajectory rows (``flywheel.loop.agents.trajectories``): ``prompt_ids``, ``completion_ids``,
``completion_mask`` (1 where the policy generated the token), ``logprobs`` (its sampling
logprobs), ``reward`` and, from an environment, ``step_rewards`` (its judgement of each turn).

- ``EnvRollouts``: multi-turn episodes of a tool-calling environment, played by
  ``flywheel.loop.agents.collect.collect``; holes (tool turns, role headers) have mask 0.
- ``PromptRollouts``: single-turn prompts (``{"messages": [...]}`` or ``{"prompt": str}``, plus
  whatever the reward reads, e.g. ``answer``), rewarded by ``reward(record, completion_text)``;
  ``verifier_reward_fn`` makes the acceptance verifier such a reward.

``to_batch`` right-pads rows into one ``Rollout``: with right padding every position keeps its
unpadded index, so a plain forward pass sees each token at the position sampling saw it, and
no query row is fully masked (which makes NaN in SDPA). Response token t of row b is
predicted by the logits at ``index[b, t] = len(prompt_b) - 1 + t`` of the full sequence.
``steps`` holds each turn's judgement (``step_rewards`` less the final reward, which
``ppo.token_rewards`` adds) at the turn's last generated token: PPO's dense rewards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flywheel.loop.agents.collect import CollectSettings, Context, collect
from flywheel.loop.agents.hf_policy import TransformersPolicy

ROW_FIELDS = (
    "prompt_ids", "completion_ids", "completion_mask", "logprobs", "reward", "step_rewards"
)  # fmt: skip
Reward = Callable[[dict[str, Any], str], float]


class EnvRollouts:
    """Episodes of ``factory``'s environment (dataset rows for ``reset(**episode)``)."""

    def __init__(
        self,
        factory: Callable[[], Any],
        episodes: list[dict[str, Any]],
        env_name: str = "env",
        timeout_s: float = 120.0,
        system_prompt: str | None = None,
    ) -> None:
        if not episodes:
            raise ValueError("EnvRollouts needs at least one episode")
        self.factory, self.episodes, self.env_name = factory, episodes, env_name
        self.timeout_s, self.system_prompt = timeout_s, system_prompt

    def __len__(self) -> int:
        return len(self.episodes)

    def rollout(
        self, policy: TransformersPolicy, items: list[int], max_turns: int
    ) -> list[dict[str, Any]]:
        settings = CollectSettings(
            max_turns=max_turns, episode_timeout_s=self.timeout_s, system_prompt=self.system_prompt
        )
        chosen = [self.episodes[i] for i in items]
        frame = collect(
            policy, policy.tokenizer, self.factory, chosen, self.env_name, None, settings
        )
        return frame.select(ROW_FIELDS).to_dicts()


class PromptRollouts:
    """Single-turn prompts; the completion (the stop token included) is all mask 1."""

    def __init__(self, prompts: list[dict[str, Any]], reward: Reward) -> None:
        if not prompts:
            raise ValueError("PromptRollouts needs at least one prompt")
        self.prompts = [dict(p, messages=_messages(p, i)) for i, p in enumerate(prompts)]
        self.reward = reward

    def __len__(self) -> int:
        return len(self.prompts)

    def rollout(
        self, policy: TransformersPolicy, items: list[int], max_turns: int = 1
    ) -> list[dict[str, Any]]:
        tok = policy.tokenizer
        records = [self.prompts[i] for i in items]
        contexts = []
        for record in records:
            text = tok.apply_chat_template(
                record["messages"], add_generation_prompt=True, tokenize=False
            )
            contexts.append(
                Context(record["messages"], tok(text, add_special_tokens=False)["input_ids"])
            )
        rows = []
        for i, record, context, step in zip(
            items, records, contexts, policy(contexts), strict=True
        ):
            try:
                reward = float(self.reward(record, step.text))
            except Exception as exc:
                raise ValueError(
                    f"the reward raised on prompt {i}: {type(exc).__name__}: {exc}"
                ) from exc
            rows.append(
                {
                    "prompt_ids": context.token_ids,
                    "completion_ids": step.token_ids,
                    "completion_mask": [1] * len(step.token_ids),
                    "logprobs": step.logprobs,
                    "reward": reward,
                }
            )
        return rows


def _messages(record: dict[str, Any], index: int) -> list[dict[str, Any]]:
    if isinstance(record.get("messages"), list) and record["messages"]:
        return record["messages"]
    if isinstance(record.get("prompt"), str):
        return [{"role": "user", "content": record["prompt"]}]
    raise ValueError(
        f"prompt {index} has neither a 'messages' list nor a 'prompt' string: {sorted(record)}"
    )


def verifier_reward_fn(verifier: Any) -> Reward:
    """``reward(record, completion)``: 1.0 where the acceptance verifier (``VerifierSettings``:
    exact, numeric or python) accepts the completion against ``record["answer"]``, else 0.0."""
    from flywheel.loop.preference import verifier_reward

    batched = verifier_reward(verifier)

    def reward(record: dict[str, Any], completion: str) -> float:
        prompt = record["messages"] if "messages" in record else record["prompt"]
        return batched([prompt], [completion], [record.get("answer")])[0]

    return reward


def env_rollouts(
    class_path: str, env_settings: dict[str, Any], episodes: Path | None, pool: int, seed: int
) -> EnvRollouts:
    """An environment's rollouts: episodes from a JSON Lines file, else from its module's
    ``train_episodes(count, settings, seed=...)`` (NumberGuess has one)."""
    from flywheel.core.settings.agents import EnvironmentSpec
    from flywheel.envs.load import factory_settings, load_environment, module_function

    entry = EnvironmentSpec(
        name=class_path.rsplit(":", 1)[-1], class_path=class_path, settings=env_settings
    )
    factory = load_environment(entry, Path.cwd())
    if episodes is not None:
        rows = [json.loads(line) for line in episodes.read_text().splitlines() if line.strip()]
        return EnvRollouts(factory, rows, entry.name)
    make = module_function(class_path, Path.cwd(), "train_episodes")
    if make is None:
        raise ValueError(f"{class_path}: its module has no train_episodes(); pass --episodes FILE")
    return EnvRollouts(factory, make(pool, factory_settings(factory), seed=seed), entry.name)


def prompt_rollouts(prompts: Path, reward: str) -> PromptRollouts:
    """Single-turn prompts (JSON Lines) and a reward: ``package.module:function`` taking
    ``(record, completion)``, or a verifier kind (``exact``/``numeric``) against ``answer``."""
    from flywheel.core.settings.verifier import VerifierSettings
    from flywheel.loop.plugins import load_function

    records = [json.loads(line) for line in prompts.read_text().splitlines() if line.strip()]
    fn = (
        load_function(reward)
        if ":" in reward
        else verifier_reward_fn(VerifierSettings(kind=reward))
    )
    return PromptRollouts(records, fn)


@dataclass
class Rollout:
    """One batch of rollouts, right-padded; ``[B, L]`` full sequences, ``[B, T]`` responses."""

    input_ids: Tensor  # [B, L] prompt + completion, then pad
    attention: Tensor  # [B, L] 1 on real tokens
    index: Tensor  # [B, T] position of the logits (and value) predicting response token t
    response: Tensor  # [B, T] completion ids, pad after the end
    mask: Tensor  # [B, T] bool: generated by the policy
    scores: Tensor  # [B] sequence rewards
    sampled: Tensor  # [B, T] sampling logprobs (0 where the policy reported none)
    steps: Tensor  # [B, T] the environment's judgement of each turn, at its last token

    def to(self, device: Any) -> Rollout:
        return Rollout(**{k: v.to(device) for k, v in vars(self).items()})


def to_batch(rows: list[dict[str, Any]], pad_id: int) -> Rollout:
    """Rows as one right-padded ``Rollout``; a row must have a prompt and aligned lists."""
    if not rows:
        raise ValueError("no rollouts to train on")
    width = max(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows)
    span = max(max(len(r["completion_ids"]) for r in rows), 1)
    shape = (len(rows), span)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    index = torch.zeros(shape, dtype=torch.long)
    response = torch.full(shape, pad_id, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.bool)
    sampled, steps = torch.zeros(shape), torch.zeros(shape)
    for b, row in enumerate(rows):
        prompt, completion, bits = row["prompt_ids"], row["completion_ids"], row["completion_mask"]
        if not prompt:
            raise ValueError(f"rollout {b} has no prompt tokens: nothing predicts its first token")
        if len(bits) != len(completion):
            raise ValueError(f"rollout {b}: completion_mask and completion_ids differ in length")
        n, t = len(prompt), len(completion)
        input_ids[b, : n + t] = torch.tensor(prompt + completion)
        attention[b, : n + t] = 1
        # padding positions point at the last real logit: they are masked, and stay in range
        index[b] = (n - 1 + torch.arange(span)).clamp(max=n + t - 1 if t else n - 1)
        if t:
            response[b, :t] = torch.tensor(completion)
            mask[b, :t] = torch.tensor(bits, dtype=torch.bool)
        if row.get("logprobs") is not None and t:
            sampled[b, :t] = torch.tensor(row["logprobs"], dtype=torch.float32)
        for end, judged in zip(_turn_ends(bits), _judged(row), strict=False):
            steps[b, end] = judged
    scores = torch.tensor([float(r["reward"]) for r in rows])
    return Rollout(input_ids, attention, index, response, mask, scores, sampled, steps)


def _turn_ends(bits: list[int]) -> list[int]:
    """The last position of each run of 1s in a completion mask: where each model turn ends."""
    return [i for i, bit in enumerate(bits) if bit and (i + 1 == len(bits) or not bits[i + 1])]


def _judged(row: dict[str, Any]) -> list[float]:
    """The environment's per-turn judgement: ``step_rewards`` less the final ``reward`` on the
    last (``token_rewards`` adds that at the end); none for a single-turn prompt."""
    judged = [float(x) for x in row.get("step_rewards") or ()]
    if judged:
        judged[-1] -= float(row["reward"])
    return judged


def response_logprobs(model: Any, batch: Rollout, rows: Tensor, temperature: float) -> Tensor:
    """``[b, T]`` log softmax(logits / temperature) at each response token of ``rows``: the
    quantity ``TransformersPolicy`` reports for a sampled token."""
    logits = model(input_ids=batch.input_ids[rows], attention_mask=batch.attention[rows]).logits
    index = batch.index[rows]
    picked = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    logprobs = torch.log_softmax(picked.float() / temperature, dim=-1)
    return logprobs.gather(-1, batch.response[rows].unsqueeze(-1)).squeeze(-1)


def response_values(value_model: Any, batch: Rollout, rows: Tensor) -> Tensor:
    """``[b, T]`` V of the state in which each response token of ``rows`` is generated."""
    values = value_model(input_ids=batch.input_ids[rows], attention_mask=batch.attention[rows])
    return values.float().gather(1, batch.index[rows])
