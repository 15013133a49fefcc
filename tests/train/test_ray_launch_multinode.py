"""Pre-training, SFT, a cycle's retraining and a PPO cycle on two Ray nodes (``launcher: ray``),
and pre-training surviving a killed worker.

    .venv/bin/python -m pytest -q tests/train/test_ray_launch_multinode.py

Ray's multi-node harness (``ray.cluster_utils.Cluster``): a head without CPUs and two
one-CPU nodes, so the two Ray Train workers (one CPU each) run on different nodes, each a
raylet of its own, joined by a gloo process group. The driver is ``launch.command``'s, run
as a subprocess exactly as ``flywheel train`` and the Dagster asset run it. The kill test
goes through Dagster (the asset's Pipes run), so one 2-worker reference run serves both.
A cycle's retraining and its PPO stage launch with ``sft``'s launcher (``cycles.train``
over ``sft``): ``flywheel.loop.retrain`` on the two workers, from a tiny published champion.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flywheel.train import state
from flywheel.train.model import load_model
from flywheel.train.ray_launch import ATTEMPTS, read_attempts
from tests.train.conftest import PRODUCT, build_inputs, entry_env, run_entry, work_dir

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

STORE = 80 << 20  # bytes of object store per node: Ray Train keeps almost nothing there
STEPS = 150  # ~1.5 s of training: a kill after the first checkpoint lands mid-run
# Dropout off: ranks draw their own masks, and the one-process run would draw others.
SAME_MATH = [f"pretrain.steps={STEPS}", "model.config.attention_dropout=0.0"]


@pytest.fixture(scope="module")
def cluster() -> Any:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=STORE)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def on_ray(cluster: Any) -> list[str]:
    """Overrides of a 2-worker run on the cluster (micro_batch 4: a global batch of 8)."""
    ray_train = ["pretrain.launcher=ray", "pretrain.num_processes=2"]
    return [*SAME_MATH, *ray_train, f"ray.address={cluster.address}"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_inputs(tmp_path_factory.mktemp("multinode"))


def copy_inputs(spec_path: Path, target: Path) -> Path:
    """A private copy of the materialized inputs (the same versions): its spec path."""
    shutil.copytree(spec_path.parent, target)
    return target / spec_path.name


@pytest.fixture(scope="module")
def uninterrupted(
    cluster: Any, inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A finished 2-worker run on the cluster (every rank's debug hashes): data dir, log."""
    spec_path = copy_inputs(inputs, tmp_path_factory.mktemp("uninterrupted") / "run")
    proc = run_entry(spec_path, *on_ray(cluster), env=entry_env(FLYWHEEL_TRAIN_DEBUG="1"))
    return spec_path.parent / "data", proc.stderr


def attempts_of(data: Path) -> list[dict[str, Any]]:
    (path,) = (data / PRODUCT / "ray").glob(f"*/{ATTEMPTS}")  # one launch per data dir
    return read_attempts(path)


def final_state(data: Path) -> dict[str, Any]:
    saved = state.step_dir(work_dir(data), STEPS) / state.STATE
    return json.loads((saved / "data.json").read_text())


