"""The built-in visual task: count the shapes in a small rendered image (verifiable, seeded).

    python -c "from flywheel.data.visual import shape_examples as s; \
print([(e['id'], e['answer']) for e in s(3, 1, 3, 32, 0)])"

Each image is ``size`` x ``size`` pixels, cut into ``CELL`` x ``CELL`` cells (a 32-px image
has 16); ``count`` distinct cells each hold one shape (square, circle or triangle) of a
random colour, size and offset inside its cell. The question is always ``QUESTION`` and the
answer is the count, a number the ``numeric`` verifier checks. The easy-to-hard axis is the
object count, uniform over ``[min_objects, max_objects]``: one to three shapes is the easy
end (chance is 1/3), a crowded image the hard one. A cell is a vision patch of the tiny
towers here (``flywheel.train.vlm.model``: patch 8), so every shape lies in one patch and
counting is a sum over patches, learnable by a tiny model in minutes; jitter, colour and
shape keep it from being a fixed lookup.

Images are drawn with PIL's non-antialiased primitives, so a seed gives the same pixels on
every machine. An image's identity is ``image_id``, a hash of its pixels: the held-out
evaluation images (``heldout_ids``) are kept out of generation prompts by it, as text eval
prompts are kept out by their text (``flywheel.loop.prompts``). ``visual_prompts`` draws
again past a held-out or repeated image, and ``quarantine_heldout`` refuses such a record
from any other source with the reason ``eval_image``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from typing import Any

from PIL import Image, ImageDraw

from flywheel.core.records import Loaded, quarantined

QUESTION = "How many shapes are in the image?"
CELL = 8  # pixels per grid cell: the vision tower's patch size
SHAPES = ("square", "circle", "triangle")
# Saturated colours on a white background: every shape differs from the background in each
# colour channel the processor normalises, whatever its colour.
PALETTE = ((220, 30, 30), (30, 150, 40), (30, 60, 220), (200, 140, 0), (150, 30, 170))
BACKGROUND = (255, 255, 255)
DRAWS = (1, 2, 8, 32)  # how many times n the generator may be asked for, as prompts do


def cells(size: int) -> int:
    """How many shapes an image of ``size`` pixels holds at most (one per cell)."""
    return (size // CELL) ** 2


def check_axis(min_objects: int, max_objects: int, size: int) -> None:
    """Refuse an object range the image cannot hold, naming the numbers."""
    if size < CELL or size % CELL:
        raise ValueError(f"image size must be a positive multiple of {CELL} px, got {size}")
    if not 1 <= min_objects <= max_objects <= cells(size):
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {cells(size)} (the cells of a {size}-px "
            f"image), got {min_objects}, {max_objects}"
        )


def render_shapes(count: int, size: int, rng: random.Random) -> Image.Image:
    """An RGB image of ``count`` shapes in distinct cells, drawn from ``rng``."""
    check_axis(count, count, size)
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    per_row = size // CELL
    for cell in rng.sample(range(cells(size)), count):
        extent = rng.randint(CELL - 3, CELL - 1)  # 5-7 px: at least 2x2 px of any shape
        x = (cell % per_row) * CELL + rng.randint(0, CELL - extent)
        y = (cell // per_row) * CELL + rng.randint(0, CELL - extent)
        _shape(draw, rng.choice(SHAPES), (x, y, x + extent - 1, y + extent - 1), rng)
    return image


def _shape(
    draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], rng: random.Random
) -> None:
    colour = rng.choice(PALETTE)
    x0, y0, x1, y1 = box
    if kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=colour)


def image_id(image: Image.Image) -> str:
    """A stable id of an image's content: 16 hex digits of a sha1 of its size and RGB pixels
    (the file format and metadata do not matter; one changed pixel does)."""
    rgb = image.convert("RGB")
    header = f"{rgb.width}x{rgb.height}:".encode()
    return hashlib.sha1(header + rgb.tobytes()).hexdigest()[:16]


def shape_examples(
    n: int, min_objects: int, max_objects: int, size: int, seed: int
) -> list[dict[str, Any]]:
    """``n`` problems ``{"id", "image", "prompt", "answer"}``; the same arguments, the same
    images. Prefix-stable: a larger ``n`` extends the same sequence."""
    check_axis(min_objects, max_objects, size)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        count = rng.randint(min_objects, max_objects)
        image = render_shapes(count, size, rng)
        out.append(
            {"id": image_id(image), "image": image, "prompt": QUESTION, "answer": str(count)}
        )
    return out


def heldout_ids(examples: Iterable[dict[str, Any]]) -> set[str]:
    """The image ids of evaluation problems: never to be generated from or trained on."""
    return {image_id(e["image"]) for e in examples}


def visual_prompts(
    n: int,
    min_objects: int,
    max_objects: int,
    size: int,
    seed: int,
    exclude: Iterable[str] = frozenset(),
) -> list[dict[str, Any]]:
    """``n`` distinct problems whose image id is not in ``exclude`` (the held-out ids): a
    repeat or a held-out image is drawn again, not skipped. A space smaller than ``n`` (one
    shape in a 32-px image has only so many pictures) gives every distinct problem found."""
    excluded = set(exclude)
    picked: list[dict[str, Any]] = []
    for factor in DRAWS:
        seen: set[str] = set()
        picked = []
        for example in shape_examples(n * factor, min_objects, max_objects, size, seed):
            if example["id"] not in excluded and example["id"] not in seen:
                seen.add(example["id"])
                picked.append(example)
                if len(picked) == n:
                    return picked
    return picked


def quarantine_heldout(
    records: Iterable[dict[str, Any]], exclude: Iterable[str], source: str
) -> Loaded:
    """Image records (``{"image": PIL image, ...}``) from ``source``, without those whose
    image is held out (quarantined ``eval_image``) or has no image (``missing_image``)."""
    excluded = set(exclude)
    kept, bad = [], []
    for line, record in enumerate(records, start=1):
        image = record.get("image")
        if not isinstance(image, Image.Image):
            reason = "missing_image"
        elif image_id(image) in excluded:
            reason = "eval_image"
        else:
            kept.append(record)
            continue
        shown = {k: v for k, v in record.items() if k != "image"} | {"image_id": _id_or_none(image)}
        bad.append(quarantined(source, line, reason, shown))
    return Loaded(kept, bad, source)


def _id_or_none(image: Any) -> str | None:
    return image_id(image) if isinstance(image, Image.Image) else None
