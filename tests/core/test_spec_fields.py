"""Every leaf field of the spec does something, and ``flywheel check --explain`` lists each one.

A field nothing reads is a promise the code does not keep (setting it silently changes
nothing). ``READERS`` names, per section of the spec, the files that consume it; each leaf
field must be read (``.name``, or ``"name"`` for getattr) in the files of its section. A new
field fails here until the code that is meant to use it reads it; a new section fails until
it gets an entry. ``cycles.train`` and ``cycles.preference_train`` are overrides merged into
effective settings, so each of their fields must change the effective settings, whose readers
are checked in turn.

    .venv/bin/python -m pytest -q tests/core/test_spec_fields.py
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from pydantic import BaseModel

from flywheel.core.explain import explain
from flywheel.core.settings.loop import CycleTrain, PreferenceTrain
from flywheel.core.settings.train import SftSettings
from flywheel.core.spec import Spec

ROOT = Path(__file__).resolve().parents[2]

# Section (a key prefix, list items and union members spelt without their [...]) -> the
# files that read its fields. The longest matching prefix decides.
# flywheel/train/optim.py reads every training stage's optimizer and its knobs
OPTIM = "flywheel/train/optim.py"
TRAIN = ("flywheel/train/finetune.py", "flywheel/train/sft.py", "flywheel/train/launch.py", OPTIM)
READERS: dict[str, tuple[str, ...]] = {
    "name": ("flywheel/cli.py", "flywheel/core/spec.py"),
    "owners": ("assets/documents.py", "assets/training.py", "assets/cycles.py"),
    "data_dir": ("flywheel/core/spec.py", "flywheel/loop/report.py"),
    "catalog": ("flywheel/data/stages.py", "flywheel/loop/report.py"),
    "sources": (
        "flywheel/data/ingest/readers.py",
        "flywheel/data/ingest/run.py",
        "flywheel/data/ingest/python_env.py",
        "assets/documents.py",
    ),
    "ingest": ("flywheel/data/stages.py",),
    "filters": ("flywheel/data/filters/gopher.py", "flywheel/data/filters/c4.py"),
    "filters.gopher_quality.enabled": ("flywheel/data/filters/apply.py",),
    "filters.gopher_repetition.enabled": ("flywheel/data/filters/apply.py",),
    "filters.c4.enabled": ("flywheel/data/filters/apply.py",),
    "dedup": ("flywheel/data/dedup/index.py",),
    # resolve_bands (called by the index) reads these
    "dedup.bands": ("flywheel/core/settings/dedup.py",),
    "dedup.rows": ("flywheel/core/settings/dedup.py",),
    "dedup.false_positive_weight": ("flywheel/core/settings/dedup.py",),
    "dedup.false_negative_weight": ("flywheel/core/settings/dedup.py",),
    "images": ("flywheel/data/images/pipeline.py",),
    "images.sources": (
        "flywheel/data/images/sources.py",
        "flywheel/data/images/ingest.py",
        "assets/images.py",
    ),
    "images.decode": ("flywheel/data/images/decode.py",),
    "images.filters": ("flywheel/data/images/filters.py",),
    "images.filters.caption_filters": (
        "flywheel/data/filters/gopher.py",
        "flywheel/data/filters/c4.py",
        "flywheel/data/filters/apply.py",
    ),
    "images.dedup": ("flywheel/data/images/dedup.py", "flywheel/core/settings/images.py"),
    "engine": ("flywheel/preflight/references.py",),
    "ray": ("flywheel/data/dedup/ray_engine.py",),
    "validation": ("flywheel/data/stages.py", "assets/checks.py"),
    "tokenizer": ("flywheel/train/tokenizer.py", "assets/training.py"),
    "packing": ("flywheel/train/packing.py",),
    "model": ("flywheel/train/model.py", "flywheel/train/pretrain.py"),
    "pretrain": ("flywheel/train/pretrain.py", "flywheel/train/launch.py", OPTIM),
    "sft": TRAIN,
    "sft.data": ("flywheel/train/sft_data.py",),
    "eval": ("flywheel/loop/eval/__main__.py", "flywheel/loop/eval/scores.py"),
    "eval.tasks": ("flywheel/loop/tasks.py", "flywheel/loop/eval/tasks.py"),
    "eval.tasks.verifier": ("flywheel/loop/verifiers.py",),  # the one acceptance uses
    "generation": (
        "flywheel/loop/generate/base.py",
        "flywheel/loop/generate/backends.py",
        "flywheel/loop/generate/generations.py",
    ),
    "generation.prompts": ("flywheel/loop/prompts.py",),
    # PromptSource.digits (called by flywheel.loop.prompts) reads these
    "generation.prompts.curriculum": ("flywheel/core/settings/loop.py",),
    "generation.prompts.min_digits": ("flywheel/core/settings/loop.py",),
    "generation.prompts.max_digits": ("flywheel/core/settings/loop.py",),
    "generation.endpoint": ("flywheel/loop/generate/endpoint.py",),
    "acceptance": ("flywheel/loop/accept.py", "flywheel/loop/accept_gates.py"),
    "acceptance.verifier": ("flywheel/loop/verifiers.py",),
    "plugins": ("flywheel/loop/plugins.py",),
    "environments": ("flywheel/envs/load.py",),
    "agent": ("flywheel/loop/agents/cycle.py",),
    "vision": (
        "flywheel/loop/vision/data.py",
        "flywheel/loop/vision/seed.py",
        "flywheel/loop/vision/generate.py",
        "flywheel/loop/vision/accept.py",
    ),
    "vision.tower": ("flywheel/train/vlm/model.py",),  # handed whole to VisionTower
    "cycles": ("sensors/cycles.py", "flywheel/loop/cycles.py", "flywheel/loop/promotion.py"),
    "cycles.preference": ("flywheel/loop/retrain.py",),
    "cycles.method": ("flywheel/loop/retrain.py", "flywheel/loop/agents/cycle_rl.py"),
    "cycles.ppo": (
        "flywheel/loop/agents/cycle_rl.py",
        "flywheel/loop/agents/ppo_train.py",
        "flywheel/loop/agents/ppo_rollouts.py",
        "flywheel/loop/agents/ppo_state.py",
        OPTIM,
    ),
    # overrides: test_overrides_reach_the_effective_settings, then their readers
    "cycles.train": TRAIN,
    "cycles.preference_train": (*TRAIN, "flywheel/loop/preference.py", "flywheel/loop/retrain.py"),
    # each stage hands its lora block to flywheel.train.lora, which reads the fields
    "sft.lora": (*TRAIN, "flywheel/train/lora.py"),
    "cycles.train.lora": (*TRAIN, "flywheel/train/lora.py"),
    "cycles.preference_train.lora": ("flywheel/loop/preference.py", "flywheel/train/lora.py"),
    "cycles.ppo.lora": ("flywheel/loop/agents/cycle_rl.py", "flywheel/train/lora.py"),
}


def _item_models(ann: typing.Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(ann):
        is_model = isinstance(arg, type) and issubclass(arg, BaseModel)
        found += [arg] if is_model else _item_models(arg)
    return found


def leaves(
    model: type[BaseModel] = Spec, prefix: str = "", above: tuple[type, ...] = ()
) -> Iterator[tuple[str, type[BaseModel], str]]:
    """(key, owning model, field name) of every leaf field, keys spelt as --explain spells
    them; a model inside itself (sft.data.extra) is unrolled once."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from leaves(ann, f"{prefix}{name}.", (*above, model))
            continue
        yield f"{prefix}{name}", model, name
        items = [m for m in _item_models(ann) if m not in above]
        for item in items:
            kind = item.model_fields.get("kind")
            tag = f"kind={kind.default}" if len(items) > 1 and kind else ""
            yield from leaves(item, f"{prefix}{name}[{tag}].", (*above, model))


