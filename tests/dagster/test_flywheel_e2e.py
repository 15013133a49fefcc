"""End to end, as a user runs it: the demo on tiny settings, through a crash, then the UI.

``flywheel run`` (what make demo runs) materializes the graph with ``dagster job execute``
and lets a real ``dagster-daemon`` turn the flywheel (the accepted-data sensor starts cycle 0
and cycle 1). While cycle 1 trains, every process of it is killed at once (``tests/dagster/
crash.py``); ``flywheel run --skip-base``, started again, must finish the loop by itself:
run monitoring fails the dead run, run retries rerun it from the failed step, the training
resumes from its checkpoint. (The crash rides on this test because a second demo would cost
the suite five more minutes.)
Then the Dagster webserver is started on the same temporary home, bound to 127.0.0.1; its
GraphQL API must show the assets from the raw corpus to the promoted model, connected and
materialized, and the asset catalog page, rendered by headless Chromium, must list every one
of them as materialized (all partitions, for the flywheel's). The rendered page is kept as a
screenshot under the test's temporary directory (its path is printed).

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/dagster/test_flywheel_e2e.py -s
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.dagster import crash

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHAIN = [
    "raw_corpus",
    "filtered_documents",
    "deduplicated_shards",
    "tokenizer",
    "tokenized_dataset",
    "pretrained_checkpoint",
    "sft_checkpoint",
    "training_set",
    "cycle_checkpoint",
    "cycle_eval_scores",
    "promoted_model",
    "synthetic_generations",
    "accepted_generations",
]
PARTITIONED = set(CHAIN[CHAIN.index("training_set") :])  # one partition per flywheel cycle
# How the catalog's status cell reads for an asset whose partitions all materialized: the
# success icon with "All", then no missing and no failed partition (icons are "[aria-label]").
ALL_PARTITIONS = [
    *("[partition_success]", "All"),
    *("[partition_missing]", "0"),
    *("[partition_failure]", "0"),
]
STATUS_WORDS = {"Materialized", "Never materialized", "Failed", "Materializing"}


def _env(tmp_path: Path, spec: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = crash.fast_recovery(yaml.safe_load((ROOT / "dagster.yaml").read_text()))
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return {
        **os.environ,
        **crash.recovery_env(),
        "DAGSTER_HOME": str(home),
        "FLYWHEEL_SPEC": str(spec),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        # The spec names tests.conftest:accept_nonempty; flywheel run puts only the spec's
        # directory on the import path, not the directory it was started from.
        "PYTHONPATH": str(ROOT),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


def _wait_for_server(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the webserver exited"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError("the webserver did not answer")


def _materializations(port: int, key: str) -> list[dict]:
    query = (
        '{ assetOrError(assetKey: {path: ["KEY"]}) { ... on Asset { '
        "assetMaterializations(limit: 10) { partition runId } } } }"
    ).replace("KEY", key)
    return _graphql(port, query)["assetOrError"]["assetMaterializations"]


def _upstream_closure(nodes: dict[str, list[str]], key: str) -> set[str]:
    seen, todo = set(), [key]
    while todo:
        for parent in nodes[todo.pop()]:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


class CatalogRows(HTMLParser):
    """The asset catalog table of a rendered page: {asset name: the texts of its row}, with
    each icon as "[its aria-label]". A row starts at its checkbox, ``checkbox-<asset>``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        testid = found.get("data-testid") or ""
        if tag == "script":  # the page's scripts follow the table: the last row ended
            self._row = None
        elif tag == "input" and testid.startswith("checkbox-"):
            self._row = self.rows.setdefault(testid.removeprefix("checkbox-"), [])
        elif self._row is not None and found.get("aria-label"):
            self._row.append(f"[{found['aria-label']}]")

    def handle_data(self, data: str) -> None:
        if self._row is not None and data.strip():
            self._row.append(data.strip())


def _contains(texts: list[str], run: list[str]) -> bool:
    return any(texts[i : i + len(run)] == run for i in range(len(texts)))


def _status_shown(texts: list[str]) -> bool:
    return bool(STATUS_WORDS & set(texts)) or any(t.endswith(" partitions") for t in texts)


def render_catalog(chromium: str, port: int, out: Path, attempts: int = 5) -> dict[str, list]:
    """The catalog's rows once every asset of CHAIN shows a status (the page loads its data
    after it renders: each attempt lets it run 15 s of virtual time); the screenshot of the
    same render is written to ``out``."""
    rows: dict[str, list[str]] = {}
    for attempt in range(attempts):
        page = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={out.parent / f'chromium-{attempt}'}",
                "--window-size=1600,2000",  # the table is virtualized: every row in view
                "--virtual-time-budget=15000",
                f"--screenshot={out}",
                "--dump-dom",
                f"http://127.0.0.1:{port}/assets",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=180,
        )
        parser = CatalogRows()
        parser.feed(page.stdout)
        rows = parser.rows
        if all(_status_shown(rows.get(key, [])) for key in CHAIN):
            break
    return rows


@pytest.mark.integration
def test_demo_survives_killing_every_process_then_ui_shows_the_materialized_graph(
    tmp_path: Path, flywheel_spec: Path
) -> None:
    env = _env(tmp_path, flywheel_spec)
    killed = crash.kill_in_training(env, ROOT, flywheel_spec, tmp_path / "killed_run.log")
    demo = crash.recover(env, ROOT)
    assert "cycle 1:" in demo.stdout and "reached cycles.max_cycles" in demo.stdout
    crash.assert_recovered(env["DAGSTER_HOME"], killed, demo.stdout)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it): the UI is unchecked")
    port = _free_port()
    server = subprocess.Popen(
        [
            str(BIN / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "workspace.yaml",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_server(port, server)
        data = _graphql(port, "{ assetNodes { assetKey { path } dependencyKeys { path } } }")
        nodes = {
            "/".join(n["assetKey"]["path"]): ["/".join(d["path"]) for d in n["dependencyKeys"]]
            for n in data["assetNodes"]
        }
        assert set(CHAIN) <= set(nodes)
        for child, parent in zip(CHAIN[1:], CHAIN, strict=False):
            assert parent in _upstream_closure(nodes, child), (parent, child)
        for key in ("raw_corpus", "sft_checkpoint", "promoted_model", "accepted_generations"):
            assert _materializations(port, key), f"{key} was never materialized"
        promoted = _materializations(port, "promoted_model")
        assert {m["partition"] for m in promoted} == {"0", "1"}

        _graphql(port, "mutation { setNuxSeen }")  # the first-run dialog covers the page
        shot = tmp_path / "asset_catalog.png"
        rows = render_catalog(chromium, port, shot)
        print(f"asset catalog screenshot: {shot}")
        keep = os.environ.get("FLYWHEEL_E2E_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)
        assert set(CHAIN) <= set(rows), sorted(rows)
        for key in CHAIN:
            texts = rows[key]
            if key in PARTITIONED:
                assert "2 partitions" in texts and _contains(texts, ALL_PARTITIONS), texts
            else:
                assert "Materialized" in texts, (key, texts)
    finally:
        server.terminate()
        server.wait(timeout=30)
