"""Build keys: what a derived artifact was built from, so a rerun reuses it or rebuilds it.

    python -c "from flywheel.core import keys; print(keys.changes({'data:seed data': \
'sha256:ab12'}, {'data:seed data': 'sha256:cd34'}))"

A build key is a flat ``{part: value}`` mapping of strings, one part per thing that decides
the artifact's content:

- ``input:<product>``: the version of every input artifact it read;
- ``spec:<section>``: a fingerprint of each spec section (or field) the stage reads, and only
  those, so editing an unrelated section rebuilds nothing;
- ``data:<what>``: a content fingerprint (``sha256:...``) of each external thing it reads
  that is not a product: the seed SFT data, eval task files, prompts, a verifier's source;
- ``code:<stage>``: the stage code's own version, where it has one;
- any other part: a plain value that decides the output (the cycle).

Every stage that publishes under a root stores its key in the manifest's ``meta`` as
``build_key``, with ``build_changes``: what differs from the version that was current before
(``changes``, e.g. ``seed data changed: sha256 ab12cd34.. -> 9f8e7d6c..``), which the logs, the
materialization's metadata and ``flywheel lineage`` show. A rerun whose key equals the current
version's reuses it (``reusable``); any other key builds a new version. A stage that must not
build a new version (its product was already read by products that cannot be redone) raises
``StaleError`` naming the changed parts instead. The same key, computed the same way, is
what every entry point (``flywheel train ...``, ``python -m ...``, a Dagster asset) compares.

Tested by ``pytest tests/core/test_keys.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flywheel.core import artifacts

KEY = "build_key"  # in an artifact's meta: the key it was built with
CHANGES = "build_changes"  # in an artifact's meta: what changed since the version before it
SHOWN = 12  # hex digits of a hash shown in a message


class StaleError(RuntimeError):
    """An artifact cannot be rebuilt (or read) because what it was built from changed; the
    message names each changed part and what to do."""


def fingerprint(value: Any) -> str:
    """A stable hash of a JSON-able value (pydantic models: their JSON dump)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def digest_bytes(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def file_digest(path: Path | str | None) -> str:
    """``sha256:...`` of a file's bytes, or of a directory's files (relative names and bytes,
    sorted); ``missing`` if there is nothing at ``path``."""
    if path is None:
        return "missing"
    path = Path(path)
    if path.is_file():
        return digest_bytes(path.read_bytes())
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def module_digest(target: str) -> str:
    """``sha256:...`` of the source file of the module in ``'package.module:function'``,
    found without importing it; ``missing`` if it cannot be found."""
    module = target.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return "missing"
    origin = getattr(found, "origin", None)
    return file_digest(origin) if origin and origin not in ("built-in", "frozen") else "missing"


def make_key(
    inputs: Mapping[str, str] | None = None,
    spec: Mapping[str, Any] | None = None,
    data: Mapping[str, str] | None = None,
    code: Mapping[str, str] | None = None,
    **plain: Any,
) -> dict[str, str]:
    """A build key from its parts: input versions, spec sections (fingerprinted here), data
    fingerprints, code versions and plain values."""
    key = {f"input:{k}": str(v) for k, v in (inputs or {}).items()}
    key |= {f"spec:{k}": fingerprint(v) for k, v in (spec or {}).items()}
    key |= {f"data:{k}": str(v) for k, v in (data or {}).items()}
    key |= {f"code:{k}": str(v) for k, v in (code or {}).items()}
    key |= {k: json.dumps(v, sort_keys=True, default=str) for k, v in plain.items()}
    return dict(sorted(key.items()))


def _label(part: str) -> str:
    kind, sep, name = part.partition(":")
    if not sep:
        return part
    return {
        "input": f"input {name}",
        "spec": f"spec {name}",
        "data": name,
        "code": f"code of {name}",
    }.get(kind, part)


def shown(value: str | None) -> str:
    """A key part's value for a message: a content hash shortened, anything else as it is."""
    if value is None:
        return "(none)"
    if value.startswith("sha256:"):
        return f"sha256 {value[7 : 7 + SHOWN]}.."
    return value


def changes(old: Mapping[str, str] | None, new: Mapping[str, str]) -> list[str]:
    """What differs between two keys, one sentence a part (``[]``: the same key). An old
    version built before keys were recorded (``old`` None or empty) says so."""
    if not old:
        return ["no build key recorded (built before keys were kept)"]
    out = []
    for part in sorted({*old, *new}):
        was, now = old.get(part), new.get(part)
        if was != now:
            out.append(f"{_label(part)} changed: {shown(was)} -> {shown(now)}")
    return out


def key_of(artifact: artifacts.Artifact | Any) -> dict[str, str] | None:
    """The build key an artifact (or shard set) recorded, or None."""
    manifest = getattr(artifact, "artifact", artifact).manifest
    return manifest.get("meta", {}).get(KEY)


def current_key(root: Path) -> tuple[artifacts.Artifact | None, dict[str, str] | None]:
    """The current version under ``root`` (None if none or unreadable) and its key."""
    if not artifacts.has_current(root):
        return None, None
    try:
        current = artifacts.read_current(root, deep=False)
    except artifacts.ArtifactError:
        return None, None
    return current, key_of(current)


def reusable(root: Path, key: Mapping[str, str]) -> artifacts.Artifact | None:
    """The current version under ``root`` if it was built with ``key``; else None."""
    current, built_with = current_key(root)
    return current if built_with is not None and built_with == dict(key) else None


def key_meta(root: Path, key: Mapping[str, str]) -> dict[str, Any]:
    """The manifest fields of a new version built with ``key`` under ``root``: the key, and
    what changed since the current version (``[]`` for the first version)."""
    current, built_with = current_key(root)
    changed = [] if current is None else changes(built_with, key)
    return {KEY: dict(key), CHANGES: changed}


def stale(what: str, changed: Iterable[str], fix: str) -> StaleError:
    """The error for ``what`` whose inputs ``changed``, saying what to do (``fix``)."""
    return StaleError(f"{what}: {'; '.join(changed)}. {fix}")
