"""Verified artifact directories: completeness, corruption detection, fallback, publishing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

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
    with pytest.raises(ck.CheckpointError, match=message):
        ck.verify(art.path)


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
    with pytest.raises(ck.CheckpointError, match="nothing published"):
        ck.read_current(root)
    first = _publish(root, b"one")
    second = _publish(root, b"two")
    assert ck.read_current(root).version == second.version
    (second.path / "model.safetensors").unlink()
    with caplog.at_level(logging.ERROR):
        assert ck.read_current(root).version == first.version
    assert "model.safetensors is missing" in caplog.text
    (first.path / "model.safetensors").unlink()
    with pytest.raises(ck.CheckpointError, match="no older good version"):
        ck.read_current(root)


def test_publish_prunes_old_versions(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    versions = [_publish(root, bytes([i])).version for i in range(ck.KEEP_VERSIONS + 2)]
    kept = sorted(p.name for p in root.glob("v-*"))
    assert kept == versions[-ck.KEEP_VERSIONS :]


def _publish(root: Path, payload: bytes) -> ck.Artifact:
    staging = ck.staging_dir(root)
    (staging / "model.safetensors").write_bytes(payload)
    return ck.publish(root, staging, stage="test")
