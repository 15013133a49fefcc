"""Sample completions from a checkpoint: the ``synthetic_generations`` data product of a cycle.

    python -m flywheel.loop.generate --spec flywheel.yaml --cycle 1 --checkpoint DIR \
        [--set generation.backend=openai --set generation.samples_per_prompt=8 ...]

Verifies the checkpoint directory, loads cycle ``N``'s prompts (``generation.prompts``, eval
prompts quarantined so they never reach training data), draws ``samples_per_prompt``
completions of each with ``generation.backend`` and commits a shard set at
``<data_dir>/cycles/<N>/generations``: one row per completion, aux table ``quarantine`` with
the refused prompts, and a manifest that records the checkpoint, sampling, prompt source,
counts and speed. The run is one process (no accelerate).

A rerun with the same checkpoint version, generation settings, cycle and prompts finds the
current set's fingerprint equal, generates nothing and reports that set again.
The work is ``flywheel.loop.generate.generations.generate_cycle``; this entry parses the
command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flywheel.core.report import Reporter
from flywheel.core.spec import add_spec_arguments, load_spec
from flywheel.loop.generate.generations import generate_cycle


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flywheel.loop.generate", description=__doc__)
    add_spec_arguments(parser)
    parser.add_argument("--cycle", type=int, required=True, help="the cycle generated for")
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="a published checkpoint directory"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with Reporter(is_main=True) as reporter:
        generate_cycle(load_spec(args.spec, args.overrides), args.cycle, args.checkpoint, reporter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
