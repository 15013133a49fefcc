"""The ``environments`` section: agent environments the spec names by import path.

    flywheel check --explain | grep environments

Each entry is ``{name, class_path: "package.module:Class", settings: {...}}``. The class is a
tool-using environment (``flywheel.envs.protocol``: ``reset``, tool methods, ``get_reward``),
imported with the spec's directory first on ``sys.path``; ``settings`` is validated against the
class's own pydantic ``Settings`` model. Both happen at ``flywheel check``
(``flywheel.preflight.environments``), not here: this model only checks the shape, so reading a
spec imports no user code (and, like the other settings models, neither torch nor
transformers).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# package.module:Class (the class may be nested: module:Outer.Inner)
_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class EnvironmentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    name: str = Field(
        min_length=1,
        description="Name of the environment; a dataset row's `environment` field selects it "
        "(TRL's dict environment_factory).",
    )
    class_path: str = Field(
        description="'package.module:Class' of the environment, imported with the spec's "
        "directory first on sys.path (built in: flywheel.envs.guess:NumberGuess, "
        "flywheel.envs.python_tool:PythonTool).",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="The environment's own settings, validated by its class's `Settings` "
        "pydantic model at flywheel check.",
    )

    @field_validator("class_path")
    @classmethod
    def _looks_like_class_path(cls, value: str) -> str:
        if not _CLASS_PATH.fullmatch(value):
            raise ValueError("must look like 'package.module:Class'")
        return value


class AgentAcceptSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    min_reward: float | None = Field(
        1.0,
        description="Trajectories with a lower reward are rejected (low_reward); null keeps "
        "failures too (RL learns from them).",
    )
    require_completed: bool = Field(
        True, description="Reject truncated or unfinished episodes (not_completed)."
    )
    group_variance: bool = Field(
        False,
        description="Reject groups whose samples all got the same reward "
        "(zero_group_variance): GRPO's advantage is zero there.",
    )
    dedup: bool = Field(True, description="Reject a trajectory repeated in the cycle.")
    min_step_reward: float | None = Field(
        None,
        description="Reject a trajectory with a model turn the environment judged below this "
        "(low_step_reward; its step_rewards, e.g. NumberGuess's mistake_reward for a guess the "
        "replies ruled out); null: off.",
    )


class AgentSettings(BaseModel):
    """The ``agent`` section: each cycle's champion plays training episodes of one
    environment, and the trajectories (and the accepted ones) are cycle products."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    environment: str = Field(
        min_length=1, description="Name of the `environments` entry the champion plays."
    )
    episodes: int = Field(64, ge=1, description="Training episodes played per cycle.")
    samples_per_episode: int = Field(
        1, ge=1, description="Samples of each episode (a GRPO group shares its episode)."
    )
    max_turns: int = Field(
        12, ge=1, description="Model turns per episode; the environment's budget may be lower."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy).")
    max_new_tokens: int = Field(128, ge=1, description="Tokens generated per model turn.")
    timeout_s: float = Field(
        120.0, gt=0, description="Wall clock per episode, so a slow environment cannot stall."
    )
    seed: int = Field(0, description="Seed of the episodes and sampling; the cycle is added to it.")
    backend: Literal["transformers", "openai"] = Field(
        "transformers",
        description="Who plays: transformers (in process, batched generate) or openai (an "
        "OpenAI-compatible endpoint, generation.endpoint's URL or a started vllm serve).",
    )
    openai_mode: Literal["completions", "chat"] = Field(
        "completions",
        description="backend openai: completions sends the exact token ids (vLLM); chat sends "
        "messages and tools and reads tool_calls back (re-tokenized).",
    )
    system_prompt: str | None = Field(
        None,
        description="The system turn of every episode (null: the tools' JSON schemas and how "
        "to call them). A short one saves a small model hundreds of tokens a turn; seed SFT "
        "data must use the same one (flywheel.loop.agents.teacher).",
    )
    accept: AgentAcceptSettings = Field(
        default_factory=AgentAcceptSettings, description="Which trajectories are accepted."
    )
