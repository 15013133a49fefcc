"""Memory per GPU, checkpoint size and generation rate for a model too big for this machine.

    python -m flywheel.train.memory_plan                  # 7B and 70B on 8 and 64 GPUs
    python -m flywheel.train.memory_plan --measure-disk   # also time a checkpoint write here

Parameter counts are exact: the model is built from its transformers config on the ``meta``
device (no memory, no weights), so embeddings, grouped-query attention and tied heads are
counted as transformers lays them out. The bytes per parameter follow how this project
trains (Accelerate and FSDP2 keep fp32 parameters and autocast the compute to bf16):

- weights 4 B and gradients 4 B per trainable parameter; LoRA's frozen base is stored in
  bf16 (2 B) and has no gradient;
- AdamW: two fp32 moments, 8 B; torch's Adafactor: a row and a column second-moment vector
  per matrix and a full one per vector (no first moment); Muon: one fp32 momentum per matrix
  entry, AdamW's 8 B for the embeddings, the head and the norms;
- DDP replicates all of it; FSDP2 shards all of it over the GPUs and gathers two layers'
  bf16 weights at a time (the one computing and the one prefetched).

Activations are left out of the totals: they depend on sequence length and micro-batch, and
gradient checkpointing makes them small beside the states (printed separately).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

GB = 1e9
MODELS: dict[str, dict[str, Any]] = {  # Llama-2 shapes with a 32k vocabulary
    "7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32),
    "70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=8),
}  # fmt: skip
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OPTIMIZERS = ("adamw", "adafactor", "muon")
STRATEGIES = ("ddp", "fsdp2", "lora")


@dataclass(frozen=True)
class Shapes:
    """What the memory plan needs to know about a model's parameters."""

    total: int  # every parameter
    hidden_matrices: int  # 2-D weights inside the blocks: Muon's part
    adafactor_elems: int  # elements of torch Adafactor's factored second moments
    largest_layer: int  # parameters of one decoder layer (FSDP2 gathers one at a time)
    lora_trainable: int  # adapter parameters at rank ``lora_rank`` on LORA_TARGETS
    lora_rank: int
    hidden_size: int
    layers: int
    vocab: int


def shapes(config: dict[str, Any], lora_rank: int = 16) -> Shapes:
    """Count a Llama-style model's parameters by kind, from a meta-device instance."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**{"vocab_size": 32000, "tie_word_embeddings": False, **config})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = hidden = factored = lora = 0
    for name, p in model.named_parameters():
        total += p.numel()
        in_block = ".layers." in name
        if p.ndim == 2:
            hidden += p.numel() if in_block else 0
            factored += p.shape[0] + p.shape[1]
            if in_block and name.rsplit(".", 2)[-2] in LORA_TARGETS:
                lora += lora_rank * (p.shape[0] + p.shape[1])
        else:
            factored += p.numel()
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    return Shapes(total, hidden, factored, layer, lora, lora_rank, cfg.hidden_size,
                  cfg.num_hidden_layers, cfg.vocab_size)  # fmt: skip


def optimizer_bytes(s: Shapes, optimizer: str, trainable: int | None = None) -> float:
    """Bytes of optimizer state for the whole model (or for ``trainable`` adapter params)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    if trainable is not None:  # LoRA: adapters are small matrices; count them like AdamW's
        return {"adamw": 8.0, "adafactor": 4.0 / s.lora_rank, "muon": 4.0}[optimizer] * trainable
    if optimizer == "adamw":
        return 8.0 * s.total
    if optimizer == "adafactor":
        return 4.0 * s.adafactor_elems
    return 4.0 * s.hidden_matrices + 8.0 * (s.total - s.hidden_matrices)


