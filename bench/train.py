"""Benchmark of flywheel's training step against a plain PyTorch loop, same model, same data.

    .venv/bin/python bench/train.py [--steps 6] [--repeats 5] [--hidden 256] [--layers 4]

Data (no downloads): the Python documentation topics (``pydoc_data.topics``, real English
prose) go through the platform's own builders: a byte-level BPE tokenizer trained here
(``flywheel.train.tokenizer``) and packing into 256-token rows (``flywheel.train.packing``), written
as a ``tokenized_dataset`` shard set in a temporary directory.

Three paths train the same Llama-style model (built from one seed) on CPU in fp32:

- platform: exactly what ``python -m flywheel.train.pretrain`` runs per step, i.e. the
  Accelerator from ``pretrain.make_accelerator``, ``trainer.make_optimizer`` (AdamW, decay on
  matrices only, ``fused`` as ``has_fused_adamw`` picks: True on CPU and CUDA), the
  warmup+cosine ``LambdaLR``, gradient clipping, and ``loop.train`` reading ``PackedStream``
  through a DataLoader (the loader's cost is included);
- baseline: a plain loop with no Accelerate and the IDENTICAL optimizer: a
  ``torch.optim.AdamW`` built here with the same two parameter groups and the same lr, betas,
  eps, weight decay and ``fused`` flag (checked against the platform's optimizer before
  timing), ``clip_grad_norm_``, the same schedule, losses kept on the device, and the same
  rows pre-loaded in memory (its data costs nothing). ``ratio`` = platform / baseline is
  therefore the loop's own overhead (Accelerate, loader, bookkeeping), not an optimizer choice;
- baseline_default: the same plain loop with ``torch.optim.AdamW(model.parameters(), ...)`` as
  constructed by default (one group, decay on everything, on CPU the per-tensor loop), for
  ``ratio_vs_default_adamw``: what the optimizer choice is worth on top.

After a warm-up block each, timed blocks of ``--steps`` steps run in rotating order so that
drifting machine load hits every path alike; the report is each path's median tokens/s. The
platform and the baseline see the same rows with the same optimizer, so their losses must agree
at every step (``loss_max_diff``). The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import pydoc_data.topics
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.core import products as P  # noqa: E402
from flywheel.core.shards import ShardWriter  # noqa: E402
from flywheel.core.spec import Spec, load_spec  # noqa: E402
from flywheel.train.loader import PackedStream, train_files  # noqa: E402
from flywheel.train.model import build_model, count_parameters  # noqa: E402
from flywheel.train.packing import build_tokenized_dataset  # noqa: E402
from flywheel.train.pretrain import make_accelerator, read_inputs  # noqa: E402
from flywheel.train.tokenizer import build_tokenizer  # noqa: E402
from flywheel.train.trainer import (  # noqa: E402
    Position,
    has_fused_adamw,
    lr_multiplier,
    make_optimizer,
    make_scheduler,
    train,
)


def make_spec(directory: Path, args: argparse.Namespace) -> Spec:
    """A spec for the benchmark's model and batch, its inputs materialized by the builders."""
    (directory / "flywheel.yaml").write_text(
        textwrap.dedent(f"""
        name: bench-train
        data_dir: data
        catalog: catalog.duckdb
        tokenizer: {{vocab_size: {args.vocab}}}
        packing: {{seq_len: {args.seq_len}, heldout_fraction: 0.0}}
        model:
          config: {{hidden_size: {args.hidden}, intermediate_size: {args.hidden * 11 // 4},
                   num_hidden_layers: {args.layers}, num_attention_heads: {args.hidden // 64},
                   num_key_value_heads: {args.hidden // 64}}}
        pretrain: {{micro_batch: {args.micro_batch}, precision: fp32, lr: 0.001,
                   warmup_steps: 5, steps: 1000}}
        """)
    )
    spec = load_spec(directory / "flywheel.yaml")
    topics = sorted(pydoc_data.topics.topics.items())
    with ShardWriter(spec.product_dir("deduplicated_shards")) as writer:
        writer.write(pl.DataFrame({"id": [k for k, _ in topics], "text": [v for _, v in topics]}))
        writer.commit()
    build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    build_tokenized_dataset(spec, P.resolve_inputs(spec, P.TOKENIZED))
    return spec


