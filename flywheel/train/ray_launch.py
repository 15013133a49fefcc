"""Run a training stage as Ray Train workers on the spec's Ray cluster, surviving a lost worker.

    python -m flywheel.train.ray_launch pretrain --spec SPEC [--input ...] [--set ...]
    flywheel train pretrain --set pretrain.launcher=ray     # launch.command() returns the above

With ``launcher: ray`` (on ``pretrain``, ``sft``, or ``sft`` for a cycle's ``retrain``, whose
PPO stage runs inside it), ``flywheel.train.launch.command`` starts this driver instead of
``accelerate launch``. It joins the cluster ``ray.address`` names (or starts one here) and runs a
Ray Train ``TorchTrainer`` of ``num_processes`` workers, one CPU each (one GPU each where the
cluster has GPUs). Ray Train places them on any node, sets RANK/WORLD_SIZE/MASTER_ADDR and
opens the gloo (or NCCL) process group; each worker then calls the stage entry's own
``main(argv)``, whose ``Accelerator(cpu=True)`` finds that group and trains plain DDP, exactly
as under ``accelerate launch``. Why Ray Train rather than ``accelerate launch`` on each node:
only a cluster scheduler starts the ranks on the other machines, and restarts them when one
dies; ``engine: ray`` already made Ray the cluster (docs/scaling.md).

When a worker or its node is lost, Ray Train tears the group down and starts it again (up to
``max_restarts`` times, ``FailureConfig``). Nothing is resumed from Ray's own checkpoints: the
entry resumes from the newest step checkpoint of its work directory (``flywheel.train.state``,
TRL's ``checkpoint-N``), so the work directory (the spec's ``data_dir``) must be storage every
node sees. On each start every rank appends ``{rank, pid, node, ...}`` to
``<product>/ray/<run>/attempts.jsonl`` (rank 0 also the attempt's number); the entry's rank 0
reports ``restarts`` (attempts - 1) in its materialization beside ``resumed_from_step``.

Dagster Pipes reaches rank 0 through the worker environment: every ``DAGSTER_PIPES_*``,
``FLYWHEEL_*`` and ``HF_*`` variable of this driver is set in each worker
(``worker_runtime_env``), and the Dagster asset puts the messages file in the data dir when
training runs on Ray (``assets/training.py``), where rank 0 on any node can append to it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from flywheel.core.report import RESTARTS_ENV
from flywheel.core.spec import Spec, add_spec_arguments, load_spec

ATTEMPTS = "attempts.jsonl"
# What a worker inherits from this driver: Pipes (rank 0 reports), the run id the Dagster
# launcher finds a run's processes by, Hugging Face's offline and cache settings.
FORWARDED = ("DAGSTER_PIPES_", "FLYWHEEL_", "HF_", "TOKENIZERS_", "TRANSFORMERS_")
# Ray Train's print patch logs every print() even inside a stdout capture; dill (under
# datasets' fingerprinting in TRL) captures dis.dis() output that way, which would flood the
# log with bytecode. The entries log through the Reporter (logging), not print.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The driver's variables each worker gets (see ``FORWARDED``)."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED)}


def record_attempt(attempts: Path, rank: int, node: str = "") -> int:
    """Append this worker's start to ``attempts``; rank 0 gets the attempt number (1 on the
    first start), the other ranks 0 (they start in no set order relative to rank 0).

    Each start of the group has exactly one rank 0, so its number is one more than the rank-0
    lines before it. One short ``O_APPEND`` write per line: concurrent lines never interleave.
    """
    attempts.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    if rank == 0:
        attempt = 1 + sum(1 for a in read_attempts(attempts) if a["rank"] == 0)
    line = {"attempt": attempt, "rank": rank, "pid": os.getpid(), "node": node}
    line |= {"host": socket.gethostname(), "time": time.time()}
    with open(attempts, "a") as f:
        f.write(json.dumps(line) + "\n")
    return attempt


def read_attempts(attempts: Path) -> list[dict[str, Any]]:
    """Every worker start recorded so far, in order."""
    if not attempts.exists():
        return []
    return [json.loads(line) for line in attempts.read_text().splitlines() if line]


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: record the start, then run the stage entry's ``main(argv)``."""
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    node = ray.get_runtime_context().get_node_id()
    # Rank 0 numbers the attempt; the others only record where they run (and their pid).
    attempt = record_attempt(Path(config["attempts"]), rank, node)
    if rank == 0:
        os.environ[RESTARTS_ENV] = str(attempt - 1)
    status = importlib.import_module(config["module"]).main(list(config["argv"]))
    if status:  # an entry that returns its exit status (sft, retrain) failed this way
        raise RuntimeError(f"{config['module']} exited with status {status}")


def _connect(spec: Spec) -> None:
    try:
        import ray.train  # noqa: F401
    except ImportError:
        raise SystemExit("launcher: ray needs Ray Train: pip install 'flywheel[ray]'") from None
    from flywheel.data.dedup.ray_engine import connect

    connect(spec.ray)


def run_dir(spec: Spec, stage: str) -> Path:
    """A new directory for one launch's Ray state and attempt records, in the data dir."""
    from flywheel.train.launch import PRODUCTS

    name = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return spec.product_dir(PRODUCTS[stage]) / "ray" / name


def fit(spec: Spec, stage: str, argv: list[str]) -> Path:
    """Train ``stage`` on Ray Train workers; the launch's directory. Raises Ray's
    ``TrainingFailedError`` when it failed more than ``max_restarts`` times."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from flywheel.train.launch import STAGES, train_settings

    settings = train_settings(stage, spec)
    where = run_dir(spec, stage)
    where.mkdir(parents=True)
    config = {"module": STAGES[stage], "argv": argv, "attempts": str(where / ATTEMPTS)}
    # A GPU per worker where the cluster has GPUs (NCCL), else one CPU each (gloo).
    gpus = ray.cluster_resources().get("GPU", 0) >= settings.num_processes
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=settings.num_processes, use_gpu=gpus),
        run_config=RunConfig(
            name=where.name,
            storage_path=str(where.parent),
            failure_config=FailureConfig(max_failures=settings.max_restarts),
            worker_runtime_env={"env_vars": {**forwarded_env(), **WORKER_ENV}},
        ),
    )
    trainer.fit()
    return where


def main(argv: list[str] | None = None) -> int:
    from flywheel.train.launch import TRAINED

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=TRAINED)
    add_spec_arguments(parser)
    args, _ = parser.parse_known_args(argv)  # the rest is the entry's (--input, --cycle, ...)
    spec = load_spec(args.spec, args.overrides)
    _connect(spec)
    from ray.train import TrainingFailedError

    try:
        entry = list(argv)
        entry.remove(args.stage)  # the entry's own arguments: all but the stage
        where = fit(spec, args.stage, entry)
    except TrainingFailedError as e:
        print(f"{args.stage} failed on Ray Train: {e}", file=sys.stderr, flush=True)
        return 1
    restarts = sum(1 for a in read_attempts(where / ATTEMPTS) if a["rank"] == 0) - 1
    print(f"{args.stage} finished on Ray Train after {restarts} restart(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
