"""The optimizer factory: each optimizer learns, its state is what it claims, Muon's split,
the one-object Muon+AdamW under a scheduler and Accelerate, TRL's Trainer, and spec errors.

Resuming pre-training exactly with each optimizer is tests/train/test_pretrain.py's
``test_save_and_restore_continue_the_same_trajectory``.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from flywheel.core.settings.rl import PpoSettings
from flywheel.core.settings.train import ModelSettings, SftData, SftSettings
from flywheel.core.shards import read_current
from flywheel.core.spec import SpecError, load_spec
from flywheel.train.loader import PackedStream, train_files
from flywheel.train.model import build_model
from flywheel.train.optim import (
    MuonWithAdamW,
    OptimizerArgs,
    build_optimizer,
    optimizer_args,
    split_for_muon,
    state_bytes_per_param,
    train_optimizer_args,
)
from flywheel.train.trainer import Position, make_scheduler, train
from tests.train.test_loop import LLAMA  # the loop tests' 2 x 32 Llama

LR = {"adamw": 1e-2, "adafactor": 1e-1, "muon": 1e-2}  # adafactor's lr is relative


def _model(**config) -> torch.nn.Module:
    return build_model(ModelSettings(config={**LLAMA, **config}), 400, 64, seed=0)


def _args(name: str, **knobs) -> OptimizerArgs:
    return OptimizerArgs(name, LR[name], 0.1, (0.9, 0.95), 1e-8, **knobs)


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


@pytest.mark.parametrize("name", ["adamw", "adafactor", "muon"])
def test_each_optimizer_lowers_the_loss(packed_inputs: Path, fresh_accelerator, name) -> None:
    # The project's loop (warmup + cosine, clipping, Accelerate) on one fixed batch of real rows.
    shards = read_current(load_spec(packed_inputs).product_dir("tokenized_dataset"))
    batch = next(iter(PackedStream(train_files(shards), 4, seed=0)))
    acc = fresh_accelerator()
    model = _model()
    opt = build_optimizer(model, _args(name))
    sched = make_scheduler(opt, 2, 30, 0.1)
    model, opt = acc.prepare(model, opt)
    pos = train(
        acc, model, opt, sched, itertools.repeat(batch), Position(),
        steps=30, grad_accum=1, max_grad_norm=1.0, tokens_per_step=4 * 64, log_every=100,
    )  # fmt: skip
    first, last = pos.losses[0], pos.losses[-1]
    assert last < 0.5 * first, (name, first, last)  # from ln(400) ~ 6.0 to below 3


def test_state_bytes_per_param_is_what_each_optimizer_holds() -> None:
    ids = torch.randint(0, 400, (4, 32), generator=torch.Generator().manual_seed(0))
    got = {}
    for name in ("adamw", "adafactor", "muon"):
        model = _model()
        opt = build_optimizer(model, _args(name))
        assert state_bytes_per_param(opt) == 0.0  # state is created by the first step
        _step(model, opt, ids)
        got[name] = state_bytes_per_param(opt)
    # AdamW: exp_avg + exp_avg_sq in fp32 (+ one 4-byte step counter per tensor)
    assert got["adamw"] == pytest.approx(8.0, rel=2e-3)
    assert got["adafactor"] < 0.3  # row and column factors, vectors' full variance
    # Muon: a 4-byte momentum on hidden matrices, AdamW's 8 bytes on the rest
    model = _model()
    hidden, other = split_for_muon(model)
    n_hidden, n_other = (sum(p.numel() for p in ps) for ps in (hidden, other))
    assert got["muon"] == pytest.approx((4 * n_hidden + 8 * n_other) / (n_hidden + n_other), 1e-3)
    assert got["adafactor"] < got["muon"] < got["adamw"]


def test_state_bytes_count_trainable_parameters_only() -> None:
    # As with LoRA: frozen weights have no state and are not in the denominator either.
    model = _model()
    model.get_input_embeddings().weight.requires_grad_(False)
    opt = build_optimizer(model, _args("adamw"))
    _step(model, opt, torch.randint(0, 400, (2, 16)))
    assert state_bytes_per_param(opt) == pytest.approx(8.0, rel=2e-3)


@pytest.mark.parametrize("tied", [True, False])
def test_muon_takes_hidden_matrices_and_adamw_the_rest(tied: bool) -> None:
    model = _model(tie_word_embeddings=tied)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden, other = split_for_muon(model)
    muon = {names[id(p)] for p in hidden}
    adamw = {names[id(p)] for p in other}
    assert muon and all(".layers." in n and "norm" not in n for n in muon)
    assert "model.embed_tokens.weight" in adamw and any("norm" in n for n in adamw)
    assert ("lm_head.weight" in adamw) == (not tied)  # tied: the embedding's own tensor
    assert not muon & adamw and muon | adamw == set(names.values())
    opt = MuonWithAdamW(model, _args("muon"))
    assert isinstance(opt._parts[0], torch.optim.Muon)
    assert [len(g["params"]) for g in opt.param_groups] == [len(hidden), 1 if tied else 2, 5]


def test_muon_adamw_part_has_its_own_lr_under_one_schedule() -> None:
    model = _model()
    opt = build_optimizer(model, _args("muon", muon_adamw_lr=3e-2))
    sched = make_scheduler(opt, warmup=4, total=20, min_ratio=0.1)
    ids = torch.randint(0, 400, (2, 16))
    for _ in range(3):
        _step(model, opt, ids)
        sched.step()
    # one LambdaLR factor on each part's own peak: 4/4 of the warmup after 3 steps
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2, 3e-2, 3e-2])
    adamw_groups = zip(opt.param_groups[1:], opt._parts[1].param_groups, strict=True)
    assert all(a is b for a, b in adamw_groups)  # the scheduler set the part's own groups


def test_muon_state_dict_round_trips_into_a_fresh_optimizer() -> None:
    # load_state_dict replaces groups and state: the inner optimizers must follow them.
    ids = torch.randint(0, 400, (2, 16), generator=torch.Generator().manual_seed(1))
    model = _model()
    opt = build_optimizer(model, _args("muon"))
    _step(model, opt, ids)
    twin = _model()
    twin.load_state_dict(model.state_dict())
    again = build_optimizer(twin, _args("muon"))
    again.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if saved: no shared tensors
    assert all(part.state is again.state for part in again._parts)
    assert again._parts[0].param_groups[0] is again.param_groups[0]
    for m, o in ((model, opt), (twin, again)):
        _step(m, o, ids)
    for (n, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_muon_needs_hidden_matrices() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4))
    with pytest.raises(ValueError, match="no trainable hidden matrices"):
        build_optimizer(model, _args("muon"))


def test_settings_become_the_factorys_arguments() -> None:
    s = SftSettings(optimizer="muon", lr=2e-3, beta2=0.9, muon_ns_steps=3, muon_adamw_lr=1e-3)
    args = train_optimizer_args(s, fused=True)
    assert (args.name, args.lr, args.betas, args.fused) == ("muon", 2e-3, (0.9, 0.9), True)
    assert (args.muon_ns_steps, args.muon_adamw_lr, args.muon_momentum) == (3, 1e-3, 0.95)
    ppo = optimizer_args(PpoSettings(optimizer="adafactor", adafactor_d=2.0), lr=0.01)
    assert (ppo.name, ppo.lr, ppo.adafactor_d, ppo.adafactor_beta2_decay) == (
        "adafactor", 0.01, 2.0, -0.8
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sets", "problem"),
    [
        (["pretrain.optimizer=lion"], "pretrain.optimizer: Input should be 'adamw', 'adafactor'"),
        (["sft.muon_momentum=0.9"], "muon_momentum set, but optimizer is 'adamw'"),
        (
            ["pretrain.optimizer=muon", "pretrain.adafactor_d=2"],
            "adafactor_d set, but optimizer is 'muon'",
        ),
        (["pretrain.optimizer=muon", "pretrain.muon_ns_steps=100"], "pretrain.muon_ns_steps"),
        (["sft.optimizer=adafactor", "sft.adafactor_beta2_decay=0.5"], "adafactor_beta2_decay"),
    ],
)
def test_a_bad_optimizer_or_knob_is_one_spec_error(tmp_path: Path, sets, problem) -> None:
    spec = tmp_path / "flywheel.yaml"
    spec.write_text("name: t\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec, sets)
    assert "(1 problem(s))" in str(err.value) and problem in str(err.value)


def test_ppo_settings_refuse_another_optimizers_knob() -> None:
    with pytest.raises(ValidationError, match="muon_momentum set, but optimizer is 'adamw'"):
        PpoSettings(muon_momentum=0.9)
    assert PpoSettings(optimizer="muon", muon_momentum=0.9).muon_momentum == 0.9


# -- TRL's Trainer (SFT, cycles, preference) ---------------------------------------------------
def _sft(parent: Path, out: Path, resume: Path | None = None) -> tuple[object, dict]:
    """Six SFT steps with Muon through TRL, a checkpoint every third step."""
    from flywheel.train.finetune import use_optimizer
    from flywheel.train.sft import build_trainer, sft_config
    from flywheel.train.sft_data import load_sft_data

    settings = SftSettings(
        steps=6, micro_batch=4, lr=3e-3, warmup_steps=1, save_every=3, log_every=1,
        max_length=64, optimizer="muon", data=SftData(num_examples=40, max_operand=9),
    )  # fmt: skip
    trainer = build_trainer(sft_config(settings, out), parent, "sdpa", load_sft_data(settings.data))
    use_optimizer(trainer, settings)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.integration  # ~10 s: two short Trainer runs
def test_trl_trainer_builds_the_optimizer_and_resumes_it(tmp_path: Path) -> None:
    from tests.loop.eval.conftest import build_pretrained

    parent = build_pretrained(tmp_path / "data").path
    trainer, straight = _sft(parent, tmp_path / "straight")
    inner = trainer.optimizer.optimizer  # Accelerate's wrapper around ours
    assert isinstance(inner, MuonWithAdamW) and state_bytes_per_param(inner) > 4
    saved = torch.load(tmp_path / "straight/checkpoint-3/optimizer.pt", weights_only=True)
    assert len(saved["param_groups"]) == 3 and "momentum_buffer" in saved["state"][0]
    # A second trainer resumes at step 3 from that checkpoint and ends where the first did:
    # only possible if Trainer saved and reloaded both parts' state.
    _, resumed = _sft(parent, tmp_path / "resumed", tmp_path / "straight/checkpoint-3")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)
