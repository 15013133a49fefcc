"""AdamW, Adafactor and Muon on the same model, data and step budget: loss and state bytes.

    .venv/bin/python bench/optimizers.py [--steps 60] [--hidden 128] [--layers 4]
        [--lr-adamw 3e-3] [--lr-muon 3e-3] [--lr-adafactor 3e-2]

Data and model as ``bench/train.py`` builds them (no downloads): the Python documentation
topics, a byte-level BPE tokenizer trained here and 256-token packed rows; a Llama-style model
(by default the spec's default shape, 4 x 128) built from one seed, so every optimizer starts
from the same weights. Each trains with pre-training's own pieces (``pretrain.
make_accelerator``, ``optim.build_optimizer`` as ``pretrain._train`` calls it, the warmup +
cosine ``LambdaLR``, clipping, ``trainer.train``) on the very same pre-loaded batches, for a
fixed number of steps.

Learning rates: AdamW's and Muon's are equal by default (Muon's ``match_rms_adamw`` scaling
is made for sharing AdamW's lr); Adafactor's is 10x, as its lr is relative to each tensor's RMS
(torch's defaults: 1e-2 for Adafactor against AdamW's 1e-3).

Reported per optimizer: ``loss`` (mean training loss of the last 10 steps), ``eval_loss``
(on 4 batches no optimizer trained on), state bytes per trainable parameter
(``optim.state_bytes_per_param``, from the live optimizer), and ms per training step and per
``optimizer.step`` alone (the median of steps timed in blocks that rotate the optimizers'
order, so that drifting machine load hits each alike). The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train import make_spec  # noqa: E402
from flywheel.core.spec import Spec  # noqa: E402
from flywheel.train.loader import PackedStream, train_files  # noqa: E402
from flywheel.train.model import build_model, count_parameters  # noqa: E402
from flywheel.train.optim import (  # noqa: E402
    OptimizerArgs,
    build_optimizer,
    state_bytes_per_param,
    train_optimizer_args,
)
from flywheel.train.pretrain import make_accelerator, read_inputs  # noqa: E402
from flywheel.train.trainer import Position, has_fused_adamw, make_scheduler, train  # noqa: E402

NAMES = ("adamw", "adafactor", "muon")
EVAL_BATCHES = 4


class Run:
    """One optimizer's training: pre-training's model, optimizer, schedule and loop."""

    def __init__(self, spec: Spec, accelerator: Any, vocab: int, args: OptimizerArgs, total: int):
        s = spec.pretrain
        model = build_model(spec.model, vocab, spec.packing.seq_len, seed=s.seed)
        optimizer = build_optimizer(model, args)
        self.scheduler = make_scheduler(optimizer, s.warmup_steps, total, s.min_lr_ratio)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.opt_seconds: list[float] = []
        # the optimizer's own share of a step, timed by its step hooks
        optimizer.register_step_pre_hook(lambda *_: setattr(self, "_t", time.perf_counter()))
        optimizer.register_step_post_hook(
            lambda *_: self.opt_seconds.append(time.perf_counter() - self._t)
        )
        self.accelerator, self.pos, self.max_norm = accelerator, Position(), s.max_grad_norm
        self.step_seconds: list[float] = []

    def run(self, batches: list[torch.Tensor]) -> None:
        started = time.perf_counter()
        train(
            self.accelerator, self.model, self.optimizer, self.scheduler,
            iter({"input_ids": b} for b in batches), self.pos,
            steps=self.pos.step + len(batches), grad_accum=1, max_grad_norm=self.max_norm,
            tokens_per_step=0, log_every=10**9,
        )  # fmt: skip
        self.step_seconds.append((time.perf_counter() - started) / len(batches))

    @torch.no_grad()
    def eval_loss(self, batches: list[torch.Tensor]) -> float:
        self.model.eval()
        losses = [self.model(input_ids=b, labels=b, use_cache=False).loss for b in batches]
        return torch.stack(losses).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="the fixed budget of optimizer steps")
    ap.add_argument("--block", type=int, default=10, help="steps per timed block")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--lr-adamw", type=float, default=3e-3)
    ap.add_argument("--lr-muon", type=float, default=3e-3)
    ap.add_argument("--lr-adafactor", type=float, default=3e-2)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_spec(Path(tmp), args)
        dataset = read_inputs(spec).dataset
        vocab = dataset.manifest["vocab_size"]
        stream = PackedStream(train_files(dataset), args.micro_batch, seed=spec.pretrain.seed)
        wanted = args.steps + EVAL_BATCHES
        data = [b["input_ids"] for _, b in zip(range(wanted), stream, strict=False)]
    if len(data) < wanted:
        raise SystemExit(f"only {len(data)} batches of data for {wanted}: lower --steps")
    train_data, eval_data = data[: args.steps], data[args.steps :]
    accelerator, _, _ = make_accelerator(spec)
    fused = has_fused_adamw(accelerator.device)
    runs = {}
    for name in NAMES:
        lr = getattr(args, f"lr_{name}")
        settings = spec.pretrain.model_copy(update={"optimizer": name, "lr": lr})
        optimizer = train_optimizer_args(settings, fused)
        runs[name] = Run(spec, accelerator, vocab, optimizer, args.steps)
    for r, start in enumerate(range(0, args.steps, args.block)):
        order = NAMES[r % 3 :] + NAMES[: r % 3]  # rotate: load drift hits every optimizer alike
        for name in order:
            runs[name].run(train_data[start : start + args.block])
    model = accelerator.unwrap_model(runs["adamw"].model)
    report(args, runs, eval_data, count_parameters(model), time.perf_counter() - t0)


def report(args: argparse.Namespace, runs: dict[str, Run], eval_data, params, total_s) -> None:
    pairs: dict[str, str] = {}
    print(
        f"llama {args.layers}x{args.hidden}, {params / 1e6:.2f}M parameters, vocab {args.vocab}; "
        f"{args.steps} steps of {args.micro_batch} x {args.seq_len} tokens; "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'optimizer':<10} {'lr':>8} {'loss':>7} {'eval':>7} {'bytes/param':>11} "
          f"{'step ms':>8} {'opt ms':>7}")  # fmt: skip
    for name, run in runs.items():
        loss = statistics.mean(run.pos.losses[-10:])
        eval_loss = run.eval_loss(eval_data)
        state = state_bytes_per_param(run.optimizer)
        step_ms = 1000 * statistics.median(run.step_seconds)
        opt_ms = 1000 * statistics.median(run.opt_seconds)
        lr = getattr(args, f"lr_{name}")
        print(f"{name:<10} {lr:>8.1e} {loss:>7.4f} {eval_loss:>7.4f} {state:>11.3f} "
              f"{step_ms:>8.1f} {opt_ms:>7.2f}")  # fmt: skip
        pairs |= {f"{name}_loss": f"{loss:.4f}", f"{name}_eval_loss": f"{eval_loss:.4f}"}
        pairs |= {f"{name}_bytes": f"{state:.3f}", f"{name}_step_ms": f"{step_ms:.1f}"}
        pairs |= {f"{name}_opt_ms": f"{opt_ms:.2f}"}
    pairs |= {"first_loss": f"{runs['adamw'].pos.losses[0]:.4f}", "steps": str(args.steps)}
    pairs |= {"params": str(params), "total_s": f"{total_s:.0f}"}
    print(" ".join(f"{k}={v}" for k, v in pairs.items()))


if __name__ == "__main__":
    main()
