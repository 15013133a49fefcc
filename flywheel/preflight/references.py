"""Names in the spec that must point at something: checked before a run, not when first used.

    python -c "from flywheel.core.spec import load_spec; from flywheel.preflight.references \
import check_references; print(*check_references(load_spec()), sep='\\n')"

- the spec's ``plugins`` import, and ``acceptance.verifier`` and every
  ``eval.tasks[].verifier`` can score (``flywheel.preflight.verifiers``: a known kind, a
  ``python`` function that imports from the spec's directory with the right signature, a
  regex pattern);
- ``cycles.gate.metric`` is a metric a cycle's eval produces (``eval_metrics``), and its
  ``mode`` points the right way;
- ``eval.tasks`` names are distinct (each is a metric key);
- ``cycles.preference`` fits its settings and the verifier that is its reward (an agent's
  ``cycles.method`` grpo: its settings);
- self-consistency can reach ``min_votes`` with ``samples_per_prompt`` samples;
- cycle 0's built-in prompts are not all evaluation prompts (which are never trained on);
- ``engine: ray`` has Ray Data installed, and ``launcher: ray`` Ray Train (found, not
  imported: importing Ray takes seconds).
"""

from __future__ import annotations

import difflib
import importlib.util

from pydantic import ValidationError

from flywheel.core.settings.loop import PreferenceTrain
from flywheel.core.settings.lora import LLAMA_MODULES
from flywheel.core.spec import Spec
from flywheel.loop.prompts import load_prompts, normalize
from flywheel.loop.tasks import load_task_examples
from flywheel.preflight.problems import Problem, counted, error, warning
from flywheel.preflight.verifiers import check_verifiers

LOWER_IS_BETTER = ("perplexity", "heldout_loss", "mean_turns")  # lower is better
HELD_OUT_METRICS = ("success", "mean_reward", "mean_turns")


def check_references(spec: Spec) -> list[Problem]:
    """A problem for every name in ``spec`` that points at nothing, or at the wrong thing."""
    return [
        *check_verifiers(spec),  # first: it imports the plugins that register verifier kinds
        *_eval_tasks(spec),
        *_gate(spec),
        *_votes(spec),
        *_cycle_settings(spec),
        *_preference(spec),
        *_lora(spec),
        *_eval_prompt_overlap(spec),
        *_engine(spec),
    ]


def _engine(spec: Spec) -> list[Problem]:
    if importlib.util.find_spec("ray") is not None:
        return []
    problems = []
    if spec.engine == "ray":
        problems.append(error("engine", "engine: ray needs Ray Data: pip install 'flywheel[ray]'"))
    for section in ("pretrain", "sft"):  # a cycle's retraining launches with sft's launcher
        if getattr(spec, section).launcher == "ray":
            what = f"{section}.launcher: ray needs Ray Train: pip install 'flywheel[ray]'"
            problems.append(error(f"{section}.launcher", what))
    return problems


def eval_metrics(spec: Spec) -> list[str]:
    """The metrics a cycle's eval (``flywheel.loop.eval.scores``) produces, that a gate can
    name: ``accuracy/<task>`` per eval task, and held-out perplexity when there is a split."""
    if spec.vision is not None:  # a VLM: held-out images (flywheel.loop.vision.evaluate)
        return ["vision/easy/accuracy", "vision/hard/accuracy"]
    metrics = [f"accuracy/{task.name}" for task in spec.eval.tasks]
    if spec.packing.heldout_fraction > 0:
        metrics += list(LOWER_IS_BETTER)
    if spec.agent is not None:  # held-out episodes (flywheel.loop.agents.cycle.evaluate_held_out)
        metrics += [f"env/{spec.agent.environment}/{m}" for m in HELD_OUT_METRICS]
    return metrics


def _gate(spec: Spec) -> list[Problem]:
    gate, metrics = spec.cycles.gate, eval_metrics(spec)
    if gate.metric not in metrics:
        close = difflib.get_close_matches(gate.metric, metrics, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if gate.metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER:
            hint = " (packing.heldout_fraction is 0: there is no held-out split)"
        produced = ", ".join(metrics) or "nothing"
        why = f"{gate.metric!r} is not a metric eval produces{hint}; it produces {produced}"
        return [error("cycles.gate.metric", f"{why}, so promotion would fail")]
    lower = gate.metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER
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
    return problems


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


def _lora(spec: Spec) -> list[Problem]:
    """Target modules a Llama built from ``model.config`` lacks (known without building it);
    another model type, or a model from a path, is checked when its stage starts."""
    if spec.model.path is not None or spec.model.config.get("model_type") != "llama":
        return []
    blocks = {"sft.lora": spec.sft.lora, "cycles.train.lora": spec.cycles.train.lora}
    blocks |= {"cycles.preference_train.lora": spec.cycles.preference_train.lora}
    blocks |= {"cycles.ppo.lora": spec.cycles.ppo.lora}
    problems = []
    for key, block in blocks.items():
        unknown = [m for m in block.target_modules if m not in LLAMA_MODULES] if block else []
        if block is not None and block.enabled and unknown:
            known = ", ".join(sorted(LLAMA_MODULES))
            why = f"{unknown} name no module of a llama model (its modules: {known})"
            problems.append(error(f"{key}.target_modules", why))
    return problems


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(map(str, err['loc']))}: {err['msg']} ({exc.error_count()} error(s))"


def _preference(spec: Spec) -> list[Problem]:
    kind = spec.cycles.preference
    if spec.agent is not None and spec.cycles.method.endswith("grpo"):
        return _agent_grpo(spec)  # an agent's GRPO reads cycles.preference_train too
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
    samples = ("generation.samples_per_prompt", spec.generation.samples_per_prompt)
    if spec.vision is not None:  # a VLM answers each image this many times
        samples = ("vision.samples_per_image", spec.vision.samples_per_image)
    if kind == "dpo" and samples[1] < 2:
        why = "dpo pairs an accepted and a rejected completion of one prompt"
        problems.append(error(samples[0], f"is 1, but {why}: no pairs"))
    verifier = spec.acceptance.verifier.kind
    if kind != "dpo" and verifier not in preference.REWARDS:
        why = f"{kind} rewards with the acceptance verifier, and kind {verifier!r} cannot be one"
        usable = ", ".join(preference.REWARDS)
        problems.append(error("acceptance.verifier.kind", f"{why} (use {usable})"))
    return problems


def _agent_grpo(spec: Spec) -> list[Problem]:
    """``cycles.method`` grpo / sft+grpo: the environment is the reward, the preference
    stage's settings are GRPO's (``flywheel.loop.agents.cycle_rl``)."""
    from flywheel.loop.agents.cycle_rl import check_rl_settings

    try:
        check_rl_settings(spec)
    except ValidationError as exc:
        return [error("cycles.preference_train", f"invalid: {_first(exc)}")]
    except ValueError as exc:
        return [error("cycles.preference_train", str(exc))]
    return []


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
    if reasons:
        n = sum(reasons.values())
        why = f"{n} of cycle 0's {source.num_prompts} prompts would be skipped ({counted(reasons)})"
        return [warning(key, why)]
    if len(loaded.examples) < source.num_prompts:  # a small built-in space, eval excluded
        why = (
            f"{source.kind} has only {len(loaded.examples)} distinct problems that are not "
            f"eval problems, fewer than num_prompts={source.num_prompts}: every cycle asks them"
        )
        return [warning(key, why)]
    return []
