"""Names in the spec that must point at something: checked before a run, not when first used.

    python -c "from flywheel.core.spec import load_spec; from flywheel.preflight.references \
import check_references; print(*check_references(load_spec()), sep='\\n')"

- ``acceptance.verifier.function`` imports (through ``load_function``, as acceptance does,
  with the spec's directory on ``sys.path``: where a Dagster run started from the project
  root finds a module next to the spec) and can be called as ``fn(prompt, completion, answer)``;
- ``cycles.gate.metric`` is a metric a cycle's eval produces (``eval_metrics``), and its
  ``mode`` points the right way;
- ``eval.tasks`` names are distinct (each is a metric key) and a regex verifier has a pattern;
- ``cycles.preference`` fits its settings and the verifier that is its reward;
- self-consistency can reach ``min_votes`` with ``samples_per_prompt`` samples;
- cycle 0's built-in prompts are not all evaluation prompts (which are never trained on).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flywheel.core.settings.loop import PreferenceTrain
from flywheel.core.spec import Spec
from flywheel.loop.prompts import load_prompts, normalize
from flywheel.loop.tasks import load_task_examples
from flywheel.loop.verifiers import load_function
from flywheel.preflight.problems import Problem, counted, error, warning

LOWER_IS_BETTER = ("perplexity", "heldout_loss")  # held-out metrics every eval reports


def check_references(spec: Spec) -> list[Problem]:
    """A problem for every name in ``spec`` that points at nothing, or at the wrong thing."""
    return [
        *_eval_tasks(spec),
        *_gate(spec),
        *_verifier_function(spec),
        *_votes(spec),
        *_cycle_settings(spec),
        *_preference(spec),
        *_eval_prompt_overlap(spec),
    ]


def eval_metrics(spec: Spec) -> list[str]:
    """The metrics a cycle's eval (``flywheel.loop.eval.scores``) produces, that a gate can
    name: ``accuracy/<task>`` per eval task, and held-out perplexity when there is a split."""
    metrics = [f"accuracy/{task.name}" for task in spec.eval.tasks]
    if spec.packing.heldout_fraction > 0:
        metrics += list(LOWER_IS_BETTER)
    return metrics


def _gate(spec: Spec) -> list[Problem]:
    gate, metrics = spec.cycles.gate, eval_metrics(spec)
    if gate.metric not in metrics:
        close = difflib.get_close_matches(gate.metric, metrics, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if gate.metric in LOWER_IS_BETTER:
            hint = " (packing.heldout_fraction is 0: there is no held-out split)"
        produced = ", ".join(metrics) or "nothing"
        why = f"{gate.metric!r} is not a metric eval produces{hint}; it produces {produced}"
        return [error("cycles.gate.metric", f"{why}, so promotion would fail")]
    lower = gate.metric in LOWER_IS_BETTER
    if lower != (gate.mode == "min"):
        want = "min" if lower else "max"
        why = f"{'lower' if lower else 'higher'} {gate.metric} is better"
        return [warning("cycles.gate.mode", f"is {gate.mode!r}, but {why}: use {want!r}")]
    return []


def _eval_tasks(spec: Spec) -> list[Problem]:
    problems, first = [], {}
    for i, task in enumerate(spec.eval.tasks):
        key = f"eval.tasks[{i}]"
        if task.name in first:
            why = f"{task.name!r} is also eval.tasks[{first[task.name]}]'s name"
            problems.append(error(f"{key}.name", f"{why}: one accuracy/ score would overwrite"))
        first.setdefault(task.name, i)
        if task.verifier == "regex" and not task.pattern:
            problems.append(error(f"{key}.pattern", "verifier regex needs a pattern"))
        elif task.pattern and task.verifier != "regex":
            why = f"only verifier regex reads it (this task's is {task.verifier!r})"
            problems.append(warning(f"{key}.pattern", f"set but not read: {why}"))
    return problems


@contextmanager
def importable_from(directory: Path) -> Iterator[None]:
    """``directory`` first on ``sys.path`` for the duration, as the stage's process has its
    working directory (the project root, where the spec lives) when it imports a verifier."""
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


def _verifier_function(spec: Spec) -> list[Problem]:
    verifier, key = spec.acceptance.verifier, "acceptance.verifier.function"
    if verifier.function is None:
        return []
    if verifier.kind != "python":
        return [warning(key, f"set but not read: the verifier kind is {verifier.kind!r}")]
    with importable_from(spec.base_dir):
        try:
            fn = load_function(verifier.function)
        except Exception as exc:  # noqa: BLE001 - importing user code can raise anything
            return [error(key, _import_error(verifier.function, exc), _module_file(exc))]
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


def _votes(spec: Spec) -> list[Problem]:
    verifier, k = spec.acceptance.verifier, spec.generation.samples_per_prompt
    if verifier.kind == "self_consistency" and verifier.min_votes > k:
        why = f"more than generation.samples_per_prompt ({k}): no prompt can reach a majority"
        return [error("acceptance.verifier.min_votes", f"{verifier.min_votes} is {why}")]
    return []


def _cycle_settings(spec: Spec) -> list[Problem]:
    """The effective settings of a cycle are sft's merged with overrides: validated again."""
    try:
        spec.cycles.train_settings(spec.sft)
    except ValidationError as exc:
        return [error("cycles.train", f"sft with these overrides is invalid: {_first(exc)}")]
    return []


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(map(str, err['loc']))}: {err['msg']} ({exc.error_count()} error(s))"


