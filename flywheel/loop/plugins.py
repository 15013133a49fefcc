"""User code a spec names: its ``plugins`` modules and ``kind: python`` verifier functions.

    python -c "from flywheel.core.spec import load_spec; from flywheel.loop.plugins import \
load_plugins; load_plugins(load_spec())"

Both are imported with the spec's directory (``spec.base_dir``) first on ``sys.path``, so a
module next to ``flywheel.yaml`` imports whatever the working directory of the process is (the
CLI, a Dagster run, ``python -m flywheel.loop.eval`` from elsewhere). A plugin module does its
work when imported: e.g. ``register_verifier("last_word", fn)`` makes ``kind: last_word`` usable
in ``acceptance.verifier`` and ``eval.tasks[].verifier``. Eval, acceptance and preflight call
``load_plugins`` before they use a verifier; importing a module twice runs it once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only its fields are read
    from flywheel.core.spec import Spec


@contextmanager
def importable_from(directory: Path) -> Iterator[None]:
    """``directory`` first on ``sys.path`` for the duration, as the stage's process has its
    working directory (the project root, where the spec lives) when it imports user code."""
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    importlib.invalidate_caches()  # a module written since the last import is found
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def import_plugins(modules: Sequence[str], directory: Path) -> dict[int, BaseException]:
    """Import every module from ``directory`` (and ``sys.path``); what each failure raised,
    by the module's index, so a caller can report all of them at once."""
    failed: dict[int, BaseException] = {}
    with importable_from(directory):
        for i, name in enumerate(modules):
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - importing user code can raise anything
                failed[i] = exc
    return failed


def load_plugins(spec: Spec) -> None:
    """Import the spec's ``plugins``; raise ``ImportError`` naming every one that failed."""
    failed = import_plugins(spec.plugins, spec.base_dir)
    if failed:
        why = "; ".join(
            f"plugins[{i}] {spec.plugins[i]!r}: {type(exc).__name__}: {exc}"
            for i, exc in failed.items()
        )
        raise ImportError(f"cannot import the spec's plugins ({spec.base_dir}): {why}")


def load_function(path: str) -> Callable[..., Any]:
    """The callable named by ``package.module:function``; errors name the path and the cause."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"verifier function {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"verifier function {path!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ImportError(f"verifier function {path!r}: {module_name!r} has no {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"verifier function {path!r} is a {type(fn).__name__}, not callable")
    return fn
