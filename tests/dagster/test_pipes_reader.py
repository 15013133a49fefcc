"""``assets.pipes``: a stage's Pipes messages arrive whole, however they were written.

A real external process (``python -c``) opens Dagster Pipes and appends a message to the
messages file in two parts, half a second apart, as a page-split ``write(2)`` becomes visible
to a reader; then it reports a materialization. With ``LineMessageReader`` the asset gets the
materialization and every log line; Dagster's own file reader, on the same process, drops the
materialization (if that test starts failing, Dagster's reader buffers partial lines and
ours may go).

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/dagster/test_pipes_reader.py
"""

import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster import AssetExecutionContext, PipesSubprocessClient

from assets.pipes import LineMessageReader, complete_lines, reported_result

# The external process: a log line written in two parts, a line that is not a message, then
# the materialization (REPORT=0: none).
STAGE = textwrap.dedent(
    """
    import json, os, time
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    path = PipesEnvVarParamsLoader().load_messages_params()["path"]
    with open_dagster_pipes() as pipes:
        pipes.log.info("before the split message")
        line = json.dumps({"__dagster_pipes_version": "0.1", "method": "log",
                           "params": {"message": "the split message", "level": "INFO"}})
        with open(path, "a") as f:
            f.write(line[:40]); f.flush(); time.sleep(0.5); f.write(line[40:] + "\\n")
        with open(path, "a") as f:
            f.write("not json\\n")
        if os.environ["REPORT"] == "1":
            pipes.report_asset_materialization(metadata={"steps": 3}, data_version="v-1")
    """
)


def _materialize(reader: dg.PipesMessageReader | None, report: bool = True) -> tuple:
    """The run's result and every message its event log holds (logs and engine events)."""

    @dg.asset
    def stage(context: AssetExecutionContext, pipes: PipesSubprocessClient):  # noqa: ANN202
        env = {"REPORT": "1" if report else "0"}
        invocation = pipes.run(context=context, command=[sys.executable, "-c", STAGE], env=env)
        return reported_result("stage", invocation)

    pipes = dg.PipesSubprocessClient(message_reader=reader)  # None: Dagster's default
    with dg.DagsterInstance.ephemeral() as instance:
        resources = {"pipes": pipes}
        result = dg.materialize(
            [stage], resources=resources, instance=instance, raise_on_error=False
        )
        messages = [r.message or "" for r in instance.all_logs(result.run_id)]
    return result, messages


def _failure(result) -> str:  # noqa: ANN001 - an ExecuteInProcessResult
    return result.get_step_failure_events()[0].step_failure_data.error.message


def test_a_message_written_in_two_parts_arrives_whole_and_the_materialization_too() -> None:
    result, messages = _materialize(LineMessageReader())
    assert result.success
    mat = result.asset_materializations_for_node("stage")[0]
    assert mat.metadata["steps"].value == 3
    assert "the split message" in messages, messages
    # The line that is not a message is reported, and the materialization after it was read.
    assert any("not a Pipes message" in m for m in messages), messages


# Its reader thread dies of the JSONDecodeError: what the test shows, not a warning to print.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dagster_file_reader_loses_the_materialization_on_the_same_stage() -> None:
    result, messages = _materialize(None)
    assert not result.success
    assert "never reached Dagster" in _failure(result)
    assert "the split message" not in messages


def test_a_stage_that_reports_nothing_fails_its_step() -> None:
    result, _ = _materialize(LineMessageReader(), report=False)
    assert not result.success
    assert "stage exited 0 but its materialization never reached Dagster" in _failure(result)


def test_complete_lines_waits_for_the_newline_and_keeps_a_last_partial_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b"")
    finished = threading.Event()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(complete_lines(str(path), finished.is_set)))
    reader.start()
    with open(path, "ab") as f:
        f.write(b'{"a": 1}\n{"b": ')
        f.flush()
        time.sleep(0.2)
        assert got == [b'{"a": 1}']  # the second line is not whole yet
        f.write(b'2}\n\n{"c": 3')  # an empty line is skipped; the last has no newline
    finished.set()
    reader.join(timeout=10)
    assert got == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3']
