"""Verified, versioned artifact directories: checkpoints, tokenizers, eval reports.

A directory is *complete* only once its manifest, ``checkpoint.json``, exists: it is written
last and lists every file with its size and sha256, so a directory left by a killed writer, or
one whose files were truncated or deleted afterwards, is detected instead of loaded.

Two layouts use it:

- resumable training checkpoints, ``<work>/step-0000050/`` (written to a staging name and
  renamed), of which ``latest_valid`` picks the newest good one, warning about bad ones;
- published versions, ``<root>/v-<time>-<id>/`` plus a ``CURRENT`` pointer, as shard sets
  have (``flywheel.core.shards``). ``read_current`` falls back to the newest older good version
  when the current one is corrupt, and says so.

Model weights are Hugging Face ``save_pretrained`` directories with safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel import __version__
from flywheel.core.shards import CURRENT, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
DONE = "done.json"  # in a training run's work dir: the version its run was published as
KEEP_VERSIONS = 3  # published versions kept: the current one and two to fall back on


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupt; the message names the file."""


@dataclass(frozen=True)
class Artifact:
    """A complete, verified artifact directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest.get("meta", {})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".tmp-")
    )


def write_manifest(directory: Path, version: str | None = None, **meta: Any) -> dict[str, Any]:
    """Hash every file under ``directory`` and write the manifest that marks it complete."""
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(directory)
    }
    manifest = {
        "version": version or directory.name,
        "created_at": datetime.now(UTC).isoformat(),
        "code_version": __version__,
        "files": files,
        "meta": meta,
    }
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest


def verify(directory: Path, deep: bool = True) -> Artifact:
    """The artifact at ``directory``; ``CheckpointError`` naming what is missing or corrupt.

    ``deep`` re-hashes every file; without it only presence and sizes are checked.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    mpath = directory / MANIFEST
    if not mpath.exists():
        raise CheckpointError(f"checkpoint {directory} is incomplete: no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"checkpoint {directory}: {MANIFEST} is not valid JSON: {exc}"
        ) from None
    for rel, info in manifest.get("files", {}).items():
        path = directory / rel
        if not path.exists():
            raise CheckpointError(f"checkpoint {directory} is corrupt: {rel} is missing")
        if path.stat().st_size != info["bytes"]:
            raise CheckpointError(
                f"checkpoint {directory} is corrupt: {rel} has {path.stat().st_size} bytes, "
                f"expected {info['bytes']}"
            )
        if deep and _sha256(path) != info["sha256"]:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {rel} fails its sha256")
    return Artifact(directory, manifest)


def latest_valid(candidates: Iterable[Path], deep: bool = True) -> Artifact | None:
    """The newest verifiable directory among ``candidates`` (sorted by name); bad ones warned."""
    for path in sorted(candidates, key=lambda p: p.name, reverse=True):
        try:
            return verify(path, deep=deep)
        except CheckpointError as exc:
            log.error("%s; falling back to the previous checkpoint", exc)
    return None


def staging_dir(root: Path) -> Path:
    """A fresh hidden directory under ``root`` to build an artifact in before ``finalize``."""
    path = Path(root) / f".staging-{uuid.uuid4().hex}"
    path.mkdir(parents=True)
    return path


def finalize(staging: Path, final: Path, version: str | None = None, **meta: Any) -> Artifact:
    """Write the manifest into ``staging`` and rename it to ``final`` (atomic on one disk)."""
    manifest = write_manifest(staging, version=version or final.name, **meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return Artifact(final, manifest)


def new_version() -> str:
    return f"v-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def publish(root: Path, staging: Path, **meta: Any) -> Artifact:
    """Make ``staging`` the current version under ``root`` and prune old versions."""
    root = Path(root)
    version = new_version()
    artifact = finalize(staging, root / version, version=version, **meta)
    atomic_write_bytes(root / CURRENT, version.encode())
    versions = sorted(d for d in root.glob("v-*") if d.is_dir())
    for old in versions[:-KEEP_VERSIONS]:
        shutil.rmtree(old, ignore_errors=True)
    return artifact


def has_current(root: Path) -> bool:
    return (Path(root) / CURRENT).exists()


def read_current(root: Path, deep: bool = True) -> Artifact:
    """The current published version; if it is corrupt, the newest older good one (warned)."""
    root = Path(root)
    pointer = root / CURRENT
    if not pointer.exists():
        raise CheckpointError(f"nothing published under {root} (no {CURRENT}); materialize it")
    current = root / pointer.read_text().strip()
    try:
        return verify(current, deep=deep)
    except CheckpointError as exc:
        older = [d for d in root.glob("v-*") if d.is_dir() and d.name < current.name]
        fallback = latest_valid(older, deep=deep)
        if fallback is None:
            raise CheckpointError(f"{exc}; and no older good version exists under {root}") from None
        log.error("%s; using the previous good version %s", exc, fallback.version)
        return fallback


def read_meta(directory: Path) -> dict[str, Any]:
    """The ``meta`` of a complete artifact without re-hashing (for listings)."""
    return json.loads((Path(directory) / MANIFEST).read_text()).get("meta", {})


# -- finished training runs: a rerun with the same inputs reuses its published version ---
def mark_done(work: Path, record: dict[str, Any]) -> None:
    """Record in the run's work dir that it was published (``record["version"]``)."""
    atomic_write_json(Path(work) / DONE, record)


def finished_run(
    root: Path, work: Path, deep: bool = True, warn: Callable[[str], None] | None = None
) -> dict[str, Any] | None:
    """The done record of the run in ``work`` if the version it names is still published
    under ``root`` and verifies; None (with a warning why, if it names nothing usable)."""
    done = Path(work) / DONE
    if not done.exists():
        return None
    try:
        record = json.loads(done.read_text())
        verify(Path(root) / record["version"], deep=deep)
    except (CheckpointError, json.JSONDecodeError, KeyError) as exc:
        if warn is not None:
            warn(f"{done} names no usable checkpoint ({exc}); publishing again")
        return None
    return record


def make_current(root: Path, version: str) -> bool:
    """Point ``root``'s CURRENT at ``version``; False if it already did."""
    pointer = Path(root) / CURRENT
    if pointer.exists() and pointer.read_text().strip() == version:
        return False
    atomic_write_bytes(pointer, version.encode())
    return True
