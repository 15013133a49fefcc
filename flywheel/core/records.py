"""Records read from a file: the usable ones, and the quarantined ones with line and reason.

    python -c "from flywheel.core.records import read_jsonl; print(read_jsonl('x.jsonl'))"

Every reader of examples (SFT data, eval tasks, prompts, training sets) returns a ``Loaded``:
a record that cannot be used is kept as a quarantine row naming where it was and why, never
silently dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAW_CHARS = 200  # characters of a bad record kept in its quarantine row, to show what it was


@dataclass
class Loaded:
    """Records read from one input: the usable ones, and the quarantined ones with reasons."""

    examples: list[dict[str, Any]]
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    @property
    def counts(self) -> dict[str, int]:
        reasons = Counter(q["reason"] for q in self.quarantine)
        return {
            "examples": len(self.examples),
            "quarantined": len(self.quarantine),
            **{f"quarantined/{r}": n for r, n in sorted(reasons.items())},
        }


def quarantined(source: str, line: int, reason: str, raw: Any) -> dict[str, Any]:
    """One quarantine row: where the record was, why it was refused, and what it held."""
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str)
    return {"source": source, "line": line, "reason": reason, "raw": text[:RAW_CHARS]}


def read_jsonl(
    path: Path, limit: int | None = None
) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """The JSON objects of a JSONL file with their 1-based line numbers, and the bad lines.

    Blank lines are not records and are skipped; every other line is a record or a
    quarantine row. A missing file is an error that names it. ``limit`` stops after that
    many records and bad lines together: a sample of the file's head (``flywheel check``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    records: list[tuple[int, dict[str, Any]]] = []
    bad: list[dict[str, Any]] = []
    source = str(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if limit is not None and len(records) + len(bad) >= limit:
                break
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad.append(quarantined(source, lineno, "invalid_utf8", f"{exc}"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                bad.append(quarantined(source, lineno, "invalid_json", f"{exc}: {text}"))
                continue
            if not isinstance(obj, dict):
                bad.append(quarantined(source, lineno, "not_an_object", obj))
                continue
            records.append((lineno, obj))
    return records, bad
