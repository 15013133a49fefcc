"""The seed VLM: SFT of a fresh LLaVA on the curated image shards -> ``sft_checkpoint``.

    python -m flywheel.loop.vision.seed --spec examples/vision/flywheel.yaml

With a ``vision`` section this is the ``sft`` stage (``flywheel.train.launch``). The VLM is
built with the project's tokenizer (``tokenizer``), a language model of ``model.config`` and
the ``vision.tower`` (``flywheel.train.vlm.model.build_vlm``): the vision loop does no text
pre-training, so its language model starts fresh and learns only from image conversations.
It trains with ``sft``'s settings on ``seed_data`` (question -> caption) through TRL
(``train_vlm_sft``); keying, resuming, publishing and reuse are ``flywheel.train.finetune``'s,
so a rerun of the same tokenizer, images and settings trains nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.report import Reporter
from flywheel.core.settings.vision import VisionSettings
from flywheel.core.spec import Spec, add_spec_arguments, load_spec
from flywheel.data.images.store import ImageStore
from flywheel.loop.vision.data import seed_data, sft_records, vision_settings
from flywheel.train.finetune import FineTune, run_finetune
from flywheel.train.sft_data import data_fingerprint

BASE = "base-vlm"  # in the run's work dir: the untrained VLM the run starts from


def use_threads(settings: VisionSettings) -> None:
    """``vision.torch_threads`` (tiny kernels: one thread beat two by 10x on 2 shared cores)."""
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


def build_base(spec: Spec, tokenizer: artifacts.Artifact, out: Path) -> Path:
    """The untrained VLM of the spec's language model and tower, saved to ``out`` (kept: a
    resumed run starts from the same weights)."""
    if (out / "config.json").exists():
        return out
    from flywheel.train.tokenizer import load_tokenizer
    from flywheel.train.vlm.model import VisionTower, build_vlm, save_vlm

    settings = vision_settings(spec)
    tower = VisionTower(image_size=settings.image_size, **settings.tower.model_dump())
    text = spec.model.model_copy(update={"path": None})
    model, processor = build_vlm(
        load_tokenizer(tokenizer.path), tower, text, spec.sft.max_length, settings.seed
    )
    tmp = out.with_name(out.name + ".tmp")
    save_vlm(model, processor, tmp)
    tmp.replace(out)
    return out


def run_seed_sft(spec: Spec, reporter: Reporter, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Train (or resume, or reuse) the seed VLM on the handed curated images; publish it."""
    from flywheel.train.vlm.train import train_vlm_sft

    P.check_inputs(P.SFT, spec, inputs)
    settings = vision_settings(spec)
    use_threads(settings)
    tokenizer, curated = inputs[P.TOKENIZER], inputs[P.CURATED_IMAGES]
    data = seed_data(spec, curated)
    lineage = {
        P.TOKENIZER: tokenizer.version,
        P.CURATED_IMAGES: curated.version,
        "data_fingerprint": data_fingerprint(data),
        **data.counts,
    }
    shape = {"vision": settings.model_dump(mode="json", include={"image_size", "tower"})}
    shape["model"] = spec.model.config
    run = FineTune(
        spec.sft, tokenizer, data, spec.product_dir(P.SFT), "sft", lineage,
        {"seed_data": data.source}, keyed_by=shape, inputs=P.versions(inputs),
    )  # fmt: skip
    store = ImageStore(spec.image_store_dir)

    def train() -> tuple[dict[str, Any], Path]:
        base = build_base(spec, tokenizer, run.work / BASE)
        records = sft_records(data.examples, store)
        return train_vlm_sft(spec.sft, base, records, run.work, run.staging, reporter), run.staging

    return run_finetune(spec, reporter, run, train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.loop.vision.seed", description=__doc__
    )
    add_spec_arguments(parser)
    P.add_input_arguments(parser)
    args = parser.parse_args(argv)
    with Reporter(is_main=True) as reporter:
        spec = load_spec(args.spec, args.overrides)
        run_seed_sft(spec, reporter, P.resolve_inputs(spec, P.SFT, P.parse_pins(args.input)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
