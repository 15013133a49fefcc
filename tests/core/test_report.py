"""The reporter: only the main process may open Dagster Pipes."""

from __future__ import annotations

import logging

import pytest

from flywheel.core.report import PIPES_ENV, Reporter, _pipes_metadata


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
