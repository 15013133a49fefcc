"""The verifier setting: how a completion is judged correct, one model for eval and acceptance.

    flywheel check --explain | grep verifier

``acceptance.verifier`` and every ``eval.tasks[].verifier`` are a ``VerifierSettings``, scored
by the same ``flywheel.loop.verifiers.score``, so a completion counts as correct in exactly one
way everywhere. A plain string is short for ``{kind: <string>}`` (``verifier: exact``).

``kind`` is any string at parse time: a module listed under the spec's ``plugins`` may register
more kinds (``register_verifier``) when it is imported, which is after the spec is read. An
unknown kind is a preflight error (``flywheel check``) naming the key and the known kinds.
Like the other settings models, this one imports neither torch nor transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Kinds judge knows itself; exact/numeric/contains/regex are also the registered per-row
# functions of flywheel.loop.verifiers (register_verifier adds more of those).
JUDGE_KINDS = ("python", "self_consistency", "reward_model")
BUILTIN_KINDS = ("exact", "numeric", "contains", "regex", *JUDGE_KINDS)


class VerifierSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    kind: str = Field(
        "exact",
        min_length=1,
        description="exact/numeric/contains/regex: against the reference answer; python: a "
        "function by import path; self_consistency: majority vote across samples (acceptance "
        "only); reward_model: a local sequence-classification model's score >= threshold; or "
        "a name a `plugins` module registered with register_verifier.",
    )
    function: str | None = Field(
        None,
        description="'package.module:function' (kind python), called as "
        "fn(prompt, completion, answer) -> bool | (bool, reason).",
    )
    pattern: str | None = Field(
        None,
        description="Regex of kind regex ({answer} is replaced by the escaped answer); also "
        "handed to registered kinds as fn(completion, answer, pattern).",
    )
    min_votes: int = Field(2, ge=1, description="Fewest samples agreeing (self_consistency).")
    min_agreement: float = Field(
        0.5, gt=0, le=1, description="Share of samples that must agree (self_consistency)."
    )
    reward_model: Path | None = Field(
        None, description="A local Hugging Face sequence-classification model (reward_model)."
    )
    threshold: float = Field(0.0, description="Lowest accepted reward score (reward_model).")

    @model_validator(mode="before")
    @classmethod
    def _kind_alone(cls, data: Any) -> Any:
        # `verifier: exact` is short for `verifier: {kind: exact}` (eval tasks were written so).
        return {"kind": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _needs(self) -> VerifierSettings:
        if self.kind == "python" and not self.function:
            raise ValueError("verifier.function ('package.module:function') is required")
        if self.kind == "reward_model" and self.reward_model is None:
            raise ValueError("verifier.reward_model (a local model directory) is required")
        return self
