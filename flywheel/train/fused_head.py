"""TRL's fused LM head, made to score only the labelled positions on every device.

TRL 1.16's SFT, GRPO and RLOO trainers patch the model so that a training forward projects the
hidden states through the LM head in tiles and returns per-token log-probabilities instead of
logits (``trl.trainer.utils.add_fused_lm_head``). On a device with Triton the head first selects
the positions whose label is not -100; without Triton (CPU) it projects every position, padding
and prompt included, with the same torch tiles. On the agent example (episodes of 60-190
tokens padded to the longest of 32, the loss on the model's turns only) that head was 40% of a
CPU step.

``score_labelled_positions_only`` makes TRL select the labelled positions everywhere: the same
tiles over fewer rows, so the same loss and gradients. Measured on 2 cores, 40 steps of the
agent example's cycle-1 fine-tune: 21.7 s before, 12.2 s after, the same loss to four places.
The VLM's SFT and DPO (``flywheel.train.vlm.train``) call it too: its image features are
positions without a label; ``bench/vlm_counting.py --steps 300``: 25.4-25.9 s before, 22.7 s
after, the same losses to three places.
TRL decides that selection with the private ``trl.trainer.utils._use_triton``, read at call
time; a TRL that drops it fails here, loudly, and ``tests/train/test_fused_head.py`` checks
the selection still happens.
"""

from __future__ import annotations

from typing import Any


def _select_labelled(device: Any) -> bool:
    """Whether TRL's fused head selects the labelled positions first: always."""
    return True


def score_labelled_positions_only() -> None:
    """Make TRL's fused LM head project only the positions that carry a label (idempotent)."""
    import trl.trainer.utils as trl_utils

    if not hasattr(trl_utils, "_use_triton"):
        raise RuntimeError(
            "trl.trainer.utils._use_triton is gone: this TRL chooses differently whether its "
            "fused LM head scores only labelled positions; update flywheel.train.fused_head"
        )
    trl_utils._use_triton = _select_labelled
