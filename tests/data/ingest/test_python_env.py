"""The python_env source: text harvested from the Python installation, deterministically."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flywheel.data.ingest import PythonEnvSource, document_id, read_batches
from flywheel.data.ingest import python_env as penv

MIT = "MIT License\n\nPermission is hereby granted, free of charge, to any person...\n"


def _files(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.fixture
def fake_env(tmp_path, monkeypatch) -> list[Path]:
    """Two fake sys.path roots, so the harvest can be checked exactly."""
    site, shadow = tmp_path / "site", tmp_path / "shadow"
    _files(site, {
        "pkg/__init__.py": '"""Package docstring."""\nraise RuntimeError("imported!")\n',
        "pkg/mod.py": b'#!/usr/bin/env python\n# -*- coding: latin-1 -*-\n"""Caf\xe9 module."""\n',
        "pkg/nodoc.py": "x = 1\n",
        "pkg/empty_doc.py": '"""   """\n',
        "pkg/broken.py": '"""A docstring left open.\ndef f():\n    pass\n',
        "pkg/py2.py": '"""Python 2: the code does not parse, its docstring does."""\nprint "hi"\n',
        "pkg/joined.py": '"""Joined """ \\\n  """over two lines."""\nx = 1\n',
        "pkg/method.py": '"""Not a docstring: an expression.""".strip()\n',
        "pkg/tests/helpers.py": '"""In a test directory."""\n',
        "pkg/test_things.py": '"""A test file."""\n',
        "pkg/001_migration.py": '"""Not an importable name."""\n',
        "pkg/LICENSE": MIT,
        "top.py": '"""Top-level module."""\n',
        "mydist-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: mydist\nVersion: 1.0\n"
        "\nThe long description.\n",
        "mydist-1.0.dist-info/LICENSE.txt": MIT,
        "mydist-1.0.dist-info/licenses/vendor/COPYING": "GPL text\n",
        "old-0.1-py3.11.egg-info/PKG-INFO": "Metadata-Version: 1.1\nName: old\nVersion: 0.1\n"
        "Description: First line\n        second line\n",
        "nodesc-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: nodesc\nVersion: 1.0\n",
        "badmeta-1.0.dist-info/METADATA": b"Name: badmeta\n\nbad \xff bytes\n",
        "LICENSE.txt": "Python license\n",
    })  # fmt: skip
    _files(shadow, {"pkg/__init__.py": '"""Shadowed package."""\n'})
    monkeypatch.setattr(penv, "python_roots", lambda: [site, shadow])
    return [site, shadow]


def test_harvest_of_a_fake_environment(fake_env, ingest):
    spec = PythonEnvSource(include=["module_docstrings", "package_metadata", "licenses"])
    result = ingest(spec)
    df = result.shardset.read()
    docs = dict(zip(df["source_id"], df["text"], strict=True))
    assert list(docs) == [
        "module:pkg", "module:pkg.joined", "module:pkg.mod", "module:pkg.py2", "module:top",
        "dist:mydist", "dist:old",
        "license:file:site/LICENSE.txt", "license:mydist/LICENSE.txt",
        "license:mydist/licenses/vendor/COPYING", "license:file:site/pkg/LICENSE",
    ]  # fmt: skip
    assert docs["module:pkg.mod"] == "Caf\u00e9 module."  # the coding cookie is honoured
    assert docs["module:pkg.joined"] == "Joined over two lines."  # a backslash continues it
    assert docs["dist:mydist"] == "The long description.\n"
    assert docs["dist:old"] == "First line\nsecond line"
    assert docs["license:mydist/LICENSE.txt"] == docs["license:file:site/pkg/LICENSE"] == MIT
    assert df["id"][0] == document_id("python_env", "id:module:pkg")
    assert df["path"][0] == str(fake_env[0] / "pkg" / "__init__.py")
    q = result.shardset.aux("quarantine")
    assert sorted(
        zip(q["reason"], q["path"].str.split("/").list.slice(-2).list.join("/"), strict=True)
    ) == [
        ("duplicate_id", "pkg/__init__.py"),  # the shadowed copy in the second root
        ("empty_text", "pkg/empty_doc.py"),
        ("invalid_utf8", "badmeta-1.0.dist-info/METADATA"),
    ]
    assert result.skipped["unparsable_file"] == 1 and result.skipped["no_description"] == 1
    assert result.skipped["no_docstring"] == 2  # nodoc.py, method.py
    assert "pkg" not in sys.modules  # sources are parsed, never imported


