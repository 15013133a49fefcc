"""Settings of the compact PPO stage (``flywheel.loop.agents.ppo_train``): rollouts, the PPO
update and checkpointing. The defaults are CPU-sized: a 1M-parameter model learns a toy task
in a few dozen iterations of 16 rollouts.

    python -m flywheel.loop.agents.ppo_train --help

Like the other settings models this imports neither torch nor transformers.
"""

from __future__ import annotations

from pydantic import Field

from flywheel.core.settings.lora import LoraSettings
from flywheel.core.settings.train import OptimizerSettings


class PpoSettings(OptimizerSettings):
    """PPO's settings; ``optimizer`` and its knobs are the training stages' (policy and value
    model each get one, at ``lr`` and ``value_lr``)."""

    iterations: int = Field(20, ge=1, description="Rollout + update rounds.")
    episodes_per_iteration: int = Field(
        16, ge=2, description="Rollouts collected per iteration (over all processes)."
    )
    ppo_epochs: int = Field(
        2, ge=1, description="Passes over each iteration's rollouts (PPO reuses them)."
    )
    minibatch_size: int = Field(8, ge=1, description="Rollouts per optimizer step (per process).")
    lr: float = Field(1e-3, gt=0, description="Learning rate of the policy's optimizer.")
    value_lr: float = Field(
        1e-3, gt=0, description="Learning rate of the value model's (backbone + head)."
    )
    kl_coef: float = Field(
        0.05,
        ge=0,
        description="Weight of the per-token KL(policy || reference) penalty folded into the "
        "reward; 0 lets the policy drift freely from the parent.",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="Discount per generated token.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (1: Monte Carlo, 0: TD(0)).")
    clip_range: float = Field(
        0.2, gt=0, description="PPO's policy ratio clip: ratios outside 1 +- this get no gradient."
    )
    value_clip_range: float = Field(
        0.2, gt=0, description="How far a value may move from its rollout value per update."
    )
    vf_coef: float = Field(
        0.5,
        ge=0,
        description="Weight of the value loss; it only scales the value model's gradient, as "
        "the two models share no parameters.",
    )
    whiten_advantages: bool = Field(
        True, description="Normalise advantages to mean 0, variance 1 over each rollout batch."
    )
    temperature: float = Field(
        1.0,
        gt=0,
        description="Sampling temperature; logprobs are of logits / temperature, in sampling "
        "and in the update alike (greedy sampling has no policy gradient).",
    )
    max_new_tokens: int = Field(16, ge=1, description="Tokens generated per model turn.")
    max_turns: int = Field(
        6, ge=1, description="Model turns per environment episode (single-turn prompts: 1)."
    )
    save_every: int = Field(
        5, ge=1, description="Iterations between resumable states (the last one is always saved)."
    )
    keep_states: int = Field(2, ge=1, description="Resumable states kept in the work directory.")
    seed: int = Field(
        0,
        description="Seed of rollout selection, sampling and minibatch order; each iteration "
        "reseeds from it, so a resumed run repeats an uninterrupted one.",
    )
    max_grad_norm: float = Field(
        1.0, gt=0, description="Gradient norm clip, of each model separately."
    )
    lora: LoraSettings | None = Field(
        None,
        description="Train the policy as a LoRA adapter; its frozen reference is then the "
        "same model with the adapter disabled, not a second copy (null: the cycle's "
        "cycles.train lora; by hand: off). The value model is trained fully.",
    )
