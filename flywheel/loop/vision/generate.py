"""The champion answers cycle ``c``'s new task images: ``synthetic_generations`` of a VLM.

    python -m flywheel.loop.vision.generate --spec examples/vision/flywheel.yaml --cycle 1

With a ``vision`` section this is the ``generate`` stage (``flywheel.train.launch``). The
images are ``vision.images_per_cycle`` problems of the ``vision.prompts`` range drawn with seed
``vision.seed + c``; a held-out image of either end is drawn again, never shown
(``flywheel.data.visual.visual_prompts``, the text loop's eval-prompt guard). Each image goes
into the image store and is answered ``samples_per_image`` times at ``temperature``; a row is
the text loop's generation row plus ``image_id`` (the store's id), so acceptance and training
sets read the image back. Keyed by the champion, the ``vision`` section and the cycle: a rerun
with the same key reuses the set.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Mapping
from typing import Any

import polars as pl
import torch

from flywheel.core import artifacts, chat, keys
from flywheel.core import products as P
from flywheel.core.report import Reporter
from flywheel.core.shards import ShardSet, ShardWriter
from flywheel.core.spec import Spec, add_spec_arguments, load_spec
from flywheel.data.images.decode import pixel_hash
from flywheel.data.images.store import ImageStore
from flywheel.data.visual import visual_prompts
from flywheel.loop.cycles import check_cycle_inputs, cycle_inputs, generations_root
from flywheel.loop.generate.generations import SCHEMA, generation_id
from flywheel.loop.vision.data import heldout, image_conversation, prompt_id, vision_settings

VISION_SCHEMA = {**SCHEMA, "image_id": pl.String}


def cycle_problems(spec: Spec, cycle: int) -> list[dict[str, Any]]:
    """Cycle ``cycle``'s images (none held out at either end), each with its count."""
    s = vision_settings(spec)
    r = s.prompts
    args = (r.min_objects, r.max_objects, s.image_size, s.seed + cycle)
    return visual_prompts(s.images_per_cycle, *args, exclude=heldout(s))


@torch.no_grad()
def sample_answers(
    model: Any,
    processor: Any,
    problems: list[dict[str, Any]],
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
) -> list[list[str]]:
    """``n`` sampled answers per problem (seeded), in order."""
    from flywheel.train.vlm.generate import completions

    torch.manual_seed(seed)
    return completions(
        model, processor, problems, max_new_tokens, n=n, do_sample=True, temperature=temperature
    )


def _rows(
    spec: Spec,
    cycle: int,
    champion: artifacts.Artifact,
    problems: list[dict[str, Any]],
    answers: list[list[str]],
    store_ids: list[str],
) -> pl.DataFrame:
    s = vision_settings(spec)
    rows = []
    for problem, samples, store_id in zip(problems, answers, store_ids, strict=True):
        pid, conversation = prompt_id(store_id), chat.dumps(image_conversation(store_id))
        for j, text in enumerate(samples):
            rows.append(
                {
                    "generation_id": generation_id(cycle, pid, j, champion.version),
                    "cycle": cycle,
                    "prompt_id": pid,
                    "prompt": problem["prompt"],
                    "messages": conversation,
                    "answer": problem["answer"],
                    "sample_index": j,
                    "greedy": False,
                    "completion": text,
                    "finish_reason": None,
                    "checkpoint": champion.version,
                    "backend": "transformers-vlm",
                    "temperature": s.temperature,
                    "top_p": 1.0,
                    "top_k": None,
                    "max_new_tokens": s.max_new_tokens,
                    "seed": s.seed + cycle,
                    "image_id": store_id,
                }
            )
    return pl.DataFrame(rows, schema=VISION_SCHEMA)


def generate_answers(
    spec: Spec, cycle: int, handed: Mapping[str, Any], reporter: Reporter
) -> dict[str, Any]:
    """Answer cycle ``cycle``'s images with the handed champion; publish (or reuse) the set."""
    from flywheel.loop.vision.seed import use_threads
    from flywheel.train.vlm.model import load_vlm

    check_cycle_inputs(spec, P.GENERATIONS, cycle, handed)
    s, champion = vision_settings(spec), handed[P.PROMOTED]
    root = generations_root(spec, cycle)
    key = keys.make_key(P.versions(handed), {"vision": s}, cycle=cycle)
    found = keys.reusable(root, key)
    if found is not None:
        shards = ShardSet(found)
        reporter.materialization(
            {"rows": shards.num_rows, "reused": True}, data_version=shards.version
        )
        return {"version": shards.version, "reused": True}
    use_threads(s)
    problems, store = cycle_problems(spec, cycle), ImageStore(spec.image_store_dir)
    store_ids = []
    for p in problems:
        buffer = io.BytesIO()
        p["image"].save(buffer, format="PNG")
        store.put(sid := pixel_hash(p["image"]), buffer.getvalue())
        store_ids.append(sid)
    model, processor = load_vlm(champion.path, spec.model.attn_implementation)
    started = time.monotonic()
    answers = sample_answers(
        model,
        processor,
        problems,
        s.samples_per_image,
        s.temperature,
        s.max_new_tokens,
        s.seed + cycle,
    )
    seconds = round(time.monotonic() - started, 3)
    df = _rows(spec, cycle, champion, problems, answers, store_ids)
    meta = {
        "cycle": cycle,
        "checkpoint": champion.version,
        "seconds": seconds,
        "counts": {"prompts": len(problems), "rows": df.height},
    }
    with ShardWriter(root) as writer:
        writer.write(df)
        shards = writer.commit(
            inputs=P.versions(handed),
            **meta,
            **keys.key_meta(root, key),
            spec_fingerprint=spec.fingerprint(),
        )
    metadata = {
        "rows": df.height,
        "images": len(problems),
        "seconds": seconds,
        "checkpoint": champion.version,
        "reused": False,
        "path": str(shards.path),
    }
    reporter.materialization(metadata, data_version=shards.version)
    return {"version": shards.version, "reused": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.loop.vision.generate", description=__doc__
    )
    add_spec_arguments(parser)
    parser.add_argument("--cycle", type=int, required=True, help="the cycle generated for")
    P.add_input_arguments(parser)
    args = parser.parse_args(argv)
    spec = load_spec(args.spec, args.overrides)
    handed = cycle_inputs(spec, P.GENERATIONS, args.cycle, P.parse_pins(args.input))
    with Reporter(is_main=True) as reporter:
        generate_answers(spec, args.cycle, handed, reporter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
