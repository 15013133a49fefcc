"""Benchmark of ``sft.batching: balanced`` against random batching: same data, same steps.

    .venv/bin/python bench/sft_batching.py [--spec examples/agent/flywheel.yaml] \
        [--steps 100] [--splits 2,4] [--repeats 2] [--threads 2] [--checkpoint DIR]

The data are the spec's ``sft.data`` (the agent example's: 6,400 scripted NumberGuess
episodes of 64-186 tokens). The model is the spec's shape with random weights, seeded, and a
tokenizer trained here on those conversations with the spec's vocabulary size and added
tokens (no downloads); ``--checkpoint`` fine-tunes a flywheel checkpoint (its own tokenizer)
instead. Every variant trains ``--steps`` optimizer steps of the same S conversations each
(S = the spec's ``sft.micro_batch`` x ``sft.grad_accum``) through the SFT stage's own trainer
(``flywheel.train.sft.build_trainer``), the loss on assistant tokens only:

- random: micro-batches of S random conversations, each padded to its longest (the baseline:
  one forward per step, the largest matrices);
- balanced/k for each k of ``--splits``: each step's S random conversations sorted by length
  and split into k micro-batches of about equal cost (``batching: balanced, grad_accum: k``).

Variants alternate, ``--repeats`` times each. The table gives each run's training seconds
(Trainer's ``train_runtime``), tokens/s (tokens that carry no padding), the share of padding in
the micro-batches it ran, and its final loss (a different draw than random's, so close, not
equal). The last line is key=value pairs: the best balanced split and ``ratio`` = its median
tokens/s over random's; ``padding_random``, ``padding_balanced``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.core import artifacts  # noqa: E402
from flywheel.core.records import Loaded  # noqa: E402
from flywheel.core.settings.train import SftSettings  # noqa: E402
from flywheel.core.spec import Spec, load_spec  # noqa: E402
from flywheel.train.sft import build_trainer, sft_config  # noqa: E402
from flywheel.train.sft_data import load_sft_data  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=Path("examples/agent/flywheel.yaml"))
    parser.add_argument("--set", action="append", default=[], help="a spec override, repeated")
    parser.add_argument("--checkpoint", type=Path, help="a flywheel checkpoint to fine-tune")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--splits", default="2,4", help="micro-batches per step, balanced")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def random_model(spec: Spec, data: Loaded, directory: Path, seed: int) -> Path:
    """The spec's model shape, random weights, and a tokenizer trained on ``data``'s text."""
    from flywheel.train.model import build_model
    from flywheel.train.tokenizer import train_tokenizer

    texts = [turn["content"] for example in data.examples for turn in example["messages"]]
    tokens = spec.tokenizer
    tok = train_tokenizer(texts, tokens.vocab_size, 2, directory, tokens.added_tokens)
    ids = {"eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
    ids["pad_token_id"] = tok.pad_token_id
    positions = max(spec.packing.seq_len, spec.sft.max_length)
    model = build_model(spec.model, len(tok), positions, ids, seed=seed)
    model.save_pretrained(directory)
    return directory


def one_run(spec: Spec, parent: Path, data: Loaded, settings: SftSettings, out: Path) -> dict:
    """Train ``settings`` once; seconds, tokens/s, padding share and final loss."""
    trainer = build_trainer(sft_config(settings, out), parent, spec.model.attn_implementation, data)
    padding = padding_share(trainer, settings.steps * settings.grad_accum)
    output = trainer.train()
    seconds = output.metrics["train_runtime"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = trainer.state.num_input_tokens_seen
    return {"seconds": seconds, "tok_s": tokens / seconds, "padding": padding, "loss": losses[-1]}


def padding_share(trainer: Any, micro_batches: int) -> float:
    """The share of padding in the first ``micro_batches`` micro-batches the run will see."""
    real = total = 0
    loader, epoch = trainer.get_train_dataloader(), 0
    while micro_batches > 0:
        loader.set_epoch(epoch)
        for batch in loader:
            mask = batch["attention_mask"]
            real, total = real + int(mask.sum()), total + mask.numel()
            micro_batches -= 1
            if micro_batches == 0:
                break
        epoch += 1
    return 1 - real / total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec, args.set)
    data = load_sft_data(spec.sft.data)
    step = spec.sft.micro_batch * spec.sft.grad_accum
    splits = [int(k) for k in args.splits.split(",")]
    if bad := [k for k in splits if k < 2 or step % k]:
        raise SystemExit(f"--splits {bad}: each must be >= 2 and divide the step's {step}")
    every = max(1, args.steps // 10)  # the last step is logged when steps is a multiple of 10
    common = dict(steps=args.steps, save_every=args.steps, log_every=every, seed=args.seed)
    variants = {"random": spec.sft.model_copy(update=common | {"batching": "random",
                                                               "micro_batch": step,
                                                               "grad_accum": 1})}  # fmt: skip
    for k in splits:
        update = common | {"batching": "balanced", "micro_batch": step // k, "grad_accum": k}
        variants[f"balanced/{k}"] = spec.sft.model_copy(update=update)
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            parent = artifacts.verify(args.checkpoint).path
        else:
            parent = random_model(spec, data, Path(tmp) / "model", args.seed)
        print(f"{len(data.examples)} conversations, {args.steps} steps of {step}, {parent}")
        print("| variant | run | seconds | tokens/s | padding | final loss |")
        print("|:---|---:|---:|---:|---:|---:|")
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for repeat in range(args.repeats):
            for name, settings in variants.items():
                done = one_run(spec, parent, data, settings, Path(tmp) / f"{name}-{repeat}")
                runs[name].append(done)
                print(f"| {name} | {repeat + 1} | {done['seconds']:.1f} | {done['tok_s']:.0f} | "
                      f"{done['padding']:.3f} | {done['loss']:.4f} |", flush=True)  # fmt: skip
    speed = {name: statistics.median(r["tok_s"] for r in done) for name, done in runs.items()}
    best = max((name for name in speed if name != "random"), key=speed.get)
    pairs = {
        "random_tok_s": f"{speed['random']:.0f}",
        "balanced_tok_s": f"{speed[best]:.0f}",
        "best_split": best.split("/")[1],
        "padding_random": f"{runs['random'][0]['padding']:.3f}",
        "padding_balanced": f"{runs[best][0]['padding']:.3f}",
        "loss_random": f"{statistics.median(r['loss'] for r in runs['random']):.4f}",
        "loss_balanced": f"{statistics.median(r['loss'] for r in runs[best]):.4f}",
        "ratio": f"{speed[best] / speed['random']:.3f}",
    }
    print(" ".join(f"{k}={v}" for k, v in pairs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
