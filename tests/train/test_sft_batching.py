"""``sft.batching: balanced``: each step's random conversations split by length, same step.

Conversations of 1 to 12 terms ("What is 1 + 1 + 1?") on the tiny model of
``tests.loop.eval.conftest``: lengths 11 to ~50 tokens, so a random micro-batch is mostly
padding and a balanced one is not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

from flywheel.core.chat import conversation
from flywheel.core.records import Loaded
from flywheel.core.settings.train import SftSettings
from flywheel.core.spec import SpecError, parse_spec
from flywheel.train.finetune import run_fingerprint, shaping
from flywheel.train.sft import build_trainer, sft_config
from tests.loop.eval.conftest import build_pretrained

EXAMPLES = 64
STEP = 16  # conversations an optimizer step


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pretrained(tmp_path_factory.mktemp("batching") / "data").path


def _data() -> Loaded:
    terms = [1 + (i * 7) % 12 for i in range(EXAMPLES)]
    examples = [conversation(f"What is {' + '.join(['1'] * n)}?", str(n)) for n in terms]
    return Loaded(examples, [], "sums of ones")


def _settings(**fields) -> SftSettings:
    base = dict(steps=12, micro_batch=4, grad_accum=4, batching="balanced", max_length=64)
    base |= dict(lr=3e-3, warmup_steps=0, save_every=4, log_every=1, keep_checkpoints=5)
    return SftSettings(**(base | fields))


def _trainer(parent: Path, out: Path, settings: SftSettings, strategy: str | None = None):
    config = sft_config(settings, out)
    if strategy is not None:  # the sampler the spec cannot ask for (see the step test)
        config.train_sampling_strategy = strategy
    return build_trainer(config, parent, "sdpa", _data())


def _epoch(trainer, epoch: int) -> list[dict[str, torch.Tensor]]:
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)  # what Trainer does at each epoch
    return list(loader)


def _rows(batch: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    """Each row's real tokens, padding dropped: which conversation it is."""
    mask = batch["attention_mask"].bool()
    return [tuple(ids[keep].tolist()) for ids, keep in zip(batch["input_ids"], mask, strict=True)]


def _padding(batches: list[dict[str, torch.Tensor]]) -> float:
    masks = [b["attention_mask"] for b in batches]
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def test_each_epoch_serves_every_conversation_once_with_less_padding(
    parent: Path, tmp_path: Path
) -> None:
    random = _trainer(parent, tmp_path / "r", _settings(batching="random"))
    served = _epoch(random, 0)
    expected = sorted(row for b in served for row in _rows(b))
    assert len(expected) == EXAMPLES
    trainer = _trainer(parent, tmp_path / "a", _settings())
    first, second = _epoch(trainer, 0), _epoch(trainer, 1)
    for batches in (first, second):
        assert sorted(row for b in batches for row in _rows(b)) == expected
        assert len(batches) == EXAMPLES // STEP * 4  # grad_accum micro-batches a step
        # micro-batches of varied size, each sorted by length: short ones come many at once
        assert len({len(b["input_ids"]) for b in batches}) > 1
    assert [_rows(b) for b in first] != [_rows(b) for b in second]  # a new draw each epoch

    padded, balanced = _padding(served), _padding(first)
    assert balanced < padded / 2, (balanced, padded)

    # the run's seed draws the order, as with random batching
    other = _trainer(parent, tmp_path / "s", _settings(seed=1))
    assert [_rows(b) for b in _epoch(other, 0)] != [_rows(b) for b in first]
    again = _trainer(parent, tmp_path / "b", _settings())
    assert [_rows(b) for b in _epoch(again, 0)] == [_rows(b) for b in first]


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_a_split_step_trains_like_the_whole_batch(parent: Path, tmp_path: Path) -> None:
    """Four micro-batches of a step, and the same 16 conversations in one, train alike: the
    loss is normalised over the whole step, not averaged per micro-batch."""
    split = _trainer(parent, tmp_path / "split", _settings())
    split.train()
    # grad_accum 1 with the balanced sampler: each step's draw (the same randperm) in one batch
    whole = _trainer(
        parent, tmp_path / "whole", _settings(batching="random", micro_batch=STEP, grad_accum=1),
        strategy="batch_rebalance",
    )  # fmt: skip
    whole.train()
    assert _losses(split) == pytest.approx(_losses(whole), rel=1e-4)
    assert _losses(split)[-1] < 0.7 * _losses(split)[0]  # and it learns
    for a, b in zip(split.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


class _StopAt(TrainerCallback):
    """Ends training after ``step`` (once its checkpoint is saved): a run that was stopped."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step
        return control


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(parent: Path, tmp_path: Path) -> None:
    """Resuming mid-epoch (step 6 of 4-step epochs) serves the rest of the same draws."""
    full = _trainer(parent, tmp_path / "full", _settings(save_every=6))
    full.train()
    stopped = _trainer(parent, tmp_path / "part", _settings(save_every=6))
    stopped.add_callback(_StopAt(6))
    stopped.train()
    assert stopped.state.global_step == 6
    resumed = _trainer(parent, tmp_path / "part", _settings(save_every=6))
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-6"))
    assert _losses(resumed)[-1] == pytest.approx(_losses(full)[-1], rel=1e-5)
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_balanced_needs_accumulated_micro_batches() -> None:
    with pytest.raises(ValueError, match="grad_accum is 1: nothing to split"):
        SftSettings(batching="balanced")
    assert sft_config(_settings(), Path("unused")).train_sampling_strategy == "batch_rebalance"
    assert sft_config(SftSettings(), Path("unused")).train_sampling_strategy == "random"


def test_balanced_batching_keys_its_own_runs() -> None:
    """Balanced batches train other weights than random ones (another draw): another run key.
    Random batching, the default, is not in the key, so runs from before the setting keep
    theirs (and their work directories)."""
    data = _data()
    accumulated = SftSettings(grad_accum=4)
    assert "batching" not in shaping(accumulated)
    assert "grad_accum" in shaping(accumulated)
    balanced = SftSettings(grad_accum=4, batching="balanced")
    assert shaping(balanced)["batching"] == "balanced"
    assert run_fingerprint(balanced, "v1", data) != run_fingerprint(accumulated, "v1", data)


def test_the_vision_sft_refuses_balanced_batching(tmp_path: Path) -> None:
    text = """
        sources: [{name: docs, kind: python_env}]
        images: {sources: [{name: shapes, kind: visual_counting}]}
        vision: {}
        sft: {batching: balanced, grad_accum: 2}
    """
    with pytest.raises(SpecError, match="sft.batching: balanced"):
        parse_spec(yaml.safe_load(text), tmp_path / "flywheel.yaml")