def section(key: str) -> str:
    plain = re.sub(r"\[[^]]*\]", "", key)
    matches = [p for p in READERS if plain == p or plain.startswith(p + ".")]
    assert matches, f"{key}: no READERS entry names the files that read it"
    return max(matches, key=len)


@cache
def source(path: str) -> str:
    return (ROOT / path).read_text()


def test_every_leaf_field_is_read_where_its_section_is_used() -> None:
    unread = []
    for key, _, name in leaves():
        files = READERS[section(key)]
        if not any(re.search(rf"\.{name}\b|[\"']{name}[\"']", source(f)) for f in files):
            unread.append(f"{key} (in none of {', '.join(files)})")
    assert unread == [], "fields nothing reads:\n" + "\n".join(unread)


def test_every_leaf_field_has_a_description() -> None:
    bare = [key for key, model, name in leaves() if not model.model_fields[name].description]
    assert bare == []


def test_readers_table_has_no_stale_entries() -> None:
    used = {section(key) for key, _, _ in leaves()}
    assert sorted(set(READERS) - used) == []
    assert all((ROOT / f).is_file() for files in READERS.values() for f in files)


def _other(field: typing.Any, current: typing.Any) -> typing.Any:
    """A valid value of ``field`` that differs from ``current``."""
    ann = [a for a in typing.get_args(field.annotation) if a is not type(None)]
    kind = ann[0] if ann else field.annotation
    if isinstance(current, BaseModel):  # a block (lora): the same with its switch flipped
        return current.model_copy(update={"enabled": not current.enabled})
    return kind(current * 2 + 1) if isinstance(current, int | float) else kind(7)


