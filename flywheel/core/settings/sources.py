"""Source specs: what to ingest, declared as pydantic models.

Each kind of input is one model; ``SourceSpec`` is their union, discriminated on ``kind``, so a
spec file (YAML/JSON) validates into exactly one of them and a typo in any field is an error
rather than a silently ignored option.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"

PythonEnvPart = Literal["pydoc_topics", "module_docstrings", "package_metadata", "licenses"]
PYTHON_ENV_PARTS: tuple[PythonEnvPart, ...] = (
    "pydoc_topics",
    "module_docstrings",
    "package_metadata",
    "licenses",
)


class _Source(BaseModel):
    """Fields every source has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=NAME_PATTERN,
        max_length=64,
        description="Identifier of the source (lowercase, digits, _); used in ids and asset names.",
    )
    description: str | None = Field(default=None, description="What this source is, for humans.")


class _RecordSource(_Source):
    """Fields of the sources whose records carry named fields (JSONL, Parquet)."""

    path: str = Field(
        min_length=1,
        description="File or glob (e.g. 'data/*.jsonl.gz'); relative to base_dir unless absolute.",
    )
    text_field: str = Field(default="text", min_length=1, description="Field holding the text.")
    id_field: str | None = Field(
        default="id",
        description="Field holding the record's own id; null: key records by position.",
    )
    require_id: bool = Field(
        default=False,
        description="Quarantine records without an id (missing_id) instead of keying by position.",
    )


class JsonlSource(_RecordSource):
    """JSON Lines, plain or compressed (.jsonl, .jsonl.gz, .jsonl.zst; chosen by suffix)."""

    kind: Literal["jsonl"] = Field(default="jsonl", description="Discriminator: JSON Lines.")


class ParquetSource(_RecordSource):
    """Parquet files, read in row batches."""

    kind: Literal["parquet"] = Field(default="parquet", description="Discriminator: Parquet.")


class TextFilesSource(_Source):
    """A directory of text files, one document per file, keyed by relative path."""

    kind: Literal["text_files"] = Field(
        default="text_files", description="Discriminator: one document per text file."
    )
    path: str = Field(
        min_length=1, description="Directory to search; relative paths resolve against base_dir."
    )
    glob: str = Field(default="**/*.txt", min_length=1, description="Files to take, under path.")


class PythonEnvSource(_Source):
    """Real text already present wherever Python and this project are installed; no download."""

    kind: Literal["python_env"] = Field(
        default="python_env", description="Discriminator: text harvested from the Python install."
    )
    name: str = Field(
        default="python_env",
        pattern=NAME_PATTERN,
        max_length=64,
        description="Identifier of the source (lowercase, digits, _); used in ids and asset names.",
    )
    include: list[PythonEnvPart] = Field(
        default_factory=lambda: list(PYTHON_ENV_PARTS),
        min_length=1,
        description="Which kinds of text to harvest (always read in the canonical order).",
    )
    max_docs: int | None = Field(
        default=None, ge=1, description="Stop after this many records (null: no cap)."
    )
    # The corpus must not change when a user installs more: an extra (flywheel[ray]) or a dev
    # tool once added 576 documents to the demo's corpus and moved its seed model's accuracy
    distributions: Literal["all", "requirements"] = Field(
        default="all",
        description="all: text of every installed distribution; requirements: only of those "
        "this project's own requirements pull in (no extras), and the standard library.",
    )


SourceSpec = Annotated[
    JsonlSource | ParquetSource | TextFilesSource | PythonEnvSource,
    Field(discriminator="kind"),
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceSpec)


def parse_source(
    data: dict[str, Any],
) -> JsonlSource | ParquetSource | TextFilesSource | PythonEnvSource:
    """Validate a plain mapping (e.g. from YAML) into the matching source spec."""
    return _ADAPTER.validate_python(data)
