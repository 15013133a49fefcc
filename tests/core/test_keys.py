"""Build keys: their parts, what a changed part reads like, and reuse of the current version."""

from __future__ import annotations

import sys
from pathlib import Path

from flywheel.core import artifacts, keys
from flywheel.core.settings.loop import GateSettings


def test_a_key_names_each_part_and_fingerprints_only_the_sections_given() -> None:
    key = keys.make_key(
        {"training_set": "v-1"},
        {"cycles.gate": GateSettings(metric="accuracy/a")},
        {"seed data": "sha256:ab"},
        {"training_set": "1"},
        cycle=2,
    )
    assert set(key) == {
        "input:training_set",
        "spec:cycles.gate",
        "data:seed data",
        "code:training_set",
        "cycle",
    }
    same = keys.make_key(
        {"training_set": "v-1"}, {"cycles.gate": {"metric": "accuracy/a", **_gate_rest()}},
        {"seed data": "sha256:ab"}, {"training_set": "1"}, cycle=2,
    )  # fmt: skip
    assert same == key  # a model and its JSON dump fingerprint alike
    other = keys.make_key(
        {"training_set": "v-1"}, {"cycles.gate": GateSettings(metric="accuracy/b")},
        {"seed data": "sha256:ab"}, {"training_set": "1"}, cycle=2,
    )  # fmt: skip
    assert keys.changes(key, other) == [
        f"spec cycles.gate changed: {key['spec:cycles.gate']} -> {other['spec:cycles.gate']}"
    ]


def _gate_rest() -> dict:
    return GateSettings(metric="accuracy/a").model_dump(mode="json", exclude={"metric"})


def test_changes_read_as_sentences() -> None:
    old = {"data:seed data": "sha256:" + "ab" * 32, "input:training_set/0": "v-1"}
    new = {"data:seed data": "sha256:" + "cd" * 32, "input:training_set/0": "v-2", "cycle": "1"}
    assert keys.changes(old, new) == [
        "cycle changed: (none) -> 1",
        "seed data changed: sha256 abababababab.. -> sha256 cdcdcdcdcdcd..",
        "input training_set/0 changed: v-1 -> v-2",
    ]
    assert keys.changes(new, new) == []
    assert keys.changes(None, new) == ["no build key recorded (built before keys were kept)"]


def test_file_and_module_digests_follow_content_not_names(tmp_path: Path, monkeypatch) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("same")
    b.write_text("same")
    assert keys.file_digest(a) == keys.file_digest(b) != keys.file_digest(tmp_path / "none")
    b.write_text("other")
    assert keys.file_digest(a) != keys.file_digest(b)
    (tmp_path / "myverifier.py").write_text("def ok(p, c, a):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = keys.module_digest("myverifier:ok")
    assert before.startswith("sha256:") and "myverifier" not in sys.modules  # not imported
    (tmp_path / "myverifier.py").write_text("def ok(p, c, a):\n    return False\n")
    assert keys.module_digest("myverifier:ok") != before
    assert keys.module_digest("no_such_module_here:f") == "missing"


def test_reusable_only_when_the_current_version_has_the_key(tmp_path: Path) -> None:
    root = tmp_path / "product"
    key = keys.make_key({"x": "v-1"})
    assert keys.reusable(root, key) is None
    assert keys.key_meta(root, key) == {keys.KEY: key, keys.CHANGES: []}  # the first version

    def publish(k: dict) -> artifacts.Artifact:
        staging = artifacts.staging_dir(root)
        (staging / "f").write_text(str(k))
        return artifacts.publish(root, staging, **keys.key_meta(root, k))

    first = publish(key)
    assert keys.reusable(root, key).version == first.version
    other = keys.make_key({"x": "v-2"})
    assert keys.reusable(root, other) is None
    second = publish(other)
    assert second.meta[keys.CHANGES] == ["input x changed: v-1 -> v-2"]
    assert keys.reusable(root, key) is None  # only the current version is reused