@pytest.mark.parametrize("name", list(CycleTrain.model_fields))
def test_cycle_overrides_reach_the_effective_settings(name: str) -> None:
    sft = SftSettings()
    value = _other(CycleTrain.model_fields[name], getattr(sft, name))
    effective = CycleTrain(**{name: value}).over(sft)
    assert getattr(effective, name) == value != getattr(sft, name)
    unset = CycleTrain(**{name: None}).over(sft)
    assert getattr(unset, name) == getattr(sft, name)  # null: sft's


@pytest.mark.parametrize("name", list(PreferenceTrain.model_fields))
def test_preference_fields_reach_the_effective_settings(name: str) -> None:
    train = SftSettings(micro_batch=6)
    default = getattr(PreferenceTrain().over(train), name)
    value = _other(PreferenceTrain.model_fields[name], default)
    assert getattr(PreferenceTrain(**{name: value}).over(train), name) == value != default


# values for the required fields of list items
MINIMAL = {"name": "x", "path": "p", "class_path": "m:C", "environment": "x"}


def _walk(value: typing.Any, parts: list[str]) -> typing.Any:
    for part in parts:
        value = value[part]
    return value


def test_explain_lists_every_leaf_with_its_real_default() -> None:
    """The default shown is what an unset key gets: walked from ``Spec()`` for sections,
    from a minimal item for list items (``(required)`` where the item has no default), down
    the item's own sections (``eval.tasks[].verifier.kind`` is the task's default verifier's)."""
    fields = [re.fullmatch(r"(\S+) = (.*?)  # .*", line) for line in explain()]
    shown = {m[1]: m[2] for m in fields if m}
    resolved = Spec().model_dump(mode="json")
    owners = {key: model for key, model, _ in leaves()}
    missing = []
    for key, model, name in leaves():
        if "[" not in key:
            expected = _json(_walk(resolved, key.split(".")))
        elif model.model_fields[name].is_required():
            expected = "(required)"
        else:
            head, _, rest = key.rpartition("].")
            # the list's item model: the owner of a field directly in the item
            inside = f"{head}]."
            item_model = next(
                m for k, m in owners.items() if k.startswith(inside) and "." not in k[len(inside) :]
            )
            required = {k for k, f in item_model.model_fields.items() if f.is_required()}
            item = item_model(**{k: v for k, v in MINIMAL.items() if k in required})
            expected = _json(_walk(item.model_dump(mode="json"), rest.split(".")))
        if shown.get(key) != expected:
            missing.append(f"{key}: shows {shown.get(key)}, default {expected}")
    assert missing == []
    assert len(shown) == len(list(leaves())) == len([m for m in fields if m])  # once each
    assert shown["cycles.train.steps"] == "300" and shown["cycles.train.lr"] == "null"
    assert shown["sources[kind=jsonl].path"] == "(required)"


def _json(value: typing.Any) -> str:
    import json

    return json.dumps(value)
