"""GPU training throughput and MFU of flywheel's own training path, against a plain compiled
PyTorch loop on the same model and data, in the same run.

    .venv/bin/python bench/train_gpu.py                 # on a CUDA machine (make bench-gpu)
    .venv/bin/python bench/train_gpu.py --models a --micro-batches 16,32
    .venv/bin/python bench/train_gpu.py --smoke         # a tiny CPU run that checks the script

Models (Llama-style, vocab 32000, tied embeddings, bf16 autocast over fp32 master weights):

- (a) ~110M: hidden 768, 12 layers, 12 heads, intermediate 2048, sequence 1024;
- (b) ~0.9B: hidden 2048, 16 layers, 16 heads, intermediate 5504, sequence 2048.

Paths:

- platform: what ``python -m flywheel.train.pretrain`` runs per step: the Accelerator from
  ``pretrain.make_accelerator`` (bf16, ``torch.compile`` via its inductor backend), SDPA
  attention, fused AdamW with decay groups, warmup+cosine schedule, clipping, and
  ``loop.train`` reading ``PackedStream`` through a DataLoader;
- baseline: a plain loop: ``torch.compile(model)``, ``torch.autocast(bf16)``, fused AdamW,
  clipping, the same rows preloaded on the GPU.

Data are uniformly random token ids written as a ``tokenized_dataset``-shaped shard set:
throughput does not depend on the token values, and nothing has to be downloaded.

MFU = tokens/s x (6 N + 12 L d T) / 989e12, with N the distinct parameters (the tied
embedding counted once), L layers, d hidden size, T sequence length (PaLM, appendix B;
989 TFLOP/s is the H100 SXM dense bf16 peak). Each configuration runs ``--warmup`` steps
(compilation) then ``--steps`` timed steps; out-of-memory configurations are reported and
skipped. The last line is key=value pairs; ratio = platform / baseline tokens/s of (b) at its
best micro-batch (of (a) when only (a) ran).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.core.shards import ShardWriter  # noqa: E402
from flywheel.core.spec import Spec, load_spec  # noqa: E402
from flywheel.train.loader import PackedStream, train_files  # noqa: E402
from flywheel.train.model import build_model, count_parameters, flops_per_token  # noqa: E402
from flywheel.train.pretrain import make_accelerator  # noqa: E402
from flywheel.train.trainer import Position, make_optimizer, make_scheduler, train  # noqa: E402

PEAK_FLOPS = 989e12
VOCAB = 32000
MODELS = {
    "a": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
              intermediate_size=2048, seq=1024, micro_batches=[16, 32]),
    "b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
              intermediate_size=5504, seq=2048, micro_batches=[8, 12, 16]),
    "smoke": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, seq=64, micro_batches=[4]),
}  # fmt: skip


def make_spec(directory: Path, name: str, micro_batch: int, compile_: bool, smoke: bool) -> Spec:
    m = MODELS[name]
    precision = "fp32" if smoke else "bf16"
    (directory / "flywheel.yaml").write_text(
        textwrap.dedent(f"""
        name: bench-train-gpu
        data_dir: data
        catalog: catalog.duckdb
        packing: {{seq_len: {m["seq"]}}}
        model:
          config: {{hidden_size: {m["hidden_size"]}, num_hidden_layers: {m["num_hidden_layers"]},
                   num_attention_heads: {m["num_attention_heads"]},
                   num_key_value_heads: {m["num_attention_heads"]},
                   intermediate_size: {m["intermediate_size"]}, tie_word_embeddings: true}}
        pretrain: {{micro_batch: {micro_batch}, precision: {precision}, compile: {compile_},
                   lr: 0.0003, warmup_steps: 10, steps: 100000, num_workers: 2}}
        """)
    )
    return load_spec(directory / "flywheel.yaml")


def write_rows(root: Path, rows: int, seq: int, seed: int = 0) -> list[Path]:
    """Random token rows in the tokenized_dataset layout (Array(Int32, seq) ``input_ids``)."""
    ids = np.random.default_rng(seed).integers(4, VOCAB, size=(rows, seq), dtype=np.int32)
    frame = pl.DataFrame({"input_ids": ids}).with_columns(
        pl.col("input_ids").cast(pl.Array(pl.Int32, seq))
    )
    with ShardWriter(root, shard_rows=4096, row_group_size=256) as writer:
        writer.write(frame)
        shards = writer.commit(seq_len=seq, vocab_size=VOCAB)
    return train_files(shards)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_platform(spec: Spec, files: list[Path], steps: int, warmup: int) -> float:
    """Tokens/s of the platform path (loop.train under the pretrain Accelerator)."""
    from torch.utils.data import DataLoader

    s, seq = spec.pretrain, spec.packing.seq_len
    accelerator, _, _ = make_accelerator(spec)
    model = build_model(spec.model, VOCAB, seq, seed=0).to(accelerator.device)
    fused = accelerator.device.type == "cuda"
    optimizer = make_optimizer(model, s.lr, s.weight_decay, (s.beta1, s.beta2), s.eps, fused)
    scheduler = make_scheduler(optimizer, s.warmup_steps, s.steps, s.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    stream = PackedStream(files, s.micro_batch, seed=0)
    cuda = accelerator.device.type == "cuda"
    batches = iter(DataLoader(stream, batch_size=None, num_workers=s.num_workers, pin_memory=cuda))
    pos = Position()
    kwargs = dict(grad_accum=1, max_grad_norm=s.max_grad_norm, tokens_per_step=s.micro_batch * seq)
    train(accelerator, model, optimizer, scheduler, batches, pos, steps=warmup,
          log_every=warmup, **kwargs)  # fmt: skip
    _sync()
    start = time.perf_counter()
    train(accelerator, model, optimizer, scheduler, batches, pos, steps=warmup + steps,
          log_every=steps, **kwargs)  # fmt: skip
    _sync()
    elapsed = time.perf_counter() - start
    assert math.isfinite(pos.losses[-1]), "platform loss is not finite"
    accelerator.free_memory()
    return steps * s.micro_batch * seq / elapsed


def run_baseline(spec: Spec, files: list[Path], steps: int, warmup: int) -> float:
    """Tokens/s of a plain compiled loop: autocast, fused AdamW, rows preloaded on device."""
    s, seq = spec.pretrain, spec.packing.seq_len
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(spec.model, VOCAB, seq, seed=0).to(device)
    compiled = torch.compile(model) if s.compile else model
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(s.beta1, s.beta2),
                            weight_decay=s.weight_decay, fused=cuda)  # fmt: skip
    rows = pl.read_parquet(files[0])["input_ids"].to_numpy()
    data = torch.from_numpy(rows.astype(np.int64)).to(device)
    n = data.shape[0] // s.micro_batch
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32

    def step(i: int) -> torch.Tensor:
        x = data[(i % n) * s.micro_batch : (i % n + 1) * s.micro_batch]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = compiled(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for i in range(warmup):
        step(i)
    _sync()
    start = time.perf_counter()
    losses = [step(warmup + i) for i in range(steps)]
    _sync()
    elapsed = time.perf_counter() - start
    assert math.isfinite(float(torch.stack(losses)[-1])), "baseline loss is not finite"
    return steps * s.micro_batch * seq / elapsed


def _free() -> None:
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    m = MODELS[name]
    micro_batches = args.micro_batches or m["micro_batches"]
    files = write_rows(workdir / f"rows-{name}", max(micro_batches) * 64, m["seq"])
    probe = make_spec(workdir, name, micro_batches[0], not args.no_compile, args.smoke)
    model = build_model(probe.model, VOCAB, m["seq"])
    n_params = count_parameters(model)
    fpt = flops_per_token(model.config, n_params, m["seq"])
    del model
    print(f"model {name}: {n_params / 1e6:.1f}M parameters, {fpt / 1e9:.3f} GFLOP/token")
    best: dict[str, float] = {}
    for mb in micro_batches:
        spec = make_spec(workdir, name, mb, not args.no_compile, args.smoke)
        result = {}
        for path, fn in (("platform", run_platform), ("baseline", run_baseline)):
            try:
                result[path] = fn(spec, files, args.steps, args.warmup)
            except torch.cuda.OutOfMemoryError:
                print(f"  {name} micro-batch {mb} {path}: out of memory, skipped")
            _free()
        if "platform" not in result:
            continue
        mfu = {p: tps * fpt / PEAK_FLOPS for p, tps in result.items()}
        shown = "  ".join(f"{p} {tps:,.0f} tok/s (MFU {mfu[p]:.1%})" for p, tps in result.items())
        print(f"  {name} micro-batch {mb}: {shown}", flush=True)
        if result["platform"] > best.get("tok_s", 0):
            best = {"tok_s": result["platform"], "mfu": mfu["platform"], "micro_batch": mb,
                    "baseline_tok_s": result.get("baseline", math.nan),
                    "baseline_mfu": mfu.get("baseline", math.nan)}  # fmt: skip
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="a,b", help="comma list of a, b")
    parser.add_argument("--micro-batches", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps (compilation)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, fp32")
    args = parser.parse_args(argv)
    names = ["smoke"] if args.smoke else args.models.split(",")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench/train_gpu.py needs CUDA (use --smoke to check the script on CPU)")
    if args.smoke:
        args.steps, args.warmup, args.no_compile = min(args.steps, 3), min(args.warmup, 1), True
    else:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results[name] = bench_model(name, args, Path(tmp))
    fields = []
    for name, r in results.items():
        if not r:
            fields.append(f"{name}_tok_s=nan")
            continue
        fields += [f"{name}_tok_s={r['tok_s']:.0f}", f"{name}_mfu={r['mfu']:.3f}",
                   f"{name}_micro_batch={r['micro_batch']}",
                   f"{name}_baseline_tok_s={r['baseline_tok_s']:.0f}",
                   f"{name}_baseline_mfu={r['baseline_mfu']:.3f}"]  # fmt: skip
    head = results.get("b") or results.get("a") or results.get("smoke") or {}
    ratio = head.get("tok_s", math.nan) / head.get("baseline_tok_s", math.nan)
    print(" ".join([*fields, f"ratio={ratio:.3f}"]))


if __name__ == "__main__":
    main()
