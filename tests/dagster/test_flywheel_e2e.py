"""End to end, as a user runs it: the demo on tiny settings, then the UI.

``python -m jobs.demo`` materializes the graph with ``dg launch`` and lets a real
``dagster-daemon`` turn the flywheel (the accepted-data sensor starts cycle 0 and cycle 1).
Then the Dagster webserver is started on the same temporary home, bound to 127.0.0.1; its
GraphQL API must show the assets from the raw corpus to the promoted model, connected and
materialized, and headless Chromium takes a screenshot of the global lineage page.
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
from pathlib import Path

import pytest

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


def _env(tmp_path: Path, spec: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FLYWHEEL_SPEC": str(spec),
        "PATH": f"{BIN}:{os.environ['PATH']}",
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


@pytest.mark.integration
def test_demo_then_ui_shows_the_connected_materialized_graph(
    tmp_path: Path, flywheel_spec: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    env = _env(tmp_path, flywheel_spec)
    demo = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--timeout", "900"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "cycle 1:" in demo.stdout and "reached cycles.max_cycles" in demo.stdout

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

        _graphql(port, "mutation { setNuxSeen }")  # the first-run dialog covers the graph
        shot = tmp_path / "lineage.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--window-size=1600,1000",
                "--virtual-time-budget=15000",
                f"--screenshot={shot}",
                f"http://127.0.0.1:{port}/asset-groups",
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
        assert shot.stat().st_size > 20_000  # a rendered graph, not a blank page
        keep = os.environ.get("FLYWHEEL_E2E_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)
    finally:
        server.terminate()
        server.wait(timeout=30)
