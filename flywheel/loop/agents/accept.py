"""Which collected trajectories become training data, and why the others do not.

    python -m pytest -q tests/loop/agents/test_accept.py

``accept_trajectories(frame, settings, held_out)`` splits a trajectory frame into accepted
rows and rejected rows with a ``reason``; every input row is in exactly one of them. Each row
gets the first reason that applies, in this order:

- ``error``: the episode failed (``reset``/``get_reward`` raised);
- ``no_model_turn``: the model never spoke (nothing to train on);
- ``not_completed``: truncated or not done (``require_completed``);
- ``held_out_leak``: its episode is one of ``held_out`` (compared as canonical JSON, the
  ``episode`` column's spelling), so evaluation episodes never become training data;
- ``zero_group_variance``: its group (the samples of one episode, ``group_id``) has a reward
  standard deviation at most ``min_group_std``; GRPO's advantage is zero there, so it teaches
  nothing (off when ``min_group_std`` is None). Computed over the whole group as collected;
- ``low_reward``: reward below ``min_reward`` (off when None);
- ``low_step_reward``: a model turn the environment judged below ``min_step_reward`` (its
  ``step_rewards`` entry, less ``reward`` on the last turn): a solved episode that got there
  through a mistake, e.g. a guess the replies had ruled out (off when None);
- ``duplicate``: an earlier surviving row has the same ``trajectory_hash``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from flywheel.loop.agents.trajectories import canonical, check_frame


@dataclass(frozen=True)
class AcceptSettings:
    min_reward: float | None = 1.0  # SFT on successes; None keeps failures (RL uses them)
    require_completed: bool = True  # a truncated episode did not finish its task
    dedup: bool = True  # the same trajectory twice would weigh it twice
    min_group_std: float | None = None  # GRPO: drop groups whose rewards all agree
    min_step_reward: float | None = None  # drop episodes with a turn judged below it


def accept_trajectories(
    frame: pl.DataFrame, settings: AcceptSettings, held_out: list[dict[str, Any]] = ()
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(accepted, rejected with a ``reason`` column); their row counts sum to the input's."""
    check_frame(frame)
    leaked = [canonical(e) for e in held_out]
    reason = pl.when(pl.col("error").is_not_null()).then(pl.lit("error"))
    reason = reason.when(pl.col("num_turns") < 1).then(pl.lit("no_model_turn"))
    if settings.require_completed:
        unfinished = pl.col("truncated") | ~pl.col("done")
        reason = reason.when(unfinished).then(pl.lit("not_completed"))
    reason = reason.when(pl.col("episode").is_in(leaked)).then(pl.lit("held_out_leak"))
    if settings.min_group_std is not None:
        std = pl.col("reward").std(ddof=0).over("group_id")
        reason = reason.when(std <= settings.min_group_std).then(pl.lit("zero_group_variance"))
    if settings.min_reward is not None:
        reason = reason.when(pl.col("reward") < settings.min_reward).then(pl.lit("low_reward"))
    if settings.min_step_reward is not None:
        worst = _worst_step(pl.col("step_rewards"), pl.col("reward"))
        reason = reason.when(worst < settings.min_step_reward).then(pl.lit("low_step_reward"))
    marked = frame.with_columns(reason.otherwise(None).cast(pl.String).alias("reason"))
    if settings.dedup:
        # Among the rows still in, the first of each hash stays; the others are duplicates.
        first = pl.int_range(pl.len()).over("trajectory_hash", "reason") == 0
        repeat = pl.col("reason").is_null() & ~first
        dup = pl.when(repeat).then(pl.lit("duplicate")).otherwise(pl.col("reason"))
        marked = marked.with_columns(dup.alias("reason"))
    accepted = marked.filter(pl.col("reason").is_null()).drop("reason")
    rejected = marked.filter(pl.col("reason").is_not_null())
    return accepted, rejected


def _worst_step(steps: pl.Expr, reward: pl.Expr) -> pl.Expr:
    """The lowest of the environment's per-turn judgements: ``step_rewards`` with ``reward``
    taken back off the last entry (an episode without turns has none: +inf)."""
    judged = pl.concat_list(steps.list.head(steps.list.len() - 1), steps.list.last() - reward)
    return pl.when(steps.list.len() > 0).then(judged.list.min()).otherwise(float("inf"))