def test_include_order_is_canonical_and_max_docs_caps(fake_env, ingest):
    a = ingest(PythonEnvSource(name="a", include=["licenses", "module_docstrings"], max_docs=8))
    assert a.shardset.read()["source_id"].to_list() == [
        "module:pkg", "module:pkg.joined", "module:pkg.mod", "module:pkg.py2", "module:top",
        "license:file:site/LICENSE.txt",
    ]  # fmt: skip
    # Records, not documents, are capped: two of the eight are quarantined (empty, shadowed).
    assert a.documents + a.quarantined == 8 and a.quarantined == 2


def test_real_environment_small_and_stable(tmp_path, ingest):
    spec = PythonEnvSource(include=["pydoc_topics", "licenses"], max_docs=120)
    first = ingest(spec).shardset.read()
    second = ingest(spec, root=tmp_path / "again").shardset.read()
    assert first.equals(second)
    topics = first.filter(first["source_id"].str.starts_with("topic:"))
    assert topics.height > 50 and "topic:assert" in topics["source_id"].to_list()
    assert topics["source_id"].is_sorted() and topics["path"][0].endswith("topics.py")
    assert first["source_id"].str.starts_with("license:").any()


@pytest.mark.parametrize("part, prefix", [
    ("module_docstrings", "module:"), ("package_metadata", "dist:"), ("licenses", "license:"),
])  # fmt: skip
def test_real_environment_each_part(tmp_path, part, prefix):
    spec = PythonEnvSource(include=[part], max_docs=15)
    records = [r for b in read_batches(spec, base_dir=tmp_path, batch_rows=4) for r in b]
    assert 0 < len(records) <= 15
    assert all(r.id_value.startswith(prefix) for r in records)


def test_roots_exclude_working_directory_and_project_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", ["", str(tmp_path), *sys.path])
    roots = penv.python_roots()
    assert roots and Path(tmp_path).resolve() not in roots
    assert all(any(r.is_relative_to(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix))
               for r in roots)  # fmt: skip


def test_own_distribution_is_not_in_the_corpus(tmp_path, monkeypatch, ingest):
    """This project's metadata is its README: an edit to the docs must not change the corpus."""
    _files(tmp_path / "site", {
        "flywheel-0.1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: flywheel\n"
        "Version: 0.1.0\n\n# flywheel\nOur own README.\n",
        "flywheel-0.1.0.dist-info/LICENSE": MIT,
        "other-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: other\nVersion: 1.0\n"
        "\nAnother package.\n",
    })  # fmt: skip
    monkeypatch.setattr(penv, "python_roots", lambda: [tmp_path / "site"])
    result = ingest(PythonEnvSource(include=["package_metadata", "licenses"]))
    assert result.shardset.read()["source_id"].to_list() == ["dist:other"]


def _ids(spec: PythonEnvSource) -> set[str]:
    stats = penv.ReadStats()
    return {r.id_value for r in penv.iter_python_env(spec, 1_000_000, stats)}


def test_requirements_mode_reads_only_what_the_project_requires() -> None:
    """With ``distributions: requirements`` the corpus is the standard library's and the
    project's requirements' (no extras): a package installed beside them adds nothing."""
    closure = penv.requirement_closure()
    assert {"polars", "dagster", "torch"} <= closure
    assert "pytest" not in closure and "ray" not in closure  # dev and ray extras
    parts = ["module_docstrings", "package_metadata"]
    every = _ids(PythonEnvSource(include=parts))
    required = _ids(PythonEnvSource(include=parts, distributions="requirements"))
    assert required < every
    assert "module:json" in required and "module:polars" in required
    assert "dist:polars" in required and "dist:pytest" not in required
    assert "dist:pytest" in every  # installed here (the dev extra), so the full mode reads it
    assert not any(i.startswith(("module:pytest", "module:_pytest")) for i in required)
    digest = penv.environment_digest(PythonEnvSource(distributions="requirements"))
    assert digest != penv.environment_digest(PythonEnvSource())
