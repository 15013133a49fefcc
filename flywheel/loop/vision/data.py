"""The vision loop's data: task ends, held-out images, and conversations about stored images.

    python -c "from flywheel.core.spec import load_spec; from flywheel.loop.vision.data \
import seed_data; print(seed_data(load_spec('examples/vision/flywheel.yaml')).counts)"

A conversation about an image names it by its id in the image store (``ImageStore``): its
first user turn is ``[{"type": "image", "image_id": ...}, {"type": "text", "text": ...}]``, so
a training set row (``messages`` JSON) stays text and the pixels are read only when a stage
trains on them (``sft_records``). The seed data are the curated image shards as such
conversations (the task question, the caption as the answer); an image whose pixels are a
held-out eval image of either end is quarantined (``eval_image``), as text eval prompts are.
"""

from __future__ import annotations

from typing import Any

from flywheel.core import chat
from flywheel.core import products as P
from flywheel.core.records import Loaded, quarantined
from flywheel.core.settings.vision import ObjectRange, VisionSettings
from flywheel.core.shards import ShardSet
from flywheel.core.spec import Spec
from flywheel.data.images.store import ImageStore
from flywheel.data.visual import QUESTION, image_id
from flywheel.loop.visual_task import VisualTask

ENDS = ("easy", "hard")


def vision_settings(spec: Spec) -> VisionSettings:
    if spec.vision is None:
        raise ValueError("the spec has no `vision` section: the loop's model is not a VLM")
    return spec.vision


def task(settings: VisionSettings, end: str | ObjectRange) -> VisualTask:
    """The counting task over one range of object counts (``easy``, ``hard`` or a range)."""
    r = getattr(settings, end) if isinstance(end, str) else end
    return VisualTask(
        min_objects=r.min_objects,
        max_objects=r.max_objects,
        size=settings.image_size,
        eval_examples=settings.eval_examples,
        eval_seed=settings.eval_seed,
        seed=settings.seed,
    )


def heldout(settings: VisionSettings) -> set[str]:
    """The task ids (``flywheel.data.visual.image_id``) of every held-out image, both ends."""
    return set().union(*(task(settings, end).heldout for end in ENDS))


def image_conversation(store_id: str, question: str = QUESTION) -> list[dict[str, Any]]:
    """The one user turn that shows stored image ``store_id`` and asks ``question``."""
    content = [{"type": "image", "image_id": store_id}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def conversation_image(messages: list[dict[str, Any]]) -> str:
    """The store id of the image a conversation shows (its first user turn's image part)."""
    for m in messages:
        if m["role"] == "user" and isinstance(m["content"], list):
            for part in m["content"]:
                if part.get("type") == "image":
                    return part["image_id"]
    raise ValueError(f"the conversation shows no stored image: {chat.dumps(messages)[:200]}")


def text_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with image parts dropped: what the VLM's chat template renders as
    text (the trainer puts the image before the first user turn's text)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(p["text"] for p in content if p.get("type") == "text")
        out.append({"role": m["role"], "content": content})
    return out


def prompt_id(store_id: str, question: str = QUESTION) -> str:
    """A stable id of (image, question): the image is part of the prompt."""
    return chat.conversation_id([*image_conversation(store_id, question), chat.turn("user", "")])


def seed_prompt_id(messages: list[dict[str, Any]]) -> str:
    """A training row's ``prompt_id``: its image and its question's."""
    return prompt_id(conversation_image(messages))


def seed_question(messages: list[dict[str, Any]]) -> str:
    """A training row's ``prompt``: its last user turn's text (the image left out)."""
    return chat.last_user(text_turns(messages))


def seed_data(spec: Spec, curated: ShardSet | None = None) -> Loaded:
    """The curated images (``curated`` or the current set) as SFT conversations, held-out
    images quarantined; examples ``{"messages"}`` (JSON-safe: they are fingerprinted)."""
    settings = vision_settings(spec)
    curated = curated or P.read_product(spec, P.CURATED_IMAGES)
    rows = curated.read(["image_id", "text"]).sort("image_id")
    store, held = ImageStore(spec.image_store_dir), heldout(settings)
    examples, bad = [], []
    for line, (store_id, caption) in enumerate(rows.iter_rows(), start=1):
        if image_id(store.load(store_id).image) in held:
            bad.append(quarantined(P.CURATED_IMAGES, line, "eval_image", {"image_id": store_id}))
            continue
        answer = chat.turn("assistant", caption.strip())
        examples.append({"messages": [*image_conversation(store_id), answer]})
    return Loaded(examples, bad, f"{P.CURATED_IMAGES}@{curated.version}")


def sft_records(examples: list[dict[str, Any]], store: ImageStore) -> list[dict[str, Any]]:
    """Training records (``flywheel.train.vlm.train.sft_example``'s shape) of conversations
    about stored images: the image loaded, its parts turned into text turns."""
    records = []
    for example in examples:
        messages = example["messages"]
        image = store.load(conversation_image(messages)).image
        records.append({"images": [image], "messages": text_turns(messages)})
    return records