@pytest.mark.integration
def test_multinode_ranks_agree_and_match_one_process(
    uninterrupted: tuple[Path, str], inputs: Path, tmp_path: Path
) -> None:
    data, log = uninterrupted
    starts = attempts_of(data)
    assert sorted((a["rank"], a["attempt"]) for a in starts) == [(0, 1), (1, 0)]
    assert len({a["node"] for a in starts}) == 2, "both workers ran on one node"
    work = work_dir(data)
    for step in (STEPS - 10, STEPS):
        saved = state.step_dir(work, step) / state.STATE
        debug = [json.loads((saved / f"debug-{r}.json").read_text()) for r in (0, 1)]
        on_disk = state.params_sha256(load_model(saved.parent))
        assert debug[0]["params_sha256"] == debug[1]["params_sha256"] == on_disk
    done = json.loads((work / "done.json").read_text())["metadata"]
    assert done["num_processes"] == 2 and done["steps"] == STEPS
    assert f"result (version {done['checkpoint'].rsplit('/', 1)[1]})" in log  # rank 0 reported
    assert "restarts=0" in log and log.count(f"step {STEPS}/{STEPS}") == 1

    # one process, the same global batch of 8 rows: the same rows in the same steps
    single = copy_inputs(inputs, tmp_path / "run")
    one_thread = entry_env(OMP_NUM_THREADS="1")  # as each Ray worker has: no contention
    run_entry(single, *SAME_MATH, "pretrain.micro_batch=8", launcher=False, env=one_thread)
    ours, theirs = final_state(data), final_state(single.parent / "data")
    assert ours["world_size"] == 2 and theirs["world_size"] == 1
    assert ours["tokens"] == theirs["tokens"] == STEPS * 8 * 64
    # gloo's all-reduce sums in another order than one process's backward: float noise only
    assert ours["losses"] == pytest.approx(theirs["losses"], abs=1e-5)


def _kill_rank_1_after_first_checkpoint(data: Path, running: threading.Thread) -> None:
    deadline = time.monotonic() + 240
    while not list(data.glob(f"{PRODUCT}/work/*/step-0000010/manifest.json")):
        assert running.is_alive() and time.monotonic() < deadline, "no first checkpoint"
        time.sleep(0.01)
    (rank1,) = [a for a in attempts_of(data) if a["rank"] == 1]  # of the first start
    os.kill(rank1["pid"], signal.SIGKILL)  # the worker on the other node, without warning


@pytest.mark.integration
def test_multinode_killed_worker_restarts_in_one_materialization(
    cluster: Any, inputs: Path, uninterrupted: tuple[Path, str], tmp_path: Path
) -> None:
    import dagster as dg

    from definitions import build_definitions

    spec_path = copy_inputs(inputs, tmp_path / "run")
    data = spec_path.parent / "data"
    job = build_definitions(str(spec_path), on_ray(cluster)).resolve_implicit_global_asset_job_def()
    outcome: dict[str, Any] = {}

    def materialize() -> None:
        with dg.DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(
                instance=instance, asset_selection=[dg.AssetKey(PRODUCT)], raise_on_error=False
            )
            logs = [e.user_message for e in instance.all_logs(result.run_id)]
            outcome.update(result=result, logs=logs)

    running = threading.Thread(target=materialize)
    running.start()
    _kill_rank_1_after_first_checkpoint(data, running)
    running.join(timeout=300)
    assert not running.is_alive(), "the materialization did not end after the kill"
    result = outcome["result"]
    assert result.success
    [event] = result.get_asset_materialization_events()
    meta = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}

    # Ray Train restarted both workers once by itself; the run resumed from a checkpoint
    starts = attempts_of(data)
    assert [a["attempt"] for a in starts if a["rank"] == 0] == [1, 2]
    assert meta["restarts"] == 1 and meta["steps"] == STEPS
    resumed = meta["resumed_from_step"]
    assert 10 <= resumed < STEPS, "the run finished before the kill"
    # both attempts' rank 0 logged into the asset's one Pipes session, which only the second
    # closed (a close by the failed one would have Dagster ignore the rest, with a warning)
    logs = outcome["logs"]
    assert f"resuming from step-{resumed:07d}: step {resumed}, batch {resumed}" in logs
    assert any("this attempt failed" in m for m in logs)
    assert not [m for m in logs if "unexpected message" in m]
    reference = uninterrupted[0]
    done = json.loads((work_dir(reference) / "done.json").read_text())["metadata"]
    assert abs(meta["final_loss"] - done["final_loss"]) < 1e-6
    assert final_state(data)["losses"] == final_state(reference)["losses"]


