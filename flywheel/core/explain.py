"""``flywheel check --explain``: every field of the spec, with its real default and description.

flywheel check --explain | grep '^cycles'
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from flywheel.core.spec import Spec


def explain(model: type[BaseModel] = Spec) -> list[str]:
    """One line per field (``flywheel check --explain``): ``key = default  # description``, or
    ``key: description`` for a section, walking nested sections, lists of models
    (``eval.tasks[].name``) and unions of models (``sources[kind=jsonl].path``).

    A default is the value an unset key really gets: the field of the enclosing section's
    default (``cycles.train.steps`` shows what an unset ``cycles.train`` holds). A list item's
    field shows the item model's own default, or ``(required)``.
    """
    return _explain(model, model(), "", ())


def _explain(model: type[BaseModel], value: Any, prefix: str, seen: tuple[type, ...]) -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if value is not None:
            default = getattr(value, name)
        else:
            default = None if field.is_required() else field.get_default(call_default_factory=True)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{key}: {field.description}")
            lines += _explain(ann, default, key + ".", (*seen, model))
            continue
        shown = REQUIRED if field.is_required() and value is None else _json(default)
        lines.append(f"{key} = {shown}  # {field.description}")
        items = _item_models(ann)
        for item in items:
            if item not in seen:  # a recursive model (sft.data.extra) is unrolled once
                tag = _tag(item) if len(items) > 1 else ""
                lines += _explain(item, None, f"{key}[{tag}].", (*seen, model))
    return lines


REQUIRED = "(required)"


def _json(value: Any) -> str:
    return json.dumps(to_jsonable_python(value))


def _item_models(ann: Any) -> list[type[BaseModel]]:
    """The models a list or union annotation holds (``list[SourceSpec]``: the four sources)."""
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(ann):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        else:
            found += _item_models(arg)
    return found


def _tag(model: type[BaseModel]) -> str:
    """How a union member is told apart: its single-value Literal field (``kind=jsonl``)."""
    for name, field in model.model_fields.items():
        args = typing.get_args(field.annotation)
        if typing.get_origin(field.annotation) is typing.Literal and len(args) == 1:
            return f"{name}={args[0]}"
    return model.__name__
