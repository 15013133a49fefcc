"""The spec's ``environments`` load: class imported, settings valid, tools TRL can describe.

    python -c "from flywheel.core.spec import load_spec; from flywheel.preflight.environments \
import check_environments; print(*check_environments(load_spec()), sep='\\n')"

For each entry, one problem naming its key: ``environments[i].class_path`` (does not import,
is not a class, lacks ``reset``/``get_reward``/any tool, its constructor fails, or a tool has
no JSON schema) or ``environments[i].settings`` (rejected by the class's ``Settings``). The
schema is made by transformers' ``get_json_schema``, the function that turns TRL's tool
callables into the schemas the chat template renders, so a tool missing a type hint or an
argument's docstring line fails here instead of at trainer start.
"""

from __future__ import annotations

from flywheel.core.spec import Spec
from flywheel.envs.load import EnvironmentLoadError, load_environment
from flywheel.envs.protocol import tool_methods
from flywheel.preflight.problems import Problem, error


def check_environments(spec: Spec) -> list[Problem]:
    problems = []
    for i, entry in enumerate(spec.environments):
        try:
            factory = load_environment(entry, spec.base_dir)
        except EnvironmentLoadError as exc:
            problems.append(error(f"environments[{i}].{exc.field}", str(exc)))
            continue
        bad = _schema_problems(factory())
        if bad:
            problems.append(error(f"environments[{i}].class_path", "; ".join(bad)))
    return problems


def _schema_problems(env: object) -> list[str]:
    from transformers.utils import get_json_schema  # heavy: only when a spec has environments

    bad = []
    for method in tool_methods(env):
        try:
            get_json_schema(method)
        except Exception as exc:  # noqa: BLE001 - DocstringParsingException, TypeHint...
            bad.append(f"tool {method.__name__!r} has no JSON schema: {exc}")
    return bad