def per_gpu(s: Shapes, strategy: str, optimizer: str, gpus: int) -> dict[str, float]:
    """GB per GPU of weights, gradients, optimizer state and FSDP2's gathered layers."""
    if strategy == "ddp":
        parts = {"weights": 4.0 * s.total, "grads": 4.0 * s.total,
                 "optimizer": optimizer_bytes(s, optimizer), "gathered": 0.0}  # fmt: skip
    elif strategy == "fsdp2":
        parts = {
            "weights": 4.0 * s.total / gpus,
            "grads": 4.0 * s.total / gpus,
            "optimizer": optimizer_bytes(s, optimizer) / gpus,
            "gathered": 2 * 2.0 * s.largest_layer,  # two layers' bf16 weights
        }
    elif strategy == "lora":  # frozen bf16 base sharded by FSDP2 when it does not fit
        base = 2.0 * s.total
        adapters = s.lora_trainable
        shard = gpus if base > 40 * GB else 1
        parts = {
            "weights": base / shard + 4.0 * adapters,
            "grads": 4.0 * adapters,
            "optimizer": optimizer_bytes(s, optimizer, trainable=adapters),
            "gathered": 2 * 2.0 * s.largest_layer if shard > 1 else 0.0,
        }
    else:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    out = {k: v / GB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def activations_gb(s: Shapes, seq: int = 4096, micro_batch: int = 1) -> float:
    """Checkpointed activations: one bf16 hidden state per layer boundary, plus fp32 logits."""
    return (s.layers * seq * micro_batch * s.hidden_size * 2 + seq * micro_batch * s.vocab * 4) / GB


def disk_write_gbps(size_mb: int = 512) -> float:
    """Measure this machine's checkpoint write rate: a safetensors file, fsynced."""
    import torch
    from safetensors.torch import save_file

    tensor = torch.empty(size_mb * 2**20 // 4, dtype=torch.float32).uniform_()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.safetensors")
        start = time.perf_counter()
        save_file({"w": tensor}, path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        return size_mb * 2**20 / GB / (time.perf_counter() - start)


def _memory_table(name: str, s: Shapes) -> list[str]:
    act = activations_gb(s)
    rows = [f"\n### {name} ({s.total / 1e9:.2f}B parameters): GB per GPU\n",
            "| strategy | optimizer | weights | grads | optimizer state | gathered | total, 8 GPUs "
            "| total, 64 GPUs |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip

    def total(m: dict[str, float]) -> str:  # bold where it does not fit an 80 GB GPU
        return f"{m['total']:.1f}" if m["total"] + act < 80 else f"**{m['total']:.1f}**"

    for strategy in STRATEGIES:
        for opt in OPTIMIZERS:
            m, wide = per_gpu(s, strategy, opt, 8), per_gpu(s, strategy, opt, 64)
            rows.append(
                f"| {strategy} | {opt} | {m['weights']:.1f} | {m['grads']:.2f} | "
                f"{m['optimizer']:.2f} | {m['gathered']:.2f} | {total(m)} | {total(wide)} |"
            )
    return rows


def report(measure_disk: bool = False, node_gbps: float = 2.0, mfu: float = 0.4) -> str:
    """The markdown tables of docs/scaling.md's large-model section."""
    lines: list[str] = []
    plans = {name: shapes(cfg) for name, cfg in MODELS.items()}
    for name, s in plans.items():
        lines += _memory_table(name, s)
        lines.append(
            f"\nLoRA r={s.lora_rank} on {', '.join(LORA_TARGETS)}: {s.lora_trainable / 1e6:.1f}M "
            f"trainable ({100 * s.lora_trainable / s.total:.2f}%). Checkpointed activations at "
            f"4,096 tokens x 1 sequence: {activations_gb(s):.1f} GB; a total in bold does not "
            "fit an 80 GB GPU with them. The per-GPU columns are for 8 GPUs."
        )
    measured = disk_write_gbps() if measure_disk else None
    lines += ["\n### Checkpoints (8 GPUs = 1 node, 64 GPUs = 8 nodes, each writing its shards)\n",
              "| model | bf16 weights | LoRA adapter (bf16) | resumable state: AdamW "
              "| Adafactor | Muon | AdamW state written by 1 node | by 8 nodes |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, s in plans.items():
        state = {opt: (4.0 * s.total + optimizer_bytes(s, opt)) / GB for opt in OPTIMIZERS}
        lines.append(
            f"| {name} | {2.0 * s.total / GB:.0f} GB | {2.0 * s.lora_trainable / GB:.2f} GB | "
            f"{state['adamw']:.0f} GB | {state['adafactor']:.0f} GB | {state['muon']:.0f} GB | "
            f"{state['adamw'] / node_gbps:.0f} s | {state['adamw'] / node_gbps / 8:.0f} s |"
        )
    lines.append(f"\nWrite times assume {node_gbps:g} GB/s per node (local NVMe or a share of a "
                 "parallel filesystem)." + (f" This machine measured {measured:.2f} GB/s."
                                            if measured else ""))  # fmt: skip
    lines += ["\n### Generation per cycle (256 new tokens each, within one hour)\n",
              f"| model | decode FLOPs/token | tokens/s per H200 at {mfu:.0%} of 989 TFLOP/s "
              "| GPUs for 10^5 generations | GPUs for 10^6 generations |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, s in plans.items():
        per_gpu_tps = 989e12 * mfu / (2 * s.total)
        need = [n * 256 / 3600 / per_gpu_tps for n in (1e5, 1e6)]
        lines.append(f"| {name} | {2 * s.total:.2e} | {per_gpu_tps:,.0f} | {need[0]:.1f} | "
                     f"{need[1]:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure-disk", action="store_true", help="time a 512 MB write here")
    args = parser.parse_args(argv)
    print(report(args.measure_disk))


if __name__ == "__main__":
    main()
