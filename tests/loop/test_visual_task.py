"""The visual task in the loop: its verifier, held-out images kept out of prompts and SFT data."""

from __future__ import annotations

import pytest

from flywheel.loop.visual_task import VisualTask, score


def test_verifier_accepts_the_count_and_rejects_wrong_answers() -> None:
    problems = VisualTask().eval_problems()[:4]
    right = [p["answer"] for p in problems]
    assert [ok for ok, _ in score(problems, right)] == [True] * 4
    said = [f"There are {right[0]} shapes.", f" {right[1]}.0", "", "many"]
    assert score(problems, said) == [(True, None), (True, None), (False, "incorrect")] + [
        (False, "incorrect")
    ]
    wrong = [str(int(a) + 1) for a in right]
    assert [ok for ok, _ in score(problems, wrong)] == [False] * 4
    with pytest.raises(ValueError, match="4 problems but 3 completions"):
        score(problems, right[:3])


def test_held_out_images_never_reach_prompts_or_training_data() -> None:
    task = VisualTask(eval_examples=200, min_objects=1, max_objects=1, size=16)  # few pictures
    heldout = task.heldout
    assert len(heldout) > 150  # 200 draws of a small space: some repeat
    for cycle in range(3):
        prompts = task.prompts(cycle, num_prompts=100)
        assert len(prompts) == 100 and not {p["id"] for p in prompts} & heldout
    assert not {p["id"] for p in task.sft_examples(300, seed=9)} & heldout
    assert [p["id"] for p in task.prompts(1, 20)] == [p["id"] for p in task.prompts(1, 20)]
    assert [p["id"] for p in task.prompts(1, 20)] != [p["id"] for p in task.prompts(2, 20)]
    with pytest.raises(ValueError, match="cycle must be >= 0"):
        task.prompts(-1, 5)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"max_objects <= 16"):
        VisualTask(max_objects=20)
    assert {p["answer"] for p in VisualTask(min_objects=5, max_objects=9).eval_problems()} == {
        str(n) for n in range(5, 10)
    }
