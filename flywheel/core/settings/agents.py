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
from typing import Any

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
