"""Evaluate the checkpoint of a stage and publish the scores as ``eval_scores``.

    python -m flywheel.loop.eval --spec flywheel.yaml [--stage sft|pretrain] [--set
    eval.micro_batch=8]
    python -m flywheel.loop.eval --spec flywheel.yaml --cycle 2      # a flywheel cycle's candidate
    python -m flywheel.loop.eval --spec flywheel.yaml --input sft_checkpoint=v-...   # pinned

Reads the ``sft_checkpoint`` (default) or ``pretrained_checkpoint``, the ``tokenized_dataset``
and (SFT) the checkpoint's pre-trained parent, at CURRENT or the ``--input PRODUCT=VERSION``
given (``flywheel.loop.eval.scores.eval_inputs``); measures held-out perplexity and the
accuracy of every ``eval.tasks`` entry, then publishes a verified report directory
(``scores.json``, ``samples.jsonl`` with every scored answer, ``quarantine.jsonl`` when a task
file had bad records) with the versions read as its ``inputs``, records the metrics in the
catalog, and reports a materialization whose data version is the report's version. With
``--cycle N`` it scores cycle N's candidate (``flywheel.loop.cycles.cycle_inputs``) and
publishes under ``cycles/N/eval`` instead.
The work is ``flywheel.loop.eval.scores.evaluate``; this entry parses the command line.
"""

from __future__ import annotations

import argparse

from flywheel.core import products as P
from flywheel.core.report import Reporter
from flywheel.core.spec import add_spec_arguments, load_spec
from flywheel.loop.eval.scores import CHECKPOINTS, eval_inputs, evaluate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flywheel.loop.eval", description=__doc__)
    add_spec_arguments(parser)
    parser.add_argument(
        "--stage", choices=sorted(CHECKPOINTS), default="sft", help="whose checkpoint to score"
    )
    parser.add_argument("--cycle", type=int, help="score this flywheel cycle's candidate")
    P.add_input_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = load_spec(args.spec, args.overrides)
    with Reporter(is_main=True) as reporter:
        handed = eval_inputs(spec, args.stage, args.cycle, P.parse_pins(args.input))
        evaluate(spec, handed, args.stage, args.cycle, reporter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
