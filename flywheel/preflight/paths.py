"""Every path the spec names, found by walking its settings models, checked before a run.

    python -c "from flywheel.core.spec import load_spec; from flywheel.preflight.paths \
import path_fields; print([f.key for f in path_fields(load_spec())])"

``path_fields`` visits every field annotated ``Path`` (or ``Path | None``, or a list of
paths) in every nested section and list item of the spec, so a path field added to a settings
model is checked without being listed here. ``KINDS`` says what each known field must be (a
file, a directory, an output location); a field it does not name must at least exist.
``READ_WHEN`` says when a field is read at all: a path set where nothing reads it (a
``sft.data.path`` with ``kind: arithmetic``) is a warning, since the run silently ignores it.
Sources name their inputs as strings (a file or a glob): ``flywheel.preflight.samples``
resolves them with the ingest readers' own ``source_files``.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel

from flywheel.core.settings.loop import PromptSource, ServeSettings, VerifierSettings
from flywheel.core.settings.train import (
    EvalTask,
    ModelSettings,
    SftData,
    TokenizerSettings,
    TrainSettings,
)
from flywheel.core.spec import Spec
from flywheel.preflight.problems import Problem, error, warning

PathKind = Literal["file", "dir", "executable", "output_dir", "output_file", "exists"]

# What the stage that reads each path needs it to be; keyed by the model that declares the
# field (a subclass, e.g. SftSettings of TrainSettings, is found through its MRO).
KINDS: dict[tuple[type[BaseModel], str], PathKind] = {
    (Spec, "data_dir"): "output_dir",
    (Spec, "catalog"): "output_file",
    (TokenizerSettings, "path"): "dir",
    (ModelSettings, "path"): "dir",
    (SftData, "path"): "file",
    (EvalTask, "path"): "file",
    (PromptSource, "path"): "file",
    (TrainSettings, "accelerate_config"): "file",
    (ServeSettings, "executable"): "executable",
    (VerifierSettings, "reward_model"): "dir",
}

# Directories that only work with one of these files in them (Hugging Face from_pretrained).
CONTENTS: dict[tuple[type[BaseModel], str], tuple[str, ...]] = {
    (ModelSettings, "path"): ("config.json",),
    (VerifierSettings, "reward_model"): ("config.json",),
    (TokenizerSettings, "path"): ("tokenizer.json", "tokenizer_config.json"),
}

# When a path is read at all, as (predicate over the spec and the owning model, why not).
Reads = Callable[[Spec, Any], bool]
READ_WHEN: dict[tuple[type[BaseModel], str], tuple[Reads, str]] = {
    (SftData, "path"): (lambda s, o: o.kind in ("jsonl", "parquet"), "only kind jsonl/parquet"),
    (EvalTask, "path"): (lambda s, o: o.kind == "jsonl", "only kind jsonl reads it"),
    (PromptSource, "path"): (lambda s, o: o.kind == "jsonl", "only kind jsonl reads it"),
    (VerifierSettings, "reward_model"): (
        lambda s, o: o.kind == "reward_model",
        "only verifier kind reward_model reads it",
    ),
    (ServeSettings, "executable"): (
        lambda s, o: s.generation.backend == "openai" and s.generation.endpoint.url is None,
        "only backend openai without endpoint.url starts a server",
    ),
}


@dataclass(frozen=True)
class PathField:
    """One path-valued field of the spec: where it is, who owns it, and its value."""

    key: str  # the spec key: eval.tasks[1].path
    owner: BaseModel
    name: str
    value: Path | None


def _is_path(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return True
    return any(_is_path(arg) for arg in typing.get_args(annotation))


def path_fields(model: BaseModel, prefix: str = "") -> Iterator[PathField]:
    """Every ``Path`` field under ``model``, set or not, in declaration order."""
    for name, field in type(model).model_fields.items():
        key, value = f"{prefix}{name}", getattr(model, name)
        items = value if isinstance(value, list | tuple) else None
        if items is None and _is_path(field.annotation):
            yield PathField(key, model, name, value)
        elif isinstance(value, BaseModel):
            yield from path_fields(value, f"{key}.")
        elif items is not None:
            for i, item in enumerate(items):
                if isinstance(item, BaseModel):
                    yield from path_fields(item, f"{key}[{i}].")
                elif isinstance(item, PurePath):
                    yield PathField(f"{key}[{i}]", model, name, Path(item))


def _lookup(table: dict[tuple[type[BaseModel], str], Any], owner: BaseModel, name: str) -> Any:
    for cls in type(owner).__mro__:
        if (cls, name) in table:
            return table[(cls, name)]
    return None


def resolve(spec: Spec, path: Path) -> Path:
    """A spec path as the stages read it: relative ones against the spec's directory."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else spec.base_dir / path


def check_paths(spec: Spec) -> list[Problem]:
    """A problem for every path the run will read that is missing or of the wrong kind."""
    problems = []
    for f in path_fields(spec):
        if f.value is None:
            continue
        path = resolve(spec, f.value)
        read_when = _lookup(READ_WHEN, f.owner, f.name)
        if read_when is not None and not read_when[0](spec, f.owner):
            if not _is_default(spec, f):  # a default nothing reads is no news
                problems.append(warning(f.key, f"set but not read: {read_when[1]}", path))
            continue
        kind: PathKind = _lookup(KINDS, f.owner, f.name) or "exists"
        message = _check(path, kind) or _contents(path, _lookup(CONTENTS, f.owner, f.name))
        if message:
            problems.append(error(f.key, message, path))
    return problems


def _is_default(spec: Spec, f: PathField) -> bool:
    # Compared by value, not model_fields_set: parse_spec assigns the resolved paths back.
    default = type(f.owner).model_fields[f.name].get_default(call_default_factory=True)
    if not isinstance(default, PurePath) or f.value is None:
        return default is None and f.value is None
    return os.path.abspath(resolve(spec, Path(default))) == os.path.abspath(f.value)


def _check(path: Path, kind: PathKind) -> str | None:
    """Why ``path`` cannot serve as ``kind``, or None."""
    if kind in ("output_dir", "output_file"):
        return _writable(path, want_dir=kind == "output_dir")
    if not path.exists():
        what = {"dir": "directory", "exists": "file or directory"}.get(kind, "file")
        return f"no such {what}"
    if kind == "dir" and not path.is_dir():
        return "is a file, not a directory"
    if kind in ("file", "executable") and path.is_dir():
        return "is a directory, not a file"
    if kind == "executable" and not os.access(path, os.X_OK):
        return "is not executable"
    return None


def _writable(path: Path, want_dir: bool) -> str | None:
    """Why the run could not create or write ``path``, or None."""
    if path.exists():
        if want_dir != path.is_dir():
            return "exists and is a " + ("file, not a directory" if want_dir else "directory")
        return None if os.access(path, os.W_OK) else "is not writable"
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot be created: {ancestor} is not a writable directory"
    return None


def _contents(path: Path, expected: tuple[str, ...] | None) -> str | None:
    if not expected or any((path / name).is_file() for name in expected):
        return None
    return f"has no {' or '.join(expected)}: not a Hugging Face directory of that kind"