def _preference(spec: Spec) -> list[Problem]:
    kind = spec.cycles.preference
    if kind == "none":
        if spec.cycles.preference_train != PreferenceTrain():
            why = "cycles.preference is 'none'"
            return [warning("cycles.preference_train", f"set but not read: {why}")]
        return []
    from flywheel.loop import preference  # TRL and torch: only for a spec that uses them

    problems = []
    try:
        settings = spec.cycles.preference_settings(spec.sft)
        preference.check_settings(kind, settings, settings.num_processes)
    except ValidationError as exc:
        problems.append(error("cycles.preference_train", f"invalid: {_first(exc)}"))
    except ValueError as exc:
        problems.append(error("cycles.preference_train", str(exc)))
    if kind == "dpo" and spec.generation.samples_per_prompt < 2:
        why = "dpo pairs an accepted and a rejected completion of one prompt"
        problems.append(error("generation.samples_per_prompt", f"is 1, but {why}: no pairs"))
    verifier = spec.acceptance.verifier.kind
    if kind != "dpo" and verifier not in preference.REWARDS:
        why = f"{kind} rewards with the acceptance verifier, and kind {verifier!r} cannot be one"
        usable = ", ".join(preference.REWARDS)
        problems.append(error("acceptance.verifier.kind", f"{why} (use {usable})"))
    return problems


def _eval_prompt_overlap(spec: Spec) -> list[Problem]:
    """Cycle 0's built-in prompts, less the eval prompts, as generation draws them."""
    source, key = spec.generation.prompts, "generation.prompts"
    if source.kind == "jsonl":
        return []  # its records are sampled by flywheel.preflight.samples
    exclude: set[str] = set()
    for task in spec.eval.tasks:
        try:
            exclude |= {normalize(e["prompt"]) for e in load_task_examples(task).examples}
        except (OSError, ValueError):  # a missing or unusable task file: reported on its own
            continue
    try:
        loaded = load_prompts(source, cycle=0, exclude=exclude)
    except ValueError as exc:
        return [error(key, str(exc))]
    reasons = {k.split("/", 1)[1]: n for k, n in loaded.counts.items() if "/" in k}
    if not reasons:
        return []
    n = sum(reasons.values())
    why = f"{n} of cycle 0's {source.num_prompts} prompts would be skipped ({counted(reasons)})"
    return [warning(key, why)]