@pytest.mark.integration
def test_multinode_sft_runs_on_two_ray_workers(
    cluster: Any, uninterrupted: tuple[Path, str]
) -> None:
    """TRL's SFTTrainer on the two nodes, from the pre-trained checkpoint of the 2-worker run."""
    from flywheel.core.spec import load_spec
    from flywheel.train import launch

    data = uninterrupted[0]
    sft = ["sft.launcher=ray", "sft.num_processes=2", "sft.steps=4", "sft.save_every=2"]
    sft += ["sft.max_length=64", "sft.data.kind=addition", "sft.data.num_examples=32"]
    sft += ["sft.data.max_digits=2", "sft.data.width=3"]
    spec = load_spec(data.parent / "flywheel.yaml", [*on_ray(cluster), *sft])
    argv = launch.command(
        "sft", spec, launch.write_run_spec(spec, "sft"), launch.pinned_inputs("sft", spec)
    )
    proc = subprocess.run(argv, env=entry_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    (launched,) = (data / "sft_checkpoint" / "ray").glob(f"*/{ATTEMPTS}")
    starts = read_attempts(launched)
    assert sorted(a["rank"] for a in starts) == [0, 1] and len({a["node"] for a in starts}) == 2
    (done,) = (data / "sft_checkpoint" / "work").glob("*/done.json")
    meta = json.loads(done.read_text())["metadata"]
    assert meta["num_processes"] == 2 and meta["steps"] == 4 and meta["resumed_from_step"] == 0
    assert "restarts=0" in proc.stderr


# -- a flywheel cycle: retraining (SFT) and PPO, launched as the cycle asset launches them --
CYCLE_SPEC = """
name: cycle-multinode
data_dir: data
catalog: catalog.duckdb
sft: {micro_batch: 4, log_every: 1, max_length: 64, launcher: ray, num_processes: 2}
cycles:
  train: {steps: 4, lr: 0.003, warmup_steps: 0, save_every: 2}
"""
# PPO in the agent's environment from the champion (no SFT first): 2 iterations of 4
# episodes, 2 per rank; a state after each iteration.
PPO_CYCLE = """
environments: [{name: guess, class_path: "flywheel.envs.guess:NumberGuess",
                settings: {min_n: 2, max_n: 16, held_out: 4}}]
agent: {environment: guess, max_turns: 2, max_new_tokens: 6}
"""
PPO = ["cycles.method=ppo", "cycles.ppo.iterations=2", "cycles.ppo.episodes_per_iteration=4"]
PPO += ["cycles.ppo.minibatch_size=2", "cycles.ppo.save_every=1"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A published random-init chat model (ChatML tokenizer): the cycle's parent."""
    from flywheel.core import artifacts
    from flywheel.core.settings.train import ModelSettings
    from flywheel.data.arithmetic import addition_examples
    from flywheel.train.model import build_model
    from flywheel.train.tokenizer import train_tokenizer
    from tests.loop.agents.conftest import tool_texts
    from tests.train.test_preference import TINY

    root = tmp_path_factory.mktemp("champion") / "sft_checkpoint"
    staging = artifacts.staging_dir(root)
    texts = [
        f"<|im_start|>user\n{p['prompt']}<|im_end|>\n<|im_start|>assistant\n{p['answer']}<|im_end|>\n"
        for p in addition_examples(200, 1, 3, 5, seed=99)
    ]
    tok = train_tokenizer(texts + tool_texts(), vocab_size=400, min_frequency=2, out_dir=staging)
    special = {"eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
    special["pad_token_id"] = tok.pad_token_id
    # 512 positions: an agent's turns (prompt, calls, tool replies) outgrow SFT's 64
    build_model(ModelSettings(config=TINY), len(tok), 512, special, seed=0).save_pretrained(staging)
    return artifacts.publish(root, staging, stage="sft")


def run_cycle(
    cluster: Any, champion: Any, directory: Path, body: str = "", *overrides: str
) -> tuple[Any, subprocess.CompletedProcess[str]]:
    """Cycle 1's retraining from ``champion`` on the cluster's two workers, launched as the
    ``cycle_checkpoint`` asset launches it (``launch.command``): its spec and the run."""
    from flywheel.core.spec import load_spec
    from flywheel.train import launch
    from tests.conftest import write_spec
    from tests.train.test_retrain import write_training_set

    directory.mkdir()
    path = write_spec(directory, CYCLE_SPEC + body)
    spec = load_spec(path, [*overrides, f"ray.address={cluster.address}"])
    write_training_set(spec, 1)
    extra = ["--cycle", "1", "--parent", str(champion.path)]
    argv = launch.command("retrain", spec, launch.write_run_spec(spec, "retrain"), extra)
    assert argv[2:4] == ["flywheel.train.ray_launch", "retrain"]  # sft's launcher
    proc = subprocess.run(
        argv, cwd=directory, env=entry_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return spec, proc


def published_on_two_nodes(spec: Any, proc: subprocess.CompletedProcess[str]) -> Any:
    """Cycle 1's one published checkpoint, after checking both ranks ran, on two nodes."""
    from flywheel.core import artifacts
    from flywheel.loop.cycles import checkpoint_root

    (launched,) = (spec.data_dir / "cycle_checkpoint" / "ray").glob(f"*/{ATTEMPTS}")
    starts = read_attempts(launched)
    assert sorted((a["rank"], a["attempt"]) for a in starts) == [(0, 1), (1, 0)]
    assert len({a["node"] for a in starts}) == 2, "both workers ran on one node"
    assert "restarts=0" in proc.stderr  # rank 0's materialization
    root = checkpoint_root(spec, 1)
    assert len(list(root.glob("v-*"))) == 1  # one publication, by rank 0
    artifact = artifacts.read_current(root)
    assert artifact.meta["stage"] == "cycle" and artifact.meta["lineage"]["cycle"] == 1
    return artifact


@pytest.mark.integration
def test_multinode_cycle_retraining_runs_on_two_ray_workers(
    cluster: Any, champion: Any, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    spec, proc = run_cycle(cluster, champion, tmp_path / "cycle")
    artifact = published_on_two_nodes(spec, proc)
    metrics = artifact.meta["metrics"]
    assert metrics["num_processes"] == 2 and metrics["steps"] == 4
    assert metrics["resumed_from_step"] == 0 and math.isfinite(metrics["final_loss"])
    assert artifact.meta["lineage"]["parent_checkpoint"] == champion.version
    assert proc.stderr.count("step 4/4: loss=") == 1  # rank 0 alone logs
    AutoModelForCausalLM.from_pretrained(artifact.path, local_files_only=True)


@pytest.mark.integration
def test_multinode_ppo_cycle_runs_on_two_ray_workers(
    cluster: Any, champion: Any, tmp_path: Path
) -> None:
    spec, proc = run_cycle(cluster, champion, tmp_path / "ppo", PPO_CYCLE, *PPO)
    artifact = published_on_two_nodes(spec, proc)
    metrics = artifact.meta["metrics"]
    assert metrics["method"] == "ppo" and metrics["ppo/num_processes"] == 2
    assert metrics["ppo/iterations"] == 2 and metrics["ppo/rollouts"] == 8
    history = metrics["ppo/history"]
    assert [h["iteration"] for h in history] == [1, 2]
    assert [step for step, _ in metrics["ppo/reward_curve"]] == [1, 2]
    for key in ("reward", "kl", "policy_loss", "value_loss", "explained_variance"):
        assert all(math.isfinite(h[key]) for h in history), key
    assert all(h["generated_tokens"] > 0 for h in history)
    assert proc.stderr.count("ppo iteration 2/2: ") == 1  # rank 0 alone logs
    record = json.loads((artifact.path / "ppo.json").read_text())
    assert record["settings"]["iterations"] == 2 and record["metrics"]["num_processes"] == 2
