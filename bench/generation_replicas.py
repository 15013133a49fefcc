"""Benchmark of data-parallel generation replicas on Ray: 2 replicas vs 1, same prompts.

    .venv/bin/python bench/generation_replicas.py [--prompts 256] [--samples 4] [--replicas 2]

Model and data (no downloads): a byte-level BPE tokenizer trained here on arithmetic
conversations, and the demo's model shape (Llama, hidden 128, 4 layers, 4 heads) with random
weights, seeded and published as a checkpoint in a temporary directory. A random model
rarely writes ``<|im_end|>``, so nearly every completion runs ``--max-new-tokens`` tokens:
every path does the same work (the table counts the tokens each made).

Three paths generate ``--samples`` completions of each of the same ``--prompts`` prompts
(``generation.batch_size`` prompts per chunk, temperature 1):

- in-process: the transformers backend in this process, torch on ``--replicas`` threads
  (the strongest one-process baseline on the same cores);
- 1 replica: ``RayReplicaBackend`` with one actor (one thread);
- N replicas: ``RayReplicaBackend`` with ``--replicas`` actors (one thread each).

Each path runs once untimed (warm-up: actors load the model) and once timed. The last line
is key=value pairs; ``ratio`` = N replicas' completions/s over 1 replica's, and
``ratio_vs_inprocess`` the same over the in-process backend's.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.core import artifacts  # noqa: E402
from flywheel.core.settings.train import ModelSettings  # noqa: E402
from flywheel.data.arithmetic import arithmetic_examples  # noqa: E402
from flywheel.loop.generate.backends import TransformersBackend  # noqa: E402
from flywheel.loop.generate.base import SamplingParams  # noqa: E402
from flywheel.loop.generate.replicas import RayReplicaBackend, chunk_params  # noqa: E402
from flywheel.train.model import build_model  # noqa: E402
from flywheel.train.tokenizer import stop_token_ids, train_tokenizer  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--samples", type=int, default=4, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per chunk")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def checkpoint(root: Path, seed: int) -> Path:
    """A published random-weight chat checkpoint of the demo's model shape."""
    texts = [
        f"<|im_start|>user\n{e['prompt']}<|im_end|>\n<|im_start|>assistant\n{e['answer']}<|im_end|>\n"
        for e in arithmetic_examples(2000, 20, seed=seed)
    ]
    staging = artifacts.staging_dir(root)
    tok = train_tokenizer(texts, vocab_size=512, min_frequency=2, out_dir=staging)
    config = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 384}
    config |= {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4}
    special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    model = build_model(ModelSettings(config=config), len(tok), 512, special, seed=seed)
    model.generation_config.eos_token_id = stop_token_ids(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(staging)
    return artifacts.publish(root, staging, stage="sft", steps=0).path


def timed(generate, prompts: list[str]) -> tuple[float, int, int]:
    """Seconds, completions and generated tokens of one call, after an untimed one."""
    generate(prompts)
    start = time.perf_counter()
    rows = generate(prompts)
    seconds = time.perf_counter() - start
    return seconds, sum(len(r) for r in rows), sum(c.tokens for r in rows for c in r)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import ray

    params = SamplingParams(
        n=args.samples, temperature=1.0, top_p=1.0, top_k=0,
        max_new_tokens=args.max_new_tokens, seed=args.seed, greedy_first=False,
    )  # fmt: skip
    prompts = [e["prompt"] for e in arithmetic_examples(args.prompts, 20, seed=args.seed + 1)]
    results: dict[str, tuple[float, int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint(Path(tmp) / "ckpt", args.seed)
        torch.set_num_threads(args.replicas)
        local = TransformersBackend(ckpt, args.batch_size)

        def in_process(texts: list[str]):  # chunk by chunk, as the replicas do
            from flywheel.core.chat import render_prompts

            rendered = render_prompts(local.tokenizer, texts)
            out = []
            for lo in range(0, len(rendered), args.batch_size):
                chunk = rendered[lo : lo + args.batch_size]
                out += local.complete(chunk, chunk_params(chunk, params))
            return out

        results["in-process"] = timed(in_process, prompts)
        torch.set_num_threads(1)
        ray.init(
            address="local", num_cpus=args.replicas, include_dashboard=False, log_to_driver=False
        )
        try:
            for n in (1, args.replicas):
                backend = RayReplicaBackend(TransformersBackend, ckpt, args.batch_size, n)
                with backend:
                    run = functools.partial(backend.generate, params=params)
                    results[f"{n} replicas"] = timed(run, prompts)
        finally:
            ray.shutdown()
    print(f"{'path':<14}{'seconds':>9}{'completions/s':>15}{'tokens/s':>11}")
    rate = {}
    for name, (s, completions, tokens) in results.items():
        rate[name] = completions / s
        print(f"{name:<14}{s:>9.2f}{completions / s:>15.1f}{tokens / s:>11.0f}")
    many, one = rate[f"{args.replicas} replicas"], rate["1 replicas"]
    print(
        f"replicas={args.replicas} completions_per_s={many:.1f} one_replica={one:.1f} "
        f"in_process={rate['in-process']:.1f} ratio={many / one:.2f} "
        f"ratio_vs_inprocess={many / rate['in-process']:.2f}"
    )


if __name__ == "__main__":
    main()
