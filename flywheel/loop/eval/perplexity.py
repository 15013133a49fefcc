"""Held-out perplexity: the mean next-token loss on packed rows no training run has seen.

    python -m flywheel.loop.eval --spec flywheel.yaml      (reports ``perplexity``,
    ``heldout_loss``)

The rows are the ``heldout`` table of the current ``tokenized_dataset`` (documents chosen by a
hash of their id, see ``flywheel.train.packing``), streamed in file order, one pass, no shuffling,
so the same checkpoint always gets the same number. The loss is averaged over predicted tokens,
not over batches, so a final partial batch weighs what it holds; perplexity is ``exp(loss)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flywheel.train.loader import PackedStream


@torch.no_grad()
def heldout_perplexity(
    model: torch.nn.Module,
    files: list[Path],
    micro_batch: int,
    max_batches: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Token-weighted mean loss over at most ``max_batches`` batches of ``files``.

    Every row is fully packed (no padding), so each of its ``seq_len - 1`` next-token targets
    counts. Returns ``loss``, ``perplexity``, ``tokens`` (targets scored) and ``batches``.
    """
    stream = PackedStream(files, micro_batch, shuffle=False, loop=False)
    model.eval()
    total, tokens, batches = 0.0, 0, 0
    for batch in stream:
        if batches == max_batches:
            break
        ids = batch["input_ids"].to(device)
        logits = model(input_ids=ids).logits.float()
        # Position t predicts token t+1: drop the last logit and the first label.
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        tokens += ids[:, 1:].numel()
        batches += 1
    if tokens == 0:
        raise ValueError(f"no held-out rows in {[str(f) for f in files]}")
    mean = total / tokens
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": tokens, "batches": batches}
