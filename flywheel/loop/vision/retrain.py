"""Retrain the champion VLM on cycle ``c``'s training set: ``cycle_checkpoint`` with ``vision``.

    python -m flywheel.loop.vision.retrain --spec examples/vision/flywheel.yaml --cycle 1

With a ``vision`` section this is the ``retrain`` stage (``flywheel.train.launch``): VLM SFT
(``train_vlm_sft``) from the champion cycle ``c-1`` left, with ``cycles.train`` over ``sft``'s
settings, on the cycle's training set (the seed conversations replayed plus every accepted
answer so far: rejection sampling), each row's image read back from the store. With
``cycles.preference: dpo`` the SFT model then trains by DPO (``train_vlm_dpo``, settings
``cycles.preference_train``) on the preference pairs of the earlier accepted sets (an accepted
and a verifier-refused answer to the same image and question, newest cycles first, at most
``max_prompts``), as the text loop's ``flywheel.loop.retrain`` does; with no pairs yet it is
skipped with a warning. Keying, resuming and publishing are ``flywheel.train.finetune``'s (the
pairs and the DPO settings are part of the run's key; a crash during DPO keeps the finished
SFT model); the candidate is then evaluated and gated by the text loop's promotion.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flywheel.core import artifacts, chat
from flywheel.core import products as P
from flywheel.core.records import Loaded
from flywheel.core.report import Reporter
from flywheel.core.spec import Spec, add_spec_arguments, load_spec
from flywheel.data.images.store import ImageStore
from flywheel.loop.cycles import check_cycle_inputs, checkpoint_root, cycle_inputs
from flywheel.loop.retrain import PreferenceData, finished_sft, pair_rows
from flywheel.loop.vision.data import conversation_image, sft_records, text_turns, vision_settings
from flywheel.train.finetune import INTERMEDIATE, FineTune, run_finetune, shaping


def vision_pairs(spec: Spec, cycle: int, handed: Mapping[str, Any]) -> PreferenceData | None:
    """The DPO pairs of the accepted sets before ``cycle`` (None: ``cycles.preference`` is
    none); examples ``{"image_id", "messages", "chosen", "rejected"}`` (JSON-safe: keyed)."""
    if spec.cycles.preference == "none":
        return None
    limit = spec.cycles.preference_settings(spec.sft).max_prompts
    pairs, source = pair_rows(handed, cycle, limit, extra=("image_id",))
    if pairs is None:
        return PreferenceData("dpo")
    columns = ["image_id", "messages", "chosen", "rejected"]
    examples = [dict(zip(columns, row, strict=True)) for row in pairs.select(columns).iter_rows()]
    return PreferenceData("dpo", examples, source)


def dpo_records(examples: list[dict[str, Any]], store: ImageStore) -> list[dict[str, Any]]:
    """``train_vlm_dpo`` records of pairs: the image loaded, the conversation as text turns."""
    from flywheel.train.vlm.train import dpo_example

    records = []
    for e in examples:
        messages = chat.loads(e["messages"])
        image = store.load(conversation_image(messages)).image
        records.append(dpo_example(image, text_turns(messages), e["chosen"], e["rejected"]))
    return records


def run_vision_retrain(
    spec: Spec, reporter: Reporter, cycle: int, handed: Mapping[str, Any]
) -> dict[str, Any]:
    from flywheel.loop.vision.seed import use_threads

    check_cycle_inputs(spec, P.CYCLE_CHECKPOINT, cycle, handed)
    use_threads(vision_settings(spec))
    training, champion = handed[P.TRAINING_SET], handed[P.of_cycle(P.PROMOTED, cycle - 1)]
    rows = training.read(["messages"])["messages"].to_list()
    data = Loaded(
        [{"messages": chat.loads(m)} for m in rows], [], f"training_set@{training.version}"
    )
    settings = spec.cycles.train_settings(spec.sft)
    pref = vision_pairs(spec, cycle, handed)
    about: dict[str, Any] = {"cycle": cycle, "preference": pref.kind if pref else "none"}
    keyed_by: dict[str, Any] = {}  # none: the keys of SFT-only cycles stay what they were
    if pref is not None:
        keyed_by = {
            "preference": pref.kind,
            "preference_train": shaping(spec.cycles.preference_settings(spec.sft)),
            "preference_data": pref.fingerprint() if pref.examples else "none",
        }
        about |= {"method": "sft+dpo", **({"preference_data": pref.source} if pref.source else {})}
    lineage = {"training_set": training.version, **about, **data.counts}
    run = FineTune(
        settings,
        champion,
        data,
        checkpoint_root(spec, cycle),
        "retrain",
        lineage,
        about,
        keyed_by,
        inputs=P.versions(handed),
    )
    return run_finetune(spec, reporter, run, lambda: _train(spec, reporter, run, pref))


def _train(
    spec: Spec, reporter: Reporter, run: FineTune, pref: PreferenceData | None
) -> tuple[dict[str, Any], Path]:
    """SFT, then DPO if there are pairs; the metrics and the final model's directory."""
    from accelerate import PartialState

    from flywheel.train.vlm.train import train_vlm_dpo, train_vlm_sft

    store, settings = ImageStore(spec.image_store_dir), spec.cycles.train_settings(spec.sft)
    records = sft_records(run.data.examples, store)
    if pref is None or not pref.examples:
        metrics = train_vlm_sft(settings, run.parent.path, records, run.work, run.staging, reporter)
        if pref is not None:
            reason = "no preference pairs from earlier cycles yet"
            reporter.warning(f"cycles.preference is dpo but there are {reason}: skipped")
            metrics |= {"preference": "dpo", "preference/skipped": reason}
        return metrics, run.staging
    sft_model = run.work / INTERMEDIATE
    metrics = finished_sft(sft_model)
    if metrics is None:
        metrics = train_vlm_sft(settings, run.parent.path, records, run.work, sft_model, reporter)
        if reporter.is_main:  # marks the SFT stage complete: a rerun goes on from here
            artifacts.write_manifest(sft_model, metrics=metrics)
        PartialState().wait_for_everyone()
    else:
        reporter.info(f"SFT of this run is done ({sft_model}); going on with DPO")
    metrics |= train_vlm_dpo(
        spec.cycles.preference_settings(spec.sft),
        sft_model,
        dpo_records(pref.examples, store),
        run.work / "preference",
        run.staging,
        reporter,
    )
    return metrics, run.staging


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
