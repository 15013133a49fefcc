"""Source specs: validation, defaults, the discriminated union."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flywheel.data.ingest import (
    JsonlSource,
    ParquetSource,
    PythonEnvSource,
    TextFilesSource,
    parse_source,
)

MODELS = [JsonlSource, ParquetSource, TextFilesSource, PythonEnvSource]


@pytest.mark.parametrize("model", MODELS)
def test_every_field_is_described(model):
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"


def test_defaults():
    spec = JsonlSource(name="web", path="data/*.jsonl.gz")
    assert (spec.kind, spec.text_field, spec.id_field, spec.require_id) == (
        "jsonl", "text", "id", False
    )  # fmt: skip
    assert TextFilesSource(name="notes", path="notes").glob == "**/*.txt"
    env = PythonEnvSource()
    assert env.name == "python_env" and env.max_docs is None
    assert env.include == ["pydoc_topics", "module_docstrings", "package_metadata", "licenses"]


@pytest.mark.parametrize(
    "data, cls",
    [
        ({"kind": "jsonl", "name": "a", "path": "x.jsonl"}, JsonlSource),
        ({"kind": "parquet", "name": "a", "path": "x.parquet", "id_field": None}, ParquetSource),
        ({"kind": "text_files", "name": "a", "path": "docs"}, TextFilesSource),
        ({"kind": "python_env", "include": ["licenses"], "max_docs": 5}, PythonEnvSource),
    ],
)
def test_union_dispatches_on_kind(data, cls):
    assert type(parse_source(data)) is cls


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "jsonl", "name": "Bad-Name", "path": "x"},  # name pattern
        {"kind": "jsonl", "name": "1abc", "path": "x"},
        {"kind": "jsonl", "name": "a", "path": "x", "txt_field": "t"},  # extra field: a typo
        {"kind": "jsonl", "name": "a"},  # path is required
        {"kind": "csv", "name": "a", "path": "x"},  # unknown kind
        {
            "kind": "text_files",
            "name": "a",
            "path": "d",
            "id_field": "id",
        },  # not a text_files field
        {"kind": "python_env", "include": ["wikipedia"]},
        {"kind": "python_env", "include": []},
        {"kind": "python_env", "max_docs": 0},
    ],
)
def test_invalid_specs_are_rejected(data):
    with pytest.raises(ValidationError):
        parse_source(data)


def test_specs_are_immutable_and_serializable():
    spec = JsonlSource(name="a", path="x.jsonl", description="test data")
    with pytest.raises(ValidationError):
        spec.name = "b"
    assert parse_source(spec.model_dump(mode="json")) == spec
