"""One agent cycle from the seed checkpoint, over several episode seeds: what a cycle recipe gains.

    .venv/bin/python bench/agent_cycle.py --spec examples/agent/flywheel.yaml \
        [--seeds 1,2,3] [--set cycles.train.steps=100 ...] [--threads 1]

A demo run is three noisy cycles behind a gate; this isolates one cycle and repeats it. For
each episode seed k, the spec's current seed SFT checkpoint (run
``FLYWHEEL_SPEC=examples/agent/flywheel.yaml make demo`` first) plays ``agent.episodes``
training episodes of the agent environment (drawn with seed 1000 + k, sampled with seed k)
through the loop's own collector, ``agent.accept`` filters them, and the checkpoint is
fine-tuned with the cycle's SFT settings (``cycles.train`` over ``sft``) on the accepted
episodes plus ``cycles.seed_replay`` rows of the seed training set (drawn with seed k), as
cycle 1 would. Each
result is scored by greedy play of the held-out episodes (the agent gate's metric). ``--set``
changes the recipe the way ``flywheel run --set`` does. Deterministic: a rerun with the same
seeds and settings gives the same numbers.

The last line: the start's success, each seed's, their mean, and ``gain`` (mean - start).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.core import artifacts  # noqa: E402
from flywheel.core.spec import Spec, load_spec  # noqa: E402


def one_cycle(
    spec: Spec,
    start: Path,
    out: Path,
    *,
    episodes: int,
    episode_seed: int,
    sample_seed: int,
    replay_seed: int | None = None,
) -> dict:
    """Play ``episodes`` training episodes from ``start`` (drawn with ``episode_seed``, sampled
    with ``sample_seed``), accept, and fine-tune once on the accepted ones, plus
    ``cycles.seed_replay`` rows of the seed training set drawn with ``replay_seed`` (None: no
    replay). The trained checkpoint and counts. ``bench/agent_methods.py``'s sft runs this."""
    from flywheel.core.records import Loaded
    from flywheel.core.report import Reporter
    from flywheel.core.shards import read_current
    from flywheel.loop import cycles
    from flywheel.loop.agents.accept import accept_trajectories
    from flywheel.loop.agents.collect import collect
    from flywheel.loop.agents.cycle import accept_settings, agent_environment, collect_settings
    from flywheel.loop.agents.hf_policy import TransformersPolicy
    from flywheel.loop.agents.trajectories import training_rows
    from flywheel.train.finetune import FineTune
    from flywheel.train.sft import train_and_save

    agent, env = spec.agent, agent_environment(spec)
    policy = TransformersPolicy.from_checkpoint(
        start, max_new_tokens=agent.max_new_tokens, temperature=agent.temperature, seed=sample_seed
    )
    drawn = env.train_episodes(episodes, env.settings, seed=episode_seed)
    frame = collect(
        policy,
        policy.tokenizer,
        env.factory,
        drawn,
        env.name,
        None,
        collect_settings(agent, agent.samples_per_episode),
    )
    accepted, _ = accept_trajectories(frame, accept_settings(agent), env.held_out())
    messages = training_rows(accepted)["messages"].to_list()
    if replay_seed is not None:
        seed_set = read_current(cycles.training_set_root(spec, 0))  # cycle 0's: the seed rows
        messages += cycles.replayed_seed(spec, replay_seed, seed_set)["messages"].to_list()
    examples = [{"messages": json.loads(m)} for m in messages]
    settings = spec.cycles.train_settings(spec.sft)
    run = FineTune(settings, artifacts.verify(start), Loaded(examples, [], "bench"), out, "bench")
    _, staging = train_and_save(run, Reporter(), spec.model.attn_implementation)
    played = {"played": frame.height, "played_success": frame["reward"].mean()}
    return {"dir": staging, "accepted": accepted.height, **played}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=Path("examples/agent/flywheel.yaml"))
    parser.add_argument("--checkpoint", type=Path, help="start (default: current seed SFT)")
    parser.add_argument("--seeds", default="1,2,3", help="episode seeds, one cycle each")
    parser.add_argument("--set", action="append", default=[], help="a spec override, repeated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    from flywheel.loop.agents.cycle import evaluate_held_out

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec, args.set)
    if spec.agent is None:
        parser.error(f"{args.spec} has no agent section")
    start = args.checkpoint or artifacts.read_current(spec.product_dir("sft_checkpoint")).path
    metric = f"env/{spec.agent.environment}/success"
    results = {"start": evaluate_held_out(spec, start)[metric]}
    print(f"start {start}: held-out success {results['start']:.3f}", flush=True)
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            began = time.monotonic()
            done = one_cycle(
                spec,
                start,
                Path(tmp) / f"seed-{seed}",
                episodes=spec.agent.episodes,
                episode_seed=1000 + seed,
                sample_seed=seed,
                replay_seed=seed,
            )
            scores.append(evaluate_held_out(spec, done.pop("dir"))[metric])
            results[f"seed{seed}"] = scores[-1]
            print(f"seed {seed}: held-out success {scores[-1]:.3f} {done} "
                  f"in {time.monotonic() - began:.0f} s", flush=True)  # fmt: skip
    results["mean"] = sum(scores) / len(scores)
    results["gain"] = results["mean"] - results["start"]
    print(" ".join(f"{k}={v:.3f}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