class Platform:
    """The entry's step: its Accelerator, optimizer, schedule, loop and data stream."""

    def __init__(self, spec: Spec, vocab: int):
        s = spec.pretrain
        self.accelerator, _, _ = make_accelerator(spec)
        model = build_model(spec.model, vocab, spec.packing.seq_len, seed=s.seed)
        self.fused = has_fused_adamw(self.accelerator.device)  # as pretrain._train chooses
        opt = make_optimizer(model, s.lr, s.weight_decay, (s.beta1, s.beta2), s.eps, self.fused)
        self.scheduler = make_scheduler(opt, s.warmup_steps, s.steps, s.min_lr_ratio)
        self.model, self.optimizer = self.accelerator.prepare(model, opt)
        stream = PackedStream(train_files(read_inputs(spec).dataset), s.micro_batch, seed=s.seed)
        self.batches = iter(torch.utils.data.DataLoader(stream, batch_size=None))
        self.pos, self.s = Position(), s

    def run(self, steps: int) -> list[float]:
        start = len(self.pos.losses)
        train(
            self.accelerator, self.model, self.optimizer, self.scheduler, self.batches, self.pos,
            steps=self.pos.step + steps, grad_accum=1, max_grad_norm=self.s.max_grad_norm,
            tokens_per_step=0, log_every=10**9,
        )  # fmt: skip
        return self.pos.losses[start:]


class Baseline:
    """A plain PyTorch loop: no Accelerate, rows already in memory.

    ``fused`` given: AdamW with ``make_optimizer``'s groups and arguments, written out here in
    plain PyTorch (decay on tensors with ndim >= 2 only, ``fused`` as the platform chose it);
    None: AdamW as constructed by default over ``model.parameters()``."""

    def __init__(self, spec: Spec, vocab: int, rows: list[torch.Tensor], fused: bool | None):
        s = spec.pretrain
        self.model = build_model(spec.model, vocab, spec.packing.seq_len, seed=s.seed)
        hyper = {"lr": s.lr, "betas": (s.beta1, s.beta2), "eps": s.eps}
        if fused is not None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            groups = [
                {"params": [p for p in params if p.ndim >= 2], "weight_decay": s.weight_decay},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ]
            self.optimizer = torch.optim.AdamW(groups, **hyper, fused=fused or None)
        else:
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(), **hyper, weight_decay=s.weight_decay
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: lr_multiplier(i, s.warmup_steps, s.steps, s.min_lr_ratio)
        )
        self.rows: Iterator[torch.Tensor] = iter(rows)
        self.max_norm = s.max_grad_norm

    def run(self, steps: int) -> list[float]:
        self.model.train()
        losses = []
        for _ in range(steps):
            x = next(self.rows)
            loss = self.model(input_ids=x, labels=x, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        return torch.stack(losses).tolist()


def optimizer_config(optimizer: Any) -> tuple:
    """Class, defaults, and per group its settings and parameter shapes: equal tuples mean
    the same optimizer over the same parameters (an Accelerate wrapper is looked through)."""
    opt = getattr(optimizer, "optimizer", optimizer)
    groups = [
        (sorted((k, repr(v)) for k, v in g.items() if k != "params"),
         [tuple(p.shape) for p in g["params"]])
        for g in opt.param_groups
    ]  # fmt: skip
    return type(opt), sorted((k, repr(v)) for k, v in opt.defaults.items()), groups


def timed(path: Platform | Baseline, steps: int, tokens_per_step: int) -> tuple[float, list]:
    started = time.perf_counter()
    losses = path.run(steps)
    return steps * tokens_per_step / (time.perf_counter() - started), losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks per path")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per path first")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_spec(Path(tmp), args)
        dataset = read_inputs(spec).dataset
        vocab = dataset.manifest["vocab_size"]
        total = args.warmup + args.steps * args.repeats
        # the baselines' rows: the very batches the platform's stream yields, pre-loaded
        stream = PackedStream(train_files(dataset), args.micro_batch, seed=spec.pretrain.seed)
        data = [b["input_ids"] for _, b in zip(range(total), stream, strict=False)]
        platform = Platform(spec, vocab)
        if platform.accelerator.device.type != "cpu":  # the baselines below run on CPU
            raise SystemExit(
                "bench/train.py compares CPU loops: hide the GPU with CUDA_VISIBLE_DEVICES= "
                "or run bench/train_gpu.py"
            )
        paths = {
            "platform": platform,
            "baseline": Baseline(spec, vocab, data, fused=platform.fused),
            "baseline_default": Baseline(spec, vocab, data, fused=None),
        }
        if optimizer_config(paths["platform"].optimizer) != optimizer_config(
            paths["baseline"].optimizer
        ):
            raise SystemExit("the baseline's optimizer differs from the platform's")
        setup_s = time.perf_counter() - t0
        losses = {name: path.run(args.warmup) for name, path in paths.items()}
        tokens = args.micro_batch * args.seq_len
        speeds: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(args.repeats):  # rotate the order so load drift hits every path alike
            names = list(paths)[r % 3 :] + list(paths)[: r % 3]
            for name in names:
                speed, block = timed(paths[name], args.steps, tokens)
                speeds[name].append(speed)
                losses[name] += block
        info = {"rows": dataset.num_rows, "vocab": vocab, "setup_s": setup_s}
    report(args, paths["platform"], speeds, losses, info, time.perf_counter() - t0)


