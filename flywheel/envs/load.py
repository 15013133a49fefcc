"""The spec's ``environments`` as zero-argument factories (TRL's ``environment_factory``).

    python -c "from flywheel.core.spec import load_spec; from flywheel.envs.load import \
load_environments; print(load_environments(load_spec()))"

``load_environments(spec)`` is ``{name: factory}``, TRL's dict form (a row's ``environment``
field picks one); ``load_environment(entry, base_dir)`` is one factory. Each class is imported
with the spec's directory first on ``sys.path`` and its ``settings`` validated by the class's
pydantic ``Settings`` (a class without one takes no settings). Every failure is an
``EnvironmentLoadError`` whose ``field`` says which key of the entry is wrong (``class_path`` or
``settings``), so preflight can name it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from flywheel.envs.protocol import NOT_TOOLS, tool_methods
from flywheel.loop.plugins import importable_from

if TYPE_CHECKING:  # only their fields are read
    from flywheel.core.settings.agents import EnvironmentSpec
    from flywheel.core.spec import Spec


class EnvironmentLoadError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field  # the EnvironmentSpec key at fault: class_path or settings


def import_class(class_path: str, base_dir: Path) -> type:
    """The class named by ``package.module:Class``, imported from ``base_dir`` first."""
    module_name, _, attr = class_path.partition(":")
    try:
        with importable_from(base_dir):
            module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - importing user code can raise anything
        why = f"cannot import {module_name!r} (from {base_dir}): {type(exc).__name__}: {exc}"
        raise EnvironmentLoadError("class_path", why) from exc
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise EnvironmentLoadError("class_path", f"module {module_name!r} has no {attr!r}")
        found = getattr(found, part)
    if not isinstance(found, type):
        why = f"{class_path!r} is a {type(found).__name__}, not a class"
        raise EnvironmentLoadError("class_path", why)
    return found


def module_function(class_path: str, base_dir: Path, name: str) -> Callable[..., Any] | None:
    """The function ``name`` of the module that defines the class ``class_path`` names (how an
    environment's episodes are drawn: ``train_episodes``, ``held_out_episodes``), or None."""
    module = sys.modules[import_class(class_path, base_dir).__module__]
    found = getattr(module, name, None)
    return found if callable(found) else None


def factory_settings(factory: Callable[[], Any]) -> Any:
    """The validated ``Settings`` a ``load_environment`` factory builds with; None without."""
    return factory.args[0] if isinstance(factory, partial) else None


def check_protocol(cls: type) -> None:
    """``cls`` has what TRL calls: ``reset``, ``get_reward`` and at least one public tool."""
    missing = [name for name in NOT_TOOLS if not callable(getattr(cls, name, None))]
    if missing:
        why = f"{cls.__qualname__} has no {' or '.join(missing)} (see flywheel.envs.protocol)"
        raise EnvironmentLoadError("class_path", why)


def load_environment(entry: EnvironmentSpec, base_dir: Path) -> Callable[[], Any]:
    """A zero-argument factory of ``entry``'s environment, its settings already validated."""
    cls = import_class(entry.class_path, base_dir)
    check_protocol(cls)
    model = getattr(cls, "Settings", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        if entry.settings:
            why = f"{cls.__qualname__} declares no Settings model, so it takes no settings"
            raise EnvironmentLoadError("settings", why)
        factory: Callable[[], Any] = cls
    else:
        try:
            settings = model.model_validate(entry.settings)
        except ValidationError as exc:
            raise EnvironmentLoadError("settings", _validation(exc, cls)) from None
        factory = partial(cls, settings)
    try:
        env = factory()
    except Exception as exc:  # noqa: BLE001 - a constructor is user code
        why = f"{cls.__qualname__}(...) failed: {type(exc).__name__}: {exc}"
        raise EnvironmentLoadError("class_path", why) from exc
    lacking = [name for name in ("done", "truncated") if not hasattr(env, name)]
    if lacking or not tool_methods(env):
        why = f"no {' or '.join(lacking)} attribute" if lacking else "no public tool method"
        raise EnvironmentLoadError("class_path", f"{cls.__qualname__} has {why}")
    return factory


def load_environments(spec: Spec) -> dict[str, Callable[[], Any]]:
    """Every ``environments`` entry by name (TRL's dict ``environment_factory``); raises the
    first entry's error, named (preflight reports all of them)."""
    factories = {}
    for i, entry in enumerate(spec.environments):
        try:
            factories[entry.name] = load_environment(entry, spec.base_dir)
        except EnvironmentLoadError as exc:
            raise EnvironmentLoadError(exc.field, f"environments[{i}].{exc.field}: {exc}") from exc
    return factories


def _validation(exc: ValidationError, cls: type) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )
    return f"invalid settings for {cls.__qualname__}: {problems}"
