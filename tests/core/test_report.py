"""The reporter: only the main process may open Dagster Pipes."""

from __future__ import annotations

import json
import logging

import pytest
from dagster_pipes import PipesContext, encode_env_var

from flywheel.core.report import PIPES_ENV, RESTARTS_ENV, Reporter, _pipes_metadata


def test_without_dagster_it_logs(monkeypatch, caplog) -> None:
    monkeypatch.delenv(PIPES_ENV, raising=False)
    with caplog.at_level(logging.INFO), Reporter(is_main=True) as rep:
        assert not rep.piped
        rep.info("step 1 loss 2.0")
        rep.materialization({"final_loss": 1.5, "curve": [1, 2]}, data_version="v-1")
    assert "step 1 loss 2.0" in caplog.text and "final_loss=1.5" in caplog.text


def test_other_ranks_never_open_pipes(monkeypatch, caplog) -> None:
    # Every rank inherits the Pipes environment; a non-main rank must not even try to open it
    # (a bogus context here would fail on open).
    monkeypatch.setenv(PIPES_ENV, "not-a-valid-pipes-context")
    with caplog.at_level(logging.INFO), Reporter(is_main=False) as rep:
        assert not rep.piped
        rep.info("hidden")
        rep.materialization({"x": 1})
    assert "hidden" not in caplog.text


def test_main_rank_opens_pipes(monkeypatch) -> None:
    monkeypatch.setenv(PIPES_ENV, "not-a-valid-pipes-context")
    with pytest.raises(Exception), Reporter(is_main=True):  # noqa: B017 - any decode error
        pass


def test_metadata_types() -> None:
    out = _pipes_metadata({"a": 1, "b": "x", "c": [1, 2], "d": {"raw_value": "/p", "type": "path"}})
    assert out["a"] == 1 and out["b"] == "x"
    assert out["c"] == {"raw_value": [1, 2], "type": "json"}
    assert out["d"] == {"raw_value": "/p", "type": "path"}


def _file_pipes(monkeypatch, tmp_path):  # noqa: ANN001, ANN202
    """A real Pipes session in files, as Dagster's file reader sets one up: its messages."""
    new_process(monkeypatch)
    context = {"asset_keys": ["a"], "run_id": "r", "extras": {}, "retry_number": 0}
    for key in ("code_version_by_asset_key", "provenance_by_asset_key", "partition_key"):
        context[key] = None
    for key in ("partition_key_range", "partition_time_window", "job_name"):
        context[key] = None
    (tmp_path / "context.json").write_text(json.dumps(context))
    messages = tmp_path / "messages.jsonl"
    monkeypatch.setenv(PIPES_ENV, encode_env_var({"path": str(tmp_path / "context.json")}))
    monkeypatch.setenv("DAGSTER_PIPES_MESSAGES", encode_env_var({"path": str(messages)}))

    def read() -> list:
        return [json.loads(line) for line in messages.read_text().splitlines()]

    return read


def new_process(monkeypatch) -> None:  # noqa: ANN001
    """Forget this process's Pipes context: dagster_pipes keeps one per process, and each
    ``Reporter`` below stands for a process of its own (a restart starts new ones)."""
    monkeypatch.setattr(PipesContext, "_instance", None)


def test_a_restarted_attempt_reports_into_the_same_session(monkeypatch, tmp_path) -> None:
    messages = _file_pipes(monkeypatch, tmp_path)
    monkeypatch.setenv(RESTARTS_ENV, "0")  # a launcher that restarts: the first attempt
    with pytest.raises(RuntimeError), Reporter(is_main=True) as rep:
        rep.info("step 10")
        raise RuntimeError("a peer died")
    # no "closed": Dagster would ignore (and warn about) whatever the next attempt reports
    assert [m["method"] for m in messages()] == ["opened", "log", "log"]
    assert "a peer died" in messages()[-1]["params"]["message"]
    monkeypatch.setenv(RESTARTS_ENV, "1")
    new_process(monkeypatch)
    with Reporter(is_main=True) as rep:
        rep.materialization({"final_loss": 1.5}, data_version="v-1")
    (report,) = [m["params"] for m in messages() if m["method"] == "report_asset_materialization"]
    assert report["metadata"]["restarts"]["raw_value"] == 1
    assert [m["method"] for m in messages()][-1] == "closed"


def test_without_a_restarting_launcher_a_failure_closes_the_session(monkeypatch, tmp_path) -> None:
    messages = _file_pipes(monkeypatch, tmp_path)
    monkeypatch.delenv(RESTARTS_ENV, raising=False)
    with pytest.raises(RuntimeError), Reporter(is_main=True):
        raise RuntimeError("boom")
    (closed,) = [m["params"] for m in messages() if m["method"] == "closed"]
    assert "boom" in json.dumps(closed["exception"])
