"""Sample completions from a checkpoint: the ``synthetic_generations`` data product of a cycle.

    python -m flywheel.loop.generate --spec flywheel.yaml --cycle 1 \
        [--input promoted_model=v-...] [--checkpoint DIR] \
        [--set generation.backend=openai --set generation.samples_per_prompt=8 ...]

Reads the champion cycle ``N``'s promotion decision left (``promoted_model``: the catalog's,
``--input promoted_model=VERSION`` for a decided candidate, or by hand ``--checkpoint DIR``,
any published checkpoint; ``flywheel.loop.cycles.cycle_inputs``), loads cycle ``N``'s prompts
(``generation.prompts``, eval prompts quarantined so they never reach training data),
draws ``samples_per_prompt`` completions of each with ``generation.backend`` and commits a
shard set at ``<data_dir>/cycles/<N>/generations``: one row per completion, aux table
``quarantine`` with the refused prompts, and a manifest that records the checkpoint, sampling,
prompt source, counts and speed, and the champion's version as its ``inputs``. The run is one
process (no accelerate).

A rerun with the same checkpoint version, generation settings, cycle and prompts finds the
current set's fingerprint equal, generates nothing and reports that set again.
The work is ``flywheel.loop.generate.generations.generate_cycle``; this entry parses the
command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.report import Reporter
from flywheel.core.spec import add_spec_arguments, load_spec
from flywheel.loop.cycles import cycle_inputs
from flywheel.loop.generate.generations import generate_cycle


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flywheel.loop.generate", description=__doc__)
    add_spec_arguments(parser)
    parser.add_argument("--cycle", type=int, required=True, help="the cycle generated for")
    parser.add_argument(
        "--checkpoint", type=Path, help="by hand: generate from this published checkpoint"
    )
    P.add_input_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = load_spec(args.spec, args.overrides)
    given = {P.PROMOTED: artifacts.verify(args.checkpoint)} if args.checkpoint else {}
    handed = cycle_inputs(spec, P.GENERATIONS, args.cycle, P.parse_pins(args.input), given=given)
    with Reporter(is_main=True) as reporter:
        generate_cycle(spec, args.cycle, handed, reporter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
