"""The training loop shared by pre-training and ``bench/train.py``: optimizer, schedule, steps.

No ``Trainer``: one function, ``train``, runs optimizer steps over an iterator of packed
batches under an ``accelerate.Accelerator`` and calls back at log and save steps. It is what
``python -m flywheel.train.pretrain --spec flywheel.yaml`` runs, and what
``python bench/train.py`` times against a plain PyTorch loop.

Speed rules of the step (it is benchmarked): the loss stays on the device and is read back
only at log and save steps (one gather for all pending steps), gradients are freed with
``set_to_none``, and the learning-rate schedule is a plain ``LambdaLR`` stepped once per
optimizer step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

Batch = dict[str, torch.Tensor]


# -- precision -------------------------------------------------------------------------
def resolve_precision(requested: str, cuda: bool, bf16_ok: bool) -> tuple[str, str | None]:
    """Accelerate's ``mixed_precision`` for the spec's ``precision``, and a warning if changed.

    auto: bf16 where CUDA has it (no loss scaling needed), fp16 on older CUDA, fp32 on CPU.
    Explicit bf16 is honoured on CPU: autocast supports it there and it reproduces a GPU run's
    numerics, though it is only faster on CPUs with native bf16. fp16 on CPU is not: autocast
    has no fp16 CPU path worth using and the loss scaler expects CUDA, so it falls back to fp32.
    """
    if requested == "auto":
        if not cuda:
            return "no", None
        return ("bf16" if bf16_ok else "fp16"), None
    if requested == "fp32":
        return "no", None
    if requested == "fp16" and not cuda:
        return "no", "precision fp16 needs CUDA; training in fp32 on CPU"
    if requested == "bf16" and cuda and not bf16_ok:
        return "fp16", "this GPU has no bf16; training in fp16 with loss scaling"
    return requested, None


# -- optimizer and schedule ------------------------------------------------------------
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices (ndim >= 2), none on norms' gains and biases.

    Decaying a norm gain or a bias pulls it towards 0, which changes what the layer computes
    rather than regularising it. Embeddings are matrices and are decayed, as in GPT-3 and
    nanoGPT: with tied weights (the default model) the embedding is also the output
    projection. ``named_parameters`` yields a tied tensor once, so it is never stepped twice.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def has_fused_adamw(device: torch.device) -> bool:
    """Whether PyTorch has a fused AdamW kernel for ``device`` (CUDA, and CPU since 2.4)."""
    return device.type in ("cuda", "cpu")


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay.

    ``fused`` updates all tensors in one kernel. It exists for CUDA and for CPU (PyTorch >=
    2.4); on CPU it replaces the default per-tensor loop: 3 ms instead of 7 ms per step for
    bench/train.py's 4M-parameter model, whose step takes ~480 ms, so about 1% there.
    """
    groups = param_groups(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The factor on the peak lr at optimizer step ``step`` (0-based).

    Linear warmup reaches the peak at ``step == warmup - 1`` (step 0 already learns, at
    1/warmup of the peak); then a half cosine falls from 1 to ``min_ratio`` at ``total``:
    ``min + (1 - min) * (1 + cos(pi * progress)) / 2``.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float
) -> LambdaLR:
    # a partial, not a lambda: LambdaLR.state_dict can then be saved and loaded
    fn = partial(lr_multiplier, warmup=warmup, total=total, min_ratio=min_ratio)
    return LambdaLR(optimizer, fn)


# -- the loop --------------------------------------------------------------------------
@dataclass
class Position:
    """Where a run is: everything besides weights, optimizer and RNG needed to resume it."""

    step: int = 0  # optimizer steps done
    batches: int = 0  # micro-batches this rank has consumed (the data stream's offset)
    tokens: int = 0  # tokens trained on, all ranks together
    losses: list[float] = field(default_factory=list)  # per step: mean over micro-batches, ranks
    train_seconds: float = 0.0  # time in training steps, checkpoint writes excluded
    local_losses: list[float] = field(default_factory=list)  # this rank's, since process start

    def to_json(self) -> dict[str, Any]:
        keys = ("step", "batches", "tokens", "losses", "train_seconds")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Position:
        return cls(**{k: data[k] for k in ("step", "batches", "tokens", "losses", "train_seconds")})


