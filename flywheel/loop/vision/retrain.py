"""Retrain the champion VLM on cycle ``c``'s training set: ``cycle_checkpoint`` with ``vision``.

    python -m flywheel.loop.vision.retrain --spec examples/vision/flywheel.yaml --cycle 1

With a ``vision`` section this is the ``retrain`` stage (``flywheel.train.launch``): VLM SFT
(``train_vlm_sft``) from the champion cycle ``c-1`` left, with ``cycles.train`` over ``sft``'s
settings, on the cycle's training set (the seed conversations replayed plus every accepted
answer so far: rejection sampling), each row's image read back from the store. Keying,
resuming and publishing are ``flywheel.train.finetune``'s; the candidate is then evaluated and
gated by the text loop's promotion.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flywheel.core import chat
from flywheel.core import products as P
from flywheel.core.records import Loaded
from flywheel.core.report import Reporter
from flywheel.core.spec import Spec, add_spec_arguments, load_spec
from flywheel.data.images.store import ImageStore
from flywheel.loop.cycles import check_cycle_inputs, checkpoint_root, cycle_inputs
from flywheel.loop.vision.data import sft_records, vision_settings
from flywheel.train.finetune import FineTune, run_finetune


def run_vision_retrain(
    spec: Spec, reporter: Reporter, cycle: int, handed: Mapping[str, Any]
) -> dict[str, Any]:
    from flywheel.loop.vision.seed import use_threads
    from flywheel.train.vlm.train import train_vlm_sft

    check_cycle_inputs(spec, P.CYCLE_CHECKPOINT, cycle, handed)
    use_threads(vision_settings(spec))
    training, champion = handed[P.TRAINING_SET], handed[P.of_cycle(P.PROMOTED, cycle - 1)]
    rows = training.read(["messages"])["messages"].to_list()
    data = Loaded(
        [{"messages": chat.loads(m)} for m in rows], [], f"training_set@{training.version}"
    )
    settings = spec.cycles.train_settings(spec.sft)
    lineage = {"training_set": training.version, "cycle": cycle, **data.counts}
    run = FineTune(
        settings,
        champion,
        data,
        checkpoint_root(spec, cycle),
        "retrain",
        lineage,
        {"cycle": cycle},
        inputs=P.versions(handed),
    )
    store = ImageStore(spec.image_store_dir)

    def train() -> tuple[dict[str, Any], Path]:
        records = sft_records(data.examples, store)
        return train_vlm_sft(
            settings, champion.path, records, run.work, run.staging, reporter
        ), run.staging

    return run_finetune(spec, reporter, run, train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.loop.vision.retrain", description=__doc__
    )
    add_spec_arguments(parser)
    parser.add_argument("--cycle", type=int, required=True, help="the cycle to train (>= 1)")
    P.add_input_arguments(parser)
    args = parser.parse_args(argv)
    spec = load_spec(args.spec, args.overrides)
    handed = cycle_inputs(spec, P.CYCLE_CHECKPOINT, args.cycle, P.parse_pins(args.input))
    with Reporter(is_main=os.environ.get("RANK", "0") == "0") as reporter:
        run_vision_retrain(spec, reporter, args.cycle, handed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
