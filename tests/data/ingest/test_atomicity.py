"""A run killed mid-ingest leaves the previous version current and nothing partial visible."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flywheel.core.artifacts import CURRENT, MANIFEST
from flywheel.core.shards import read_current
from flywheel.data.ingest import JsonlSource, ingest_source

from .conftest import write_jsonl

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX fifos")


def _open_writer(fifo: Path, proc: subprocess.Popen, timeout: float = 60) -> int:
    """Open the fifo for writing once the child has opened it for reading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return fd
        except OSError as e:
            if e.errno != errno.ENXIO or proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"child never opened the fifo (exit {proc.poll()})") from e
            time.sleep(0.02)


def _wait_for_shards(root: Path, proc: subprocess.Popen, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(list(root.glob(".staging-*/part-*.parquet"))) < n:
        assert proc.poll() is None, f"child exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "child wrote no shards in time"
        time.sleep(0.02)


def test_sigkill_mid_ingest_keeps_previous_version(tmp_path):
    root = tmp_path / "out"
    write_jsonl(tmp_path / "small.jsonl", [{"id": i, "text": f"old {i}"} for i in range(10)])
    before = ingest_source(JsonlSource(name="big", path="small.jsonl"), root, base_dir=tmp_path)
    old_rows = before.shardset.read()

    # The large source is a fifo fed by this test, so the child is provably mid-ingest (shards
    # staged, input not finished) when it is killed, whatever the machine's speed.
    fifo = tmp_path / "big.jsonl"
    os.mkfifo(fifo)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from flywheel.data.ingest import JsonlSource, ingest_source
        ingest_source(JsonlSource(name="big", path={str(fifo)!r}), Path({str(root)!r}),
                      base_dir=Path("/"), batch_rows=100, shard_rows=500)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        fd = _open_writer(fifo, proc)
        with os.fdopen(fd, "wb") as w:
            for i in range(5000):
                w.write(json.dumps({"id": f"new{i}", "text": "new " * 50}).encode() + b"\n")
            w.flush()
            _wait_for_shards(root, proc, n=5)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # The killed writer's shards exist only in its staging dir, which readers never look at.
    assert list(root.glob(".staging-*/part-*.parquet"))
    assert not list(root.glob(".staging-*/" + MANIFEST))
    assert (root / CURRENT).read_text() == before.shardset.version
    assert sorted(p.name for p in root.glob("v-*")) == [before.shardset.version]
    current = read_current(root)
    assert current.manifest == before.shardset.manifest
    assert current.read().equals(old_rows)
    committed = {p.name for p in current.path.iterdir()}
    assert committed == set(current.manifest["shards"]) | {MANIFEST, "quarantine.parquet"}

    # The next run commits normally and takes nothing from the dead writer's staging.
    write_jsonl(tmp_path / "small.jsonl", [{"text": "after"}])
    after = ingest_source(JsonlSource(name="big", path="small.jsonl"), root, base_dir=tmp_path)
    assert read_current(root).read()["text"].to_list() == ["after"]
    assert after.shardset.num_rows == 1


def test_exception_mid_ingest_aborts_and_cleans_staging(tmp_path, monkeypatch):
    root = tmp_path / "out"
    write_jsonl(tmp_path / "a.jsonl", [{"text": f"doc {i}"} for i in range(50)])
    before = ingest_source(JsonlSource(name="a", path="a.jsonl"), root, base_dir=tmp_path)

    from flywheel.data.ingest import records

    calls = {"n": 0}
    original = records.RecordChecker.check_batch

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(self, batch)

    monkeypatch.setattr(records.RecordChecker, "check_batch", failing)
    with pytest.raises(RuntimeError, match="boom"):
        ingest_source(
            JsonlSource(name="a", path="a.jsonl"), root, base_dir=tmp_path,
            batch_rows=5, shard_rows=5,
        )  # fmt: skip
    assert read_current(root).version == before.shardset.version
    assert not list(root.glob(".staging-*"))
