"""The visual counting task: deterministic rendering, the easy-to-hard axis, held-out images."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from flywheel.data.visual import (
    BACKGROUND,
    CELL,
    QUESTION,
    cells,
    heldout_ids,
    image_id,
    quarantine_heldout,
    render_shapes,
    shape_examples,
    visual_prompts,
)


def _occupied_cells(image: Image.Image) -> int:
    """Cells holding any non-background pixel: the count the picture shows."""
    size = image.width
    pixels = image.load()
    occupied = 0
    for top in range(0, size, CELL):
        for left in range(0, size, CELL):
            box = ((x, y) for x in range(left, left + CELL) for y in range(top, top + CELL))
            occupied += any(pixels[x, y] != BACKGROUND for x, y in box)
    return occupied


def test_rendering_is_deterministic_per_seed() -> None:
    a = shape_examples(20, 1, 9, 32, seed=7)
    b = shape_examples(20, 1, 9, 32, seed=7)
    assert [e["image"].tobytes() for e in a] == [e["image"].tobytes() for e in b]
    assert [e["answer"] for e in a] == [e["answer"] for e in b]
    other = shape_examples(20, 1, 9, 32, seed=8)
    assert [e["id"] for e in a] != [e["id"] for e in other]
    # Prefix-stable: more examples extend the same sequence.
    assert [e["id"] for e in shape_examples(25, 1, 9, 32, seed=7)[:20]] == [e["id"] for e in a]


def test_the_answer_is_the_number_of_shapes_drawn() -> None:
    for example in shape_examples(40, 1, 16, 32, seed=3):
        assert example["prompt"] == QUESTION
        assert example["image"].size == (32, 32) and example["image"].mode == "RGB"
        assert _occupied_cells(example["image"]) == int(example["answer"])
        assert example["id"] == image_id(example["image"])


def test_object_range_is_the_difficulty_axis() -> None:
    easy = {int(e["answer"]) for e in shape_examples(200, 1, 3, 32, seed=0)}
    hard = {int(e["answer"]) for e in shape_examples(200, 10, 16, 64, seed=0)}
    assert easy == {1, 2, 3}
    assert hard == set(range(10, 17))
    assert cells(64) == 64
    with pytest.raises(ValueError, match=r"max_objects <= 16 \(the cells of a 32-px image\)"):
        shape_examples(1, 1, 17, 32, seed=0)
    with pytest.raises(ValueError, match="multiple of 8 px"):
        render_shapes(1, 30, random.Random(0))


def test_image_id_follows_pixels_not_format() -> None:
    image = shape_examples(1, 2, 2, 32, seed=0)[0]["image"]
    assert image_id(image.convert("RGBA")) == image_id(image)
    changed = image.copy()
    changed.putpixel((0, 0), (0, 0, 0) if changed.getpixel((0, 0)) != (0, 0, 0) else BACKGROUND)
    assert image_id(changed) != image_id(image)


def test_prompts_draw_past_held_out_and_repeated_images() -> None:
    # One 8-px cell holds at most 435 pictures: 29 placements of the 5-7 px extents, 3 shapes,
    # 5 colours. Asked for more, the draw gives the distinct ones it finds, none held out.
    heldout = heldout_ids(shape_examples(30, 1, 1, 8, seed=1))
    drawn = visual_prompts(600, 1, 1, 8, seed=2, exclude=heldout)
    ids = [e["id"] for e in drawn]
    assert len(ids) == len(set(ids)) and not set(ids) & heldout
    assert 300 < len(ids) <= 435 - len(heldout)
    plenty = visual_prompts(20, 1, 3, 32, seed=2, exclude=heldout)
    assert len({e["id"] for e in plenty}) == 20


def test_held_out_records_are_quarantined_with_a_reason() -> None:
    problems = shape_examples(4, 1, 3, 32, seed=5)
    heldout = heldout_ids(problems[:2])
    records = [*problems, {"prompt": QUESTION, "answer": "2"}]
    loaded = quarantine_heldout(records, heldout, "upload.jsonl")
    assert [e["id"] for e in loaded.examples] == [e["id"] for e in problems[2:]]
    assert [(q["line"], q["reason"]) for q in loaded.quarantine] == [
        (1, "eval_image"),
        (2, "eval_image"),
        (5, "missing_image"),
    ]
    assert problems[0]["id"] in loaded.quarantine[0]["raw"]
    assert loaded.counts["quarantined/eval_image"] == 2
