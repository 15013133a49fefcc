"""Text-file sources: one document per file, keyed by relative path."""

from __future__ import annotations

import pytest

from flywheel.data.ingest import TextFilesSource, document_id


def test_text_files_one_document_per_file(tmp_path, ingest):
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.txt").write_text("beta")
    (root / "sub" / "deeper" / "c.txt").write_text("gamma \u00e9")
    (root / "sub" / "ignored.md").write_text("not a .txt")
    result = ingest(TextFilesSource(name="notes", path="corpus"))
    df = result.shardset.read()
    assert df["source_id"].to_list() == ["a.txt", "sub/b.txt", "sub/deeper/c.txt"]
    assert df["text"].to_list() == ["alpha\n", "beta", "gamma \u00e9"]
    assert df["offset"].to_list() == [0, 0, 0]
    assert df["path"][1] == str(root / "sub" / "b.txt")
    assert df["id"][1] == document_id("notes", "id:sub/b.txt")
    assert result.files == 3


def test_text_files_custom_glob(tmp_path, ingest):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.md").write_text("markdown")
    (tmp_path / "d" / "y.txt").write_text("text")
    df = ingest(TextFilesSource(name="md", path="d", glob="*.md")).shardset.read()
    assert df["text"].to_list() == ["markdown"]


def test_text_files_missing_directory_or_no_match(tmp_path, ingest):
    with pytest.raises(FileNotFoundError, match="'notes'.*'nowhere'"):
        ingest(TextFilesSource(name="notes", path="nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"'notes'.*\*\*/\*\.txt"):
        ingest(TextFilesSource(name="notes", path="empty"))
