"""Dagster Pipes messages read from a file one whole line at a time.

Every stage launched through Pipes (training, evaluation, generation, play) appends its
messages to a file, one JSON object per line, and Dagster's ``PipesFileMessageReader`` (what
``PipesSubprocessClient`` uses by default, through its temporary-file reader) tails it with
``readline()``. At the end of a file that is being appended to, ``readline()`` can return the
first part of a message: the kernel makes a ``write(2)`` that crosses a page boundary visible
one page at a time. Dagster 1.13 parses that part, the reader thread raises, and every later
message is dropped, the stage's materialization included (the asset then materializes with
no metadata and no data version). Measured here: 6 partial reads in 20,000 messages the size
of a trainer's per-step log line, and a 400-step cycle training lost its materialization so.

``LineMessageReader`` keeps the start of a message until its newline arrives, and a line
that is not a message is reported as a framework exception and skipped: one bad message
never loses the rest.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
from dagster_pipes import PipesDefaultMessageWriter

POLL_S = 0.01  # Dagster's own reader polls every 10 ms too
CHUNK = 1 << 16


def complete_lines(path: str, finished: Callable[[], bool]) -> Iterator[bytes]:
    """The lines appended to ``path`` (without their newline), each once it is whole, until
    ``finished()`` is true and the file has been read to its end. A last line with no newline
    (its writer died mid-message) is yielded as it is."""
    pending = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                yield from (line for line in lines if line.strip())
                continue
            if finished():  # read once more: the writer may have written before it closed
                yield from (line for line in (pending + f.read()).split(b"\n") if line.strip())
                return
            time.sleep(POLL_S)


class LineMessageReader(dg.PipesMessageReader):
    """Pipes messages from ``path`` (default: a file in a temporary directory), handled one
    complete line at a time. The file is created empty and removed after the session."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path

    @contextmanager
    def read_messages(self, handler: dg.PipesMessageHandler) -> Iterator[dict]:
        with tempfile.TemporaryDirectory() as tmp:
            path = self._path or os.path.join(tmp, "messages.jsonl")
            open(path, "wb").close()
            finished = threading.Event()
            thread = threading.Thread(target=_read, args=(path, handler, finished), daemon=True)
            thread.start()
            try:
                yield {
                    PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                    PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False,
                }
            finally:
                finished.set()
                thread.join()
                if self._path and os.path.exists(path):
                    os.remove(path)

    def no_messages_debug_text(self) -> str:
        where = self._path or "a temporary file"
        return f"Attempted to read messages from {where}, one complete line at a time."


def reported_result(
    stage: str, invocation: dg.PipesClientCompletedInvocation
) -> dg.MaterializeResult:
    """The materialization ``stage`` reported. Every stage reports one (its version and
    metrics) before it exits 0, so none is a failure, not Dagster's empty stand-in."""
    if not invocation.get_results(implicit_materializations=False):
        raise dg.Failure(
            f"{stage} exited 0 but its materialization never reached Dagster (its Pipes "
            "messages were lost: see this step's engine events)"
        )
    return invocation.get_materialize_result()


def _read(path: str, handler: dg.PipesMessageHandler, finished: threading.Event) -> None:
    for line in complete_lines(path, finished.is_set):
        try:
            handler.handle_message(json.loads(line))
        except Exception:  # noqa: BLE001 - reported, and the next message is still read
            handler.report_pipes_framework_exception(
                f"LineMessageReader: a line that is not a Pipes message, skipped: {line[:200]!r}",
                sys.exc_info(),
            )
