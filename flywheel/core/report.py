"""Reporting from training and evaluation processes: to Dagster Pipes on rank 0, else to logs.

Every rank inherits the Pipes environment from ``accelerate launch``, but Dagster accepts one
materialization per asset per step: a second report fails the step. So only the main process
opens Pipes; the others log locally. Without Dagster (a run by hand) the reporter prints.
Under a launcher that restarts failed workers (``flywheel.train.ray_launch`` sets
``RESTARTS_ENV``), every attempt's rank 0 writes into one Pipes session, which only the
attempt that finishes closes; its materialization carries ``restarts``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

PIPES_ENV = "DAGSTER_PIPES_CONTEXT"
# Set by a launcher that restarts a stage's processes after a failure (flywheel.train.
# ray_launch): how many times it did before this start; reported as ``restarts``.
RESTARTS_ENV = "FLYWHEEL_TRAIN_RESTARTS"

log = logging.getLogger("flywheel.train")


class Reporter:
    """Logs and a final materialization report; a context manager around Dagster Pipes."""

    def __init__(self, is_main: bool = True):
        self.is_main = is_main
        self._pipes: Any = None
        self._stack: Any = None

    def __enter__(self) -> Reporter:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if self.is_main and os.environ.get(PIPES_ENV):
            from dagster_pipes import open_dagster_pipes

            self._stack = open_dagster_pipes()
            self._pipes = self._stack.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stack is None:
            return
        if exc[1] is not None and os.environ.get(RESTARTS_ENV) is not None:
            # The launcher starts this stage again from its last checkpoint, and the next
            # attempt's rank 0 reports into the same Pipes session: a "closed" message now
            # would make Dagster drop (and warn about) everything that attempt says.
            self._pipes.log.error(f"this attempt failed ({exc[1]!r}); the launcher may restart it")
            return
        self._stack.__exit__(*exc)

    @property
    def piped(self) -> bool:
        return self._pipes is not None

    def info(self, msg: str) -> None:
        if not self.is_main:
            return
        if self._pipes is not None:
            self._pipes.log.info(msg)
        log.info(msg)

    def warning(self, msg: str) -> None:
        if self._pipes is not None:
            self._pipes.log.warning(msg)
        log.warning(msg)

    def materialization(self, metadata: dict[str, Any], data_version: str | None = None) -> None:
        """The stage's final report: metadata shown (and plotted) in the UI, and its version."""
        if not self.is_main:
            return
        if os.environ.get(RESTARTS_ENV):
            metadata = {**metadata, "restarts": int(os.environ[RESTARTS_ENV])}
        if self._pipes is not None:
            self._pipes.report_asset_materialization(
                metadata=_pipes_metadata(metadata), data_version=data_version
            )
        else:
            shown = ", ".join(f"{k}={v}" for k, v in metadata.items() if _scalar(v))
            log.info("result (version %s): %s", data_version, shown)


def loss_curve(losses: Sequence[tuple[int, float]], points: int = 20) -> list[list[float]]:
    """(step, loss) at up to ``points`` evenly spaced entries, the first and last included."""
    n, k = len(losses), min(points, len(losses))
    idx = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
    return [[losses[i][0], round(losses[i][1], 5)] for i in idx]


def _scalar(v: Any) -> bool:
    return isinstance(v, int | float | str | bool)


def _pipes_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, bool | int | float | str) or value is None:
            out[key] = value
        elif isinstance(value, dict) and "raw_value" in value:
            out[key] = value  # already typed, e.g. {"raw_value": "...", "type": "md"}
        else:
            out[key] = {"raw_value": value, "type": "json"}
    return out
