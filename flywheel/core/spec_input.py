"""A spec's text as input, and its problems as messages for the user.

    python -c "from flywheel.core.spec import load_spec; load_spec(overrides=['sft.stepz=1'])"

``apply_override`` sets one ``key.path=value`` (the value read as YAML) in the raw mapping
before validation; ``format_errors`` turns pydantic's errors into one line each, with the key
path as the user wrote it (union tags dropped) and a "did you mean" for a misspelt key.
``flywheel.core.spec`` loads and validates; this module knows nothing of its sections.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class SpecError(ValueError):
    """A spec that cannot be used; the message is meant for the user as it is."""


def format_errors(exc: ValidationError, path: Path, root: type[BaseModel]) -> str:
    """One line per problem: the key path as the user wrote it, what is wrong, what was given."""
    lines = [f"{path}: invalid spec ({exc.error_count()} problem(s))"]
    tags = union_tags(root)
    for err in exc.errors():
        loc = _key_path(err["loc"], tags)
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key{_suggest(err['loc'], root, tags)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


@functools.cache
def union_tags(root: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """The tags of ``root``'s tagged unions (a source's ``kind``: ``jsonl``,
    ``visual_counting``, ...), each with the model it selects. Pydantic adds the tag to an error's
    location (``sources[0].jsonl.path``); read from the validator's own schema, so a kind added
    to any union is known here without being listed."""
    tags: dict[str, type[BaseModel] | None] = {}
    definitions: dict[str, Any] = {}
    unions: list[dict[str, Any]] = []
    stack: list[Any] = [root.__pydantic_core_schema__]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "ref" in node:
                definitions[node["ref"]] = node
            if node.get("type") == "tagged-union":
                unions.append(node)
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    for union in unions:
        for tag, choice in union["choices"].items():
            tags[str(tag)] = _model_of(choice, definitions)
    return tags


def _model_of(schema: dict[str, Any], definitions: dict[str, Any]) -> type[BaseModel] | None:
    """The model class a union choice validates (through references and validators)."""
    for _ in range(16):  # a choice is a model under a few wrappers (model_validator, ref)
        if schema.get("type") == "definition-ref":
            schema = definitions.get(schema["schema_ref"], {})
        elif isinstance(schema.get("cls"), type) and issubclass(schema["cls"], BaseModel):
            return schema["cls"]
        elif isinstance(schema.get("schema"), dict):
            schema = schema["schema"]
        else:
            return None
    return None


def _key_path(loc: tuple[Any, ...], tags: Mapping[str, Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tags and out.endswith("]"):
            continue  # pydantic adds the union tag to the location; the user never wrote it
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _suggest(loc: tuple[Any, ...], root: type[BaseModel], tags: Mapping[str, Any]) -> str:
    """'did you mean ...' for a misspelt key, from the fields of the model that owns it (in a
    list of tagged kinds, the model of the entry's kind)."""
    model: Any = root
    for i, part in enumerate(loc[:-1]):
        if i and isinstance(loc[i - 1], int) and part in tags:
            model = tags[part]
            continue
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        ann = getattr(field, "annotation", None)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def apply_override(raw: dict[str, Any], item: str, path: Path) -> None:
    """Apply ``a.b.c=value``; the value is parsed as YAML, so types come out right."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SpecError(f"{path}: override {item!r} must look like key.path=value")
    parts = key.split(".")
    node: Any = raw
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise SpecError(f"{path}: override {key!r}: {part!r} is not a mapping or list index")
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = yaml.safe_load(value)
    elif isinstance(node, dict):
        node[last] = yaml.safe_load(value)
    else:
        raise SpecError(f"{path}: override {key!r}: cannot set {last!r} here")


def kind_of(obj: Any) -> str:
    """What a YAML value is, for a message: ``list``, ``str``."""
    return type(obj).__name__
