"""Helpers shared by the ingest tests: writing small inputs and running an ingest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flywheel.data.ingest import IngestResult, SourceSpec, ingest_source


def jsonl_line(obj: Any) -> bytes:
    """One JSONL line: a dict/list/... as JSON, or bytes/str taken literally."""
    if isinstance(obj, bytes):
        body = obj
    elif isinstance(obj, str):
        body = obj.encode()
    else:
        body = json.dumps(obj).encode()
    return body + b"\n"


def write_jsonl(path: Path, records: list[Any]) -> list[int]:
    """Write ``records`` one per line; returns each line's byte offset."""
    offsets, data = [], b""
    for rec in records:
        offsets.append(len(data))
        data += jsonl_line(rec)
    path.write_bytes(data)
    return offsets


@pytest.fixture
def ingest(tmp_path: Path) -> Callable[..., IngestResult]:
    """Ingest a spec into ``tmp_path/out/<name>`` with ``tmp_path`` as base_dir."""

    def run(spec: SourceSpec, root: Path | None = None, **kwargs: Any) -> IngestResult:
        return ingest_source(
            spec, root or tmp_path / "out" / spec.name, base_dir=tmp_path, **kwargs
        )

    return run