def report(args, platform, speeds, losses, info, total_s) -> None:
    med = {k: statistics.median(v) for k, v in speeds.items()}
    p, b, d = med["platform"], med["baseline"], med["baseline_default"]
    params = count_parameters(platform.accelerator.unwrap_model(platform.model))
    opt = platform.optimizer.optimizer
    same = zip(losses["platform"], losses["baseline"], strict=True)
    loss_diff = max(abs(x - y) for x, y in same)
    lines = {
        "model": f"llama {args.layers}x{args.hidden}, {params / 1e6:.2f}M parameters, "
        f"vocab {info['vocab']}",
        "batch": f"{args.micro_batch} x {args.seq_len} tokens, fp32, "
        f"{torch.get_num_threads()} threads",
        "data": f"{info['rows']} packed rows of pydoc topics; setup {info['setup_s']:.1f} s",
        "optimizer (platform, baseline)": f"AdamW, {len(opt.param_groups)} groups, "
        f"fused={opt.defaults['fused']}, foreach={opt.defaults['foreach']}",
        "first-step loss": ", ".join(f"{k} {v[0]:.5f}" for k, v in losses.items()),
        "last-step loss": ", ".join(f"{k} {v[-1]:.5f}" for k, v in losses.items()),
        **{f"{k} tokens/s": ", ".join(f"{x:,.0f}" for x in v) for k, v in speeds.items()},
        "median ratio": f"{p / b:.3f} vs the plain loop with the same AdamW, "
        f"{p / d:.3f} vs the plain loop with default AdamW",
    }
    width = max(map(len, lines))
    for k, v in lines.items():
        print(f"{k:<{width}}  {v}")
    print(
        f"params={params} steps={args.steps} repeats={args.repeats} "
        f"platform_tok_s={p:.0f} baseline_tok_s={b:.0f} ratio={p / b:.3f} "
        f"baseline_default_tok_s={d:.0f} ratio_vs_default_adamw={p / d:.3f} "
        f"loss_max_diff={loss_diff:.2e} total_s={total_s:.0f}"
    )


if __name__ == "__main__":
    main()
