"""What a preflight check finds: one ``Problem`` per thing wrong, naming the spec key and file.

flywheel check [SPEC]        (prints them, one per line; exit 1 if any is an error)
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """An error stops a run before it starts; a warning is printed and the run goes on."""

    level: Level
    key: str  # the spec key, as a user writes it: sft.data.extra[0].path
    message: str
    file: Path | None = None  # the file the problem is in or about, when there is one

    def __str__(self) -> str:
        where = f" ({self.file})" if self.file is not None else ""
        return f"{self.level}: {self.key}{where}: {self.message}"


def error(key: str, message: str, file: Path | None = None) -> Problem:
    return Problem("error", key, message, file)


def warning(key: str, message: str, file: Path | None = None) -> Problem:
    return Problem("warning", key, message, file)


def counted(counts: Mapping[str, int]) -> str:
    """``reason=n`` pairs, most frequent first: ``missing_text=3, invalid_json=1``."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{reason}={n}" for reason, n in ranked)


def raised(exc: BaseException) -> str:
    """What user code raised, and where: ``NameError: name 'd' is not defined (my_envs.py:27,
    in reset)``, the innermost frame, so a bug in a function the spec names is found in it."""
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:  # made, never raised
        return text
    return f"{text} ({Path(frames[-1].filename).name}:{frames[-1].lineno}, in {frames[-1].name})"
