"""The artifact store: every versioned product (shard set, tokenizer, checkpoint, eval report).

An artifact is a directory that is complete only once its manifest, ``manifest.json``, exists.
The manifest is written last and has one format for every kind of product:

    {"version": "v-20261127T101500123456-1a2b3c4d",
     "created_at": "2026-11-27T10:15:00.123456+00:00",
     "code_version": "0.1.0",
     "inputs": {"deduplicated_shards": "v-...", "tokenizer": "v-..."},   # what it was built from
     "files": {"part-00000.parquet": {"bytes": 1234, "sha256": "9f86..."}, ...},
     "meta": {...}}                                # what the producer says about it

so a directory left by a killed writer, or one whose files were truncated or deleted afterwards,
is detected (``verify`` names the file) instead of loaded. Two layouts use it:

- resumable training checkpoints, ``<work>/step-0000050/`` (built in a staging directory and
  renamed by ``finalize``), of which ``latest_valid`` picks the newest good one;
- published versions, ``<root>/v-<time>-<id>/`` plus a ``CURRENT`` pointer (``publish``):
  Parquet shard sets (``flywheel.core.shards``), tokenizers, checkpoints, eval reports.
  ``read_current`` falls back to the newest older good version when the current one is
  corrupt, and says so; ``KEEP_VERSIONS`` versions are kept.

Every file is written under a temporary name and renamed into place (``os.replace`` is atomic
on POSIX), and a version becomes visible only when ``CURRENT`` is replaced after its manifest
is written: a run killed at any point leaves the previous version readable.

Tested by ``pytest tests/core/test_artifacts.py tests/core/test_checkpoint_store.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel import __version__

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
DONE = "done.json"  # in a training run's work dir: the version its run was published as
# Published versions kept per root. The current one; the one before, which ``read_current``
# falls back to if the current is damaged and which a reader that resolved CURRENT before the
# last publish (a training run streaming its dataset) is still reading; and one more, so that
# a reader keeps its files across two publishes. Disk cost: at most 3x a product's size.
KEEP_VERSIONS = 3
STALE_STAGING_S = 6 * 3600  # staging dirs untouched this long are from dead writers


class ArtifactError(RuntimeError):
    """An artifact that is missing, incomplete or corrupt; the message names the file."""


class NotPublishedError(ArtifactError, FileNotFoundError):
    """Nothing was ever published under a root (no ``CURRENT``): materialize it first."""


# -- atomic files ---------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _json(obj: Any, sort_keys: bool = True) -> str:
    return json.dumps(obj, indent=2, sort_keys=sort_keys, default=str)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, _json(obj).encode())


# -- one artifact -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    """A complete, verified artifact directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def inputs(self) -> dict[str, Any]:
        """The versions of the artifacts this one was built from, by product."""
        return self.manifest.get("inputs", {})

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


def write_manifest(
    directory: Path,
    version: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """Hash every file under ``directory`` and write the manifest that marks it complete.

    Returns the manifest as readers will load it (JSON round-tripped: tuples become lists).
    """
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(directory)
    }
    manifest = {
        "version": version or directory.name,
        "created_at": datetime.now(UTC).isoformat(),
        "code_version": __version__,
        "inputs": dict(inputs or {}),
        "files": files,
        "meta": meta,
    }
    text = _json(manifest, sort_keys=False)  # keeps order where it means something: columns
    atomic_write_bytes(directory / MANIFEST, text.encode())
    return json.loads(text)


