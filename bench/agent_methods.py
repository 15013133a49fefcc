"""Rejection-sampling SFT vs PPO vs multi-turn GRPO on one environment, same start, same budget.

    .venv/bin/python bench/agent_methods.py --spec examples/agent/flywheel.yaml \
        [--checkpoint DIR] [--budget 512] [--methods sft,ppo,grpo] [--threads 1] \
        [--set cycles.ppo.lr=1e-4 ...]

Every method starts from the same checkpoint (default: the spec's current seed SFT
checkpoint, so run ``FLYWHEEL_SPEC=examples/agent/flywheel.yaml make demo`` first) and plays
``--budget`` episodes of the spec's agent environment in all:

- sft: the checkpoint plays ``budget`` episodes at the agent's temperature; the accepted ones
  (``agent.accept``) train it with the cycle's SFT settings (``cycles.train`` over ``sft``),
  loss on the model's turns only: one agent cycle without seed replay;
- ppo: ``cycles.ppo`` with ``iterations = budget / episodes_per_iteration``;
- grpo: TRL's GRPO with the environment as ``environment_factory`` on
  ``cycles.preference_train``'s settings, ``steps`` chosen so that it samples ``budget``
  episodes (``steps * micro_batch``).

Each result, and the start, is scored by greedy play of the environment's held-out episodes
(``flywheel.loop.agents.cycle.evaluate_held_out``, the agent gate's metric). The last line is
``key=value`` pairs: the start's and each method's held-out success, and seconds per method.

Measured alone on the 2-core machine with ``--budget 1536 --threads 2`` (one agent cycle's
episodes) from a fresh clone's example seed checkpoint (40.5%): sft 55.5% in 137 s, ppo 42.0%
in 132 s, grpo 37.0% in 114 s; ppo with ``--set cycles.ppo.lr=1e-4 --set
cycles.ppo.temperature=0.7`` 37.5% (the README's agent section has the table).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.core import artifacts  # noqa: E402
from flywheel.core.report import Reporter  # noqa: E402
from flywheel.core.spec import Spec, load_spec  # noqa: E402


def rejection_sft(spec: Spec, start: Path, budget: int, out: Path) -> dict:
    """One agent cycle without replay: play, accept, fine-tune on the accepted episodes."""
    from agent_cycle import one_cycle  # this directory's: the same cycle, repeated over seeds

    return one_cycle(spec, start, out / "sft", episodes=budget, episode_seed=424242, sample_seed=1)


def online_rl(
    spec_path: Path, method: str, start: Path, budget: int, out: Path, given: list[str]
) -> dict:
    from flywheel.loop.agents.cycle_rl import rl_stage

    spec = load_spec(spec_path, given)
    if method == "ppo":
        n = max(1, budget // spec.cycles.ppo.episodes_per_iteration)
        overrides = ["cycles.method=ppo", f"cycles.ppo.iterations={n}"]
    else:
        micro = spec.cycles.preference_settings(spec.sft).micro_batch
        overrides = [
            "cycles.method=grpo",
            f"cycles.preference_train.steps={max(1, budget // micro)}",
        ]
    spec = load_spec(spec_path, [*given, *overrides])
    metrics = rl_stage(spec, 1, start, out / method, out / f"{method}-work", Reporter())
    return {"dir": out / method, **{k: v for k, v in metrics.items() if k.endswith("reward")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=Path("examples/agent/flywheel.yaml"))
    parser.add_argument("--checkpoint", type=Path, help="start (default: current seed SFT)")
    parser.add_argument("--budget", type=int, default=512, help="episodes each method plays")
    parser.add_argument("--methods", default="sft,ppo,grpo")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--set", action="append", default=[], help="key=value: a spec field, for every method"
    )
    args = parser.parse_args(argv)
    import torch

    from flywheel.loop.agents.cycle import evaluate_held_out

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec, args.set)
    start = args.checkpoint or artifacts.read_current(spec.product_dir("sft_checkpoint")).path
    metric = f"env/{spec.agent.environment}/success"
    results = {"start": evaluate_held_out(spec, start)[metric]}
    print(f"start {start}: held-out success {results['start']:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            began = time.monotonic()
            if method == "sft":
                done = rejection_sft(spec, start, args.budget, Path(tmp))
            else:
                done = online_rl(args.spec, method, start, args.budget, Path(tmp), args.set)
            seconds = time.monotonic() - began
            results[method] = evaluate_held_out(spec, done.pop("dir"))[metric]
            results[f"{method}_s"] = round(seconds)
            print(f"{method}: held-out success {results[method]:.3f} in {seconds:.0f} s {done}")
    print(
        " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