def train_step(
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: LambdaLR,
    batches: Iterator[Batch],
    grad_accum: int,
    max_grad_norm: float,
    want_norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """One optimizer step over ``grad_accum`` micro-batches.

    Returns the mean loss and the gradient norm as device tensors (no host sync) and the lr
    the step used. The scheduler is stepped here, not prepared by Accelerate: a prepared
    scheduler steps ``num_processes`` times per call, which would shorten the schedule.
    """
    total = torch.zeros((), device=accelerator.device)
    for _ in range(grad_accum):
        input_ids = next(batches)["input_ids"].to(accelerator.device, non_blocking=True)
        # accumulate() skips the DDP all-reduce on all but the last micro-batch
        with accelerator.accumulate(model):
            loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
            accelerator.backward(loss)  # divides by grad_accum
        total += loss.detach()
    norm = None
    if max_grad_norm > 0 or want_norm:
        # with clipping off, an infinite bound measures the norm and scales by exactly 1
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # an fp16 overflow keeps the lr where it is
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / grad_accum, norm, lr


def _flush(accelerator: Any, pending: list[torch.Tensor], pos: Position) -> None:
    """Move the pending per-step losses to the host: one gather, averaged over ranks."""
    if not pending:
        return
    local = torch.stack(pending).float()
    every = accelerator.gather(local).view(-1, local.numel())  # [world, steps]
    pos.losses += every.mean(0).tolist()
    pos.local_losses += local.tolist()
    pending.clear()


def train(
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: LambdaLR,
    batches: Iterator[Batch],
    pos: Position,
    *,
    steps: int,
    grad_accum: int,
    max_grad_norm: float,
    tokens_per_step: int,
    log_every: int,
    save_every: int = 0,
    on_log: Callable[[Position, dict[str, float]], None] | None = None,
    on_save: Callable[[Position], None] | None = None,
) -> Position:
    """Train from ``pos.step`` to ``steps``; logs the first, every ``log_every``-th and last
    step, and calls ``on_save`` every ``save_every`` steps and at the end (if given)."""
    model.train()
    pending: list[torch.Tensor] = []
    mark, interval, mark_tokens = time.perf_counter(), 0.0, pos.tokens
    while pos.step < steps:
        last = pos.step + 1 == steps
        log_now = pos.step == 0 or (pos.step + 1) % log_every == 0 or last
        loss, norm, lr = train_step(
            accelerator, model, optimizer, scheduler, batches, grad_accum, max_grad_norm, log_now
        )
        pending.append(loss)
        pos.step, pos.batches = pos.step + 1, pos.batches + grad_accum
        pos.tokens += tokens_per_step
        periodic = save_every > 0 and pos.step % save_every == 0
        save_now = on_save is not None and (periodic or last)
        if not (log_now or save_now):
            continue
        _flush(accelerator, pending, pos)  # the host sync: timings below are real
        now = time.perf_counter()
        pos.train_seconds += now - mark
        interval += now - mark
        if log_now:
            metrics = {
                "step": pos.step,
                "loss": pos.losses[-1],
                "lr": lr,
                "grad_norm": float(norm) if norm is not None else math.nan,
                "tokens_per_s": (pos.tokens - mark_tokens) / max(interval, 1e-9),
            }
            interval, mark_tokens = 0.0, pos.tokens
            if on_log is not None:
                on_log(pos, metrics)
        if save_now:
            on_save(pos)
        mark = time.perf_counter()  # logging and checkpoint writes are not training time
    return pos
