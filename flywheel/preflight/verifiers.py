"""Every verifier the spec names can score: ``acceptance.verifier`` and each eval task's.

    python -c "from flywheel.core.spec import load_spec; from flywheel.preflight.verifiers \
import check_verifiers; print(*check_verifiers(load_spec()), sep='\\n')"

The spec's ``plugins`` are imported first (``flywheel.loop.plugins``, as eval and acceptance
import them), so the kinds they register are known. Then, for every verifier setting:

- its kind is built in or registered (else one error naming the key, the known kinds, and
  that ``plugins`` or ``kind: python`` is how to add one);
- a ``python`` function imports with the spec's directory on ``sys.path`` and can be called
  as ``fn(prompt, completion, answer)``; a registered function as ``fn(completion, answer,
  pattern)``;
- ``regex`` has a pattern that compiles; a ``function`` or ``pattern`` no kind reads is a
  warning.

Answers the numeric verifier cannot read are found by ``flywheel.preflight.samples``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flywheel.core.settings.verifier import BUILTIN_KINDS, VerifierSettings
from flywheel.core.spec import Spec
from flywheel.loop.plugins import import_plugins, importable_from, load_function
from flywheel.loop.verifiers import VERIFIERS, known_kinds, unknown_kind
from flywheel.preflight.problems import Problem, error, warning


def check_verifiers(spec: Spec) -> list[Problem]:
    """A problem for every plugin that does not import and every verifier that cannot score."""
    problems = _plugins(spec)
    named = [("acceptance.verifier", spec.acceptance.verifier)]
    named += [(f"eval.tasks[{i}].verifier", t.verifier) for i, t in enumerate(spec.eval.tasks)]
    with importable_from(spec.base_dir):
        for key, verifier in named:
            problems += _verifier(key, verifier)
    return problems


def _plugins(spec: Spec) -> list[Problem]:
    failed = import_plugins(spec.plugins, spec.base_dir)
    return [
        error(
            f"plugins[{i}]",
            f"cannot import {spec.plugins[i]!r}: {type(exc).__name__}: {exc}",
            _module_file(exc),
        )
        for i, exc in failed.items()
    ]


def _verifier(key: str, verifier: VerifierSettings) -> list[Problem]:
    kind = verifier.kind
    if kind not in known_kinds():
        return [error(f"{key}.kind", unknown_kind(kind))]
    problems = []
    if kind == "python":
        problems += _function(f"{key}.function", verifier.function or "")
    elif verifier.function is not None:
        problems.append(warning(f"{key}.function", f"set but not read: the kind is {kind!r}"))
    if kind not in BUILTIN_KINDS:  # registered by a plugin
        args = ("completion", "answer", "pattern")
        problems += _callable_as(f"{key}.kind", VERIFIERS[kind], args)
    return problems + _pattern(f"{key}.pattern", kind, verifier.pattern)


def _pattern(key: str, kind: str, pattern: str | None) -> list[Problem]:
    if kind == "regex" and not pattern:
        return [error(key, "verifier regex needs a pattern (e.g. 'answer: {answer}\\b')")]
    if kind == "regex" and pattern:
        try:  # as the verifier compiles it, with a stand-in answer
            re.compile(pattern.replace("{answer}", "0"))
        except re.error as exc:
            return [error(key, f"{pattern!r} is not a valid regex: {exc}")]
    elif pattern and kind in BUILTIN_KINDS:
        why = f"only kind regex and registered kinds read it (this one is {kind!r})"
        return [warning(key, f"set but not read: {why}")]
    return []


def _function(key: str, path: str) -> list[Problem]:
    try:
        fn = load_function(path)
    except Exception as exc:  # noqa: BLE001 - importing user code can raise anything
        return [error(key, _import_error(path, exc), _module_file(exc))]
    return _callable_as(key, fn, ("prompt", "completion", "answer"))


def _import_error(path: str, exc: BaseException) -> str:
    if isinstance(exc, ImportError | TypeError | ValueError) and path in str(exc):
        return str(exc)  # load_function's own message already names the path
    return f"verifier function {path!r}: importing it raised {type(exc).__name__}: {exc}"


def _module_file(exc: BaseException) -> Path | None:
    """The file a syntax error is in, when that is the problem."""
    name = exc.filename if isinstance(exc, SyntaxError) else None
    return Path(name) if name else None


def _callable_as(key: str, fn: Callable[..., Any], args: tuple[str, ...]) -> list[Problem]:
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as exc:
        return [error(key, f"cannot be called as fn({', '.join(args)}): {exc}")]
    except ValueError:  # no signature to inspect (some builtins): the first call will tell
        pass
    return []
