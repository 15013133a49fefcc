"""The champion plays a cycle's episodes: the ``trajectories`` data product, out of process.

    python -m flywheel.loop.agents.play --spec flywheel.yaml --cycle 1 \
        [--input promoted_model=v-...] [--checkpoint DIR] [--set agent.episodes=64 ...]

Reads the champion cycle ``N``'s promotion decision left (``promoted_model``; ``--input`` pins
a decided candidate, ``--checkpoint DIR`` by hand plays any published checkpoint), has it play
``agent.episodes`` episodes (``flywheel.loop.agents.cycle.build_trajectories``) and reports
the shard set through Dagster Pipes when Dagster launched it (rank 0 only: one process). It
is how the ``trajectories`` asset runs, like generation, so a crash of the model never takes
the Dagster step's process with it, and the same command runs by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.report import Reporter
from flywheel.core.spec import add_spec_arguments, load_spec
from flywheel.loop.agents.cycle import build_trajectories
from flywheel.loop.cycles import cycle_inputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.loop.agents.play", description=__doc__
    )
    add_spec_arguments(parser)
    parser.add_argument("--cycle", type=int, required=True, help="the cycle played for")
    parser.add_argument("--checkpoint", type=Path, help="by hand: play this published checkpoint")
    P.add_input_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = load_spec(args.spec, args.overrides)
    given = {P.PROMOTED: artifacts.verify(args.checkpoint)} if args.checkpoint else {}
    pins = P.parse_pins(args.input)
    handed = cycle_inputs(spec, P.TRAJECTORIES, args.cycle, pins, given=given)
    with Reporter(is_main=True) as reporter:
        result = build_trajectories(spec, args.cycle, handed)
        reporter.info(f"trajectories {result.version} (reused: {result.reused})")
        metadata = {**result.metadata, "reused": result.reused, "path": str(result.path)}
        reporter.materialization(metadata, data_version=result.version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
