"""The training loop: schedule, weight-decay groups, precision, and real steps on real rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flywheel.core.settings.train import ModelSettings
from flywheel.core.shards import read_current
from flywheel.core.spec import load_spec
from flywheel.train.loader import PackedStream, train_files
from flywheel.train.model import build_model, count_parameters
from flywheel.train.trainer import (
    Position,
    lr_multiplier,
    make_optimizer,
    make_scheduler,
    param_groups,
    resolve_precision,
    train,
    train_step,
)

LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def test_schedule_warms_up_linearly_then_cosine_to_min() -> None:
    warmup, total, floor = 10, 110, 0.1
    f = [lr_multiplier(s, warmup, total, floor) for s in range(total + 5)]
    assert f[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert f[warmup] == pytest.approx(1.0)  # the peak, then the cosine starts
    decay = f[warmup : total + 1]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert f[warmup + 50] == pytest.approx((1 + floor) / 2)  # half way: cos = 0
    assert f[total] == pytest.approx(floor) and f[-1] == pytest.approx(floor)  # stays at min
    assert lr_multiplier(0, 0, 10, 0.0) == pytest.approx(1.0)  # no warmup: start at the peak


def test_scheduler_sets_the_optimizer_lr_and_round_trips() -> None:
    model = torch.nn.Linear(4, 4)
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8)
    sched = make_scheduler(opt, warmup=4, total=20, min_ratio=0.1)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1e-3 * lr_multiplier(s, 4, 20, 0.1) for s in range(8)])
    again = make_scheduler(make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8), 4, 20, 0.1)
    again.load_state_dict(sched.state_dict())
    assert again.last_epoch == 8 and again.get_last_lr() == sched.get_last_lr()


@pytest.mark.parametrize(
    "config",
    [
        LLAMA,
        {
            "model_type": "gpt2",
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
    ],
)
def test_no_decay_on_norms_and_biases(config: dict) -> None:
    model = build_model(ModelSettings(config=config), vocab_size=300, seq_len=32)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert any("norm" in n or ".ln_" in n for n in skipped)
    if config["model_type"] == "gpt2":
        assert any(n.endswith(".bias") for n in skipped)
        assert not any(n.endswith(".bias") for n in decayed)
    assert any("embed" in n or "wte" in n for n in decayed)  # embeddings decay (see loop.py)
    # every parameter exactly once; a tied embedding/output matrix is not stepped twice
    assert not decayed & skipped
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == count_parameters(model)


@pytest.mark.parametrize(
    ("requested", "cuda", "bf16_ok", "expected", "warns"),
    [
        ("auto", False, False, "no", False),
        ("auto", True, True, "bf16", False),
        ("auto", True, False, "fp16", False),
        ("fp32", True, True, "no", False),
        ("bf16", False, False, "bf16", False),  # honoured on CPU (see resolve_precision)
        ("fp16", False, False, "no", True),
        ("bf16", True, False, "fp16", True),
        ("fp16", True, True, "fp16", False),
    ],
)
def test_precision(requested: str, cuda: bool, bf16_ok: bool, expected: str, warns: bool) -> None:
    got, note = resolve_precision(requested, cuda, bf16_ok)
    assert got == expected and (note is not None) == warns


# -- real steps ------------------------------------------------------------------------
def _setup(packed_inputs: Path, accelerator, micro_batch: int, lr: float = 3e-3):
    spec = load_spec(packed_inputs)
    shards = read_current(spec.product_dir("tokenized_dataset"))
    model = build_model(ModelSettings(config=LLAMA), 400, 64, seed=0)
    opt = make_optimizer(model, lr, 0.1, (0.9, 0.95), 1e-8)
    sched = make_scheduler(opt, 2, 40, 0.1)
    model, opt = accelerator.prepare(model, opt)
    stream = PackedStream(train_files(shards), micro_batch, seed=0)
    return model, opt, sched, iter(stream)


def test_loss_falls_and_logs_and_saves_on_schedule(packed_inputs, fresh_accelerator) -> None:
    acc = fresh_accelerator()
    model, opt, sched, batches = _setup(packed_inputs, acc, micro_batch=8)
    logged, saved = [], []
    pos = train(
        acc, model, opt, sched, batches, Position(),
        steps=40, grad_accum=1, max_grad_norm=1.0, tokens_per_step=8 * 64, log_every=10,
        save_every=25, on_log=lambda p, m: logged.append(m), on_save=lambda p: saved.append(p.step),
    )  # fmt: skip
    assert [m["step"] for m in logged] == [1, 10, 20, 30, 40]  # first, every 10th, last
    assert saved == [25, 40]  # every save_every and at the end
    assert pos.step == 40 and pos.batches == 40 and pos.tokens == 40 * 8 * 64
    assert len(pos.losses) == 40 and pos.losses == pos.local_losses  # one rank: mean == own
    assert sum(pos.losses[-5:]) / 5 < pos.losses[0] - 0.5
    assert all(m["grad_norm"] > 0 for m in logged)
    assert logged[-1]["lr"] == pytest.approx(3e-3 * lr_multiplier(39, 2, 40, 0.1))
    assert pos.train_seconds > 0
    # Each logged throughput covers the steps since the previous log; together they account
    # for exactly the training time (the checkpoint write at step 25 is not in it).
    since = [0, *[m["step"] for m in logged]]
    per_log = [(m["step"] - since[i]) * 8 * 64 / m["tokens_per_s"] for i, m in enumerate(logged)]
    assert sum(per_log) == pytest.approx(pos.train_seconds, rel=1e-6)


def test_grad_accumulation_equals_the_larger_batch(packed_inputs, fresh_accelerator) -> None:
    # 2 micro-batches of 2 rows accumulate to the gradient of one batch of the same 4 rows
    params = []
    for micro, accum in ((4, 1), (2, 2)):
        acc = fresh_accelerator(accum)
        model, opt, sched, batches = _setup(packed_inputs, acc, micro_batch=micro)
        loss, norm, _ = train_step(acc, model, opt, sched, batches, accum, max_grad_norm=1.0)
        params.append((torch.cat([p.detach().flatten() for p in model.parameters()]), loss))
    (a, loss_a), (b, loss_b) = params
    assert torch.allclose(a, b, atol=1e-6)
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-5)


def test_clipping_off_still_measures_the_norm(packed_inputs, fresh_accelerator) -> None:
    out = []
    for want in (False, True):
        acc = fresh_accelerator()
        model, opt, sched, batches = _setup(packed_inputs, acc, micro_batch=4)
        _, norm, _ = train_step(acc, model, opt, sched, batches, 1, 0.0, want_norm=want)
        out.append((norm, torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert out[0][0] is None and math.isfinite(float(out[1][0])) and float(out[1][0]) > 0
    assert torch.equal(out[0][1], out[1][1])  # measuring did not change the update


def test_position_round_trips() -> None:
    pos = Position(step=3, batches=6, tokens=99, losses=[3.0, 2.5, 2.0], train_seconds=1.5)
    pos.local_losses = [1.0]
    again = Position.from_json(pos.to_json())
    assert again.step == 3 and again.batches == 6 and again.losses == [3.0, 2.5, 2.0]
    assert again.local_losses == []  # per-process, not part of the saved position