def verify(directory: Path, deep: bool = True) -> Artifact:
    """The artifact at ``directory``; ``ArtifactError`` naming what is missing or corrupt.

    ``deep`` re-hashes every file; without it only presence and sizes are checked (a stat
    per file: cheap enough for every read of a large shard set).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artifact {directory} does not exist")
    mpath = directory / MANIFEST
    if not mpath.exists():
        raise ArtifactError(f"artifact {directory} is incomplete: no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"artifact {directory}: {MANIFEST} is not valid JSON: {exc}") from None
    for rel, info in manifest.get("files", {}).items():
        path = directory / rel
        if not path.exists():
            raise ArtifactError(f"artifact {directory} is corrupt: {rel} is missing")
        if path.stat().st_size != info["bytes"]:
            raise ArtifactError(
                f"artifact {directory} is corrupt: {rel} has {path.stat().st_size} bytes, "
                f"expected {info['bytes']}"
            )
        if deep and _sha256(path) != info["sha256"]:
            raise ArtifactError(f"artifact {directory} is corrupt: {rel} fails its sha256")
    return Artifact(directory, manifest)


def latest_valid(candidates: Iterable[Path], deep: bool = True) -> Artifact | None:
    """The newest verifiable directory among ``candidates`` (sorted by name); bad ones warned."""
    for path in sorted(candidates, key=lambda p: p.name, reverse=True):
        try:
            return verify(path, deep=deep)
        except ArtifactError as exc:
            log.error("%s; falling back to the previous version", exc)
    return None


def staging_dir(root: Path) -> Path:
    """A fresh hidden directory under ``root`` to build an artifact in before ``finalize``.

    Staging directories of dead writers (untouched for ``STALE_STAGING_S``) are removed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in root.glob(".staging-*"):
        if now - old.stat().st_mtime > STALE_STAGING_S:
            shutil.rmtree(old, ignore_errors=True)
    path = root / f".staging-{uuid.uuid4().hex}"
    path.mkdir()
    return path


def finalize(
    staging: Path,
    final: Path,
    version: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    **meta: Any,
) -> Artifact:
    """Write the manifest into ``staging`` and rename it to ``final`` (atomic on one disk)."""
    manifest = write_manifest(staging, version=version or final.name, inputs=inputs, **meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(final.parent)
    return Artifact(final, manifest)


# -- published versions and the CURRENT pointer -----------------------------------------------
def new_version() -> str:
    """A fresh version name; names sort by creation time, which pruning and fallback rely on."""
    return f"v-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def publish(
    root: Path, staging: Path, inputs: Mapping[str, Any] | None = None, **meta: Any
) -> Artifact:
    """Make ``staging`` the current version under ``root``, recording the ``inputs`` it was
    built from (``{product: version}``) and ``meta``; prune old versions."""
    root = Path(root)
    version = new_version()
    artifact = finalize(staging, root / version, version=version, inputs=inputs, **meta)
    atomic_write_bytes(root / CURRENT, version.encode())
    prune(root)
    return artifact


def prune(root: Path) -> None:
    """Remove all but the newest ``KEEP_VERSIONS`` versions under ``root`` (never the current)."""
    root = Path(root)
    current = current_version(root)
    versions = sorted(d for d in root.glob("v-*") if d.is_dir())
    for old in versions[:-KEEP_VERSIONS]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def has_current(root: Path) -> bool:
    return (Path(root) / CURRENT).exists()


def current_version(root: Path) -> str | None:
    """The version ``CURRENT`` names under ``root``, unverified; None if nothing published."""
    pointer = Path(root) / CURRENT
    return pointer.read_text().strip() if pointer.exists() else None


def read_current(root: Path, deep: bool = True) -> Artifact:
    """The current published version; if it is corrupt, the newest older good one (warned)."""
    root = Path(root)
    version = current_version(root)
    if version is None:
        raise NotPublishedError(
            f"nothing published under {root} (no {CURRENT}); materialize it first"
        )
    current = root / version
    try:
        return verify(current, deep=deep)
    except ArtifactError as exc:
        older = [d for d in root.glob("v-*") if d.is_dir() and d.name < current.name]
        fallback = latest_valid(older, deep=deep)
        if fallback is None:
            raise ArtifactError(f"{exc}; and no older good version exists under {root}") from None
        log.error("%s; using the previous good version %s", exc, fallback.version)
        return fallback


def read_meta(directory: Path) -> dict[str, Any]:
    """The ``meta`` of a complete artifact without re-hashing (for listings)."""
    return json.loads((Path(directory) / MANIFEST).read_text()).get("meta", {})


def make_current(root: Path, version: str) -> bool:
    """Point ``root``'s CURRENT at ``version``; False if it already did."""
    if current_version(root) == version:
        return False
    atomic_write_bytes(Path(root) / CURRENT, version.encode())
    return True


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
    except (ArtifactError, json.JSONDecodeError, KeyError) as exc:
        if warn is not None:
            warn(f"{done} names no usable version ({exc}); publishing again")
        return None
    return record
