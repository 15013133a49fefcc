"""flywheel.core.artifacts: completeness, corruption detection, fallback, publishing, retention."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from flywheel import __version__
from flywheel.core import artifacts as ck


def _make(root: Path, name: str, payload: bytes = b"weights") -> ck.Artifact:
    staging = ck.staging_dir(root)
    (staging / "model.safetensors").write_bytes(payload)
    (staging / "state").mkdir()
    (staging / "state" / "optimizer.pt").write_bytes(payload * 2)
    return ck.finalize(staging, root / name, step=int(name.split("-")[-1]))


def test_finalize_writes_manifest_last_and_verifies(tmp_path: Path) -> None:
    art = _make(tmp_path, "step-0000010")
    assert set(art.manifest["files"]) == {"model.safetensors", "state/optimizer.pt"}
    assert ck.verify(art.path).meta == {"step": 10}
    assert not list(tmp_path.glob(".staging-*"))


def test_manifest_format(tmp_path: Path) -> None:
    art = _publish(tmp_path / "ckpt", b"weights", inputs={"tokenizer": "v-1"})
    on_disk = json.loads((art.path / ck.MANIFEST).read_text())
    assert on_disk == art.manifest
    assert set(on_disk) == {"version", "created_at", "code_version", "inputs", "files", "meta"}
    assert on_disk["version"] == art.path.name and on_disk["code_version"] == __version__
    assert on_disk["inputs"] == {"tokenizer": "v-1"} == ck.read_current(art.path.parent).inputs
    weights = on_disk["files"]["model.safetensors"]
    assert weights["bytes"] == 7 and len(weights["sha256"]) == 64
    assert on_disk["meta"] == {"stage": "test"}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").write_bytes(b"weightz"), "fails its sha256"),
        (lambda d: (d / "model.safetensors").write_bytes(b"w"), "has 1 bytes, expected 7"),
        (lambda d: (d / "state" / "optimizer.pt").unlink(), "state/optimizer.pt is missing"),
        (lambda d: (d / ck.MANIFEST).unlink(), "incomplete"),
        (lambda d: (d / ck.MANIFEST).write_text("{"), "not valid JSON"),
    ],
)
def test_verify_names_the_damage(tmp_path: Path, damage, message: str) -> None:
    art = _make(tmp_path, "step-0000010")
    damage(art.path)
    with pytest.raises(ck.ArtifactError, match=message):
        ck.verify(art.path)


def test_shallow_verify_checks_sizes_not_hashes(tmp_path: Path) -> None:
    art = _make(tmp_path, "step-0000010")
    (art.path / "model.safetensors").write_bytes(b"weightz")  # same size, other bytes
    assert ck.verify(art.path, deep=False).version == "step-0000010"
    (art.path / "model.safetensors").write_bytes(b"weight")
    with pytest.raises(ck.ArtifactError, match="has 6 bytes, expected 7"):
        ck.verify(art.path, deep=False)


def test_latest_valid_falls_back_and_says_why(tmp_path: Path, caplog) -> None:
    _make(tmp_path, "step-0000010")
    newest = _make(tmp_path, "step-0000020")
    (newest.path / "model.safetensors").write_bytes(b"truncat")
    with caplog.at_level(logging.ERROR):
        found = ck.latest_valid(tmp_path.glob("step-*"))
    assert found is not None and found.path.name == "step-0000010"
    assert "step-0000020 is corrupt: model.safetensors fails its sha256" in caplog.text


def test_latest_valid_of_nothing_is_none(tmp_path: Path) -> None:
    assert ck.latest_valid([]) is None


def test_publish_current_and_fallback(tmp_path: Path, caplog) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    with pytest.raises(ck.NotPublishedError, match="nothing published"):
        ck.read_current(root)
    first = _publish(root, b"one")
    second = _publish(root, b"two")
    assert ck.read_current(root).version == second.version
    (second.path / "model.safetensors").unlink()
    with caplog.at_level(logging.ERROR):
        assert ck.read_current(root).version == first.version
    assert "model.safetensors is missing" in caplog.text
    (first.path / "model.safetensors").unlink()
    with pytest.raises(ck.ArtifactError, match="no older good version"):
        ck.read_current(root)


def test_not_published_is_a_file_not_found_error(tmp_path: Path) -> None:
    # Callers (the CLI, the report) treat a product never materialized as a missing file.
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        ck.read_current(tmp_path)


def test_retention_keeps_exactly_keep_versions(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    versions = [_publish(root, bytes([i])).version for i in range(ck.KEEP_VERSIONS + 2)]
    kept = sorted(p.name for p in root.glob("v-*"))
    assert len(kept) == ck.KEEP_VERSIONS and kept == versions[-ck.KEEP_VERSIONS :]
    assert ck.current_version(root) == versions[-1]


def test_prune_never_removes_the_current_version(tmp_path: Path) -> None:
    # A rerun that reuses an older published version points CURRENT back at it.
    root = tmp_path / "ckpt"
    versions = [_publish(root, bytes([i])).version for i in range(ck.KEEP_VERSIONS + 1)]
    assert ck.make_current(root, versions[1]) and not ck.make_current(root, versions[1])
    (root / "v-99999999T000000000000-00000000").mkdir()  # a newer (empty) directory
    ck.prune(root)
    assert (root / versions[1]).exists() and ck.read_current(root).version == versions[1]


def test_stale_staging_dirs_are_cleaned(tmp_path: Path) -> None:
    stale, fresh = tmp_path / ".staging-dead", tmp_path / ".staging-alive"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - ck.STALE_STAGING_S - 60
    os.utime(stale, (old, old))
    new = ck.staging_dir(tmp_path)
    assert not stale.exists() and fresh.exists() and new.is_dir()


def test_finished_run_names_only_a_usable_version(tmp_path: Path) -> None:
    root, work = tmp_path / "ckpt", tmp_path / "work"
    art = _publish(root, b"one")
    assert ck.finished_run(root, work) is None  # never marked done
    ck.mark_done(work, {"version": art.version})
    assert ck.finished_run(root, work) == {"version": art.version}
    (art.path / "model.safetensors").write_bytes(b"two")
    warnings: list[str] = []
    assert ck.finished_run(root, work, warn=warnings.append) is None
    assert "fails its sha256" in warnings[0]


def _publish(root: Path, payload: bytes, **kwargs) -> ck.Artifact:
    staging = ck.staging_dir(root)
    (staging / "model.safetensors").write_bytes(payload)
    return ck.publish(root, staging, stage="test", **kwargs)
