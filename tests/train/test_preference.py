"""Preference training (DPO, GRPO, RLOO with TRL): the verifier reward, the configs, and a few
real steps of each trainer on a 1-layer, 32-wide model on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from flywheel.core import artifacts
from flywheel.core.report import Reporter
from flywheel.core.settings.loop import PreferenceSettings, VerifierSettings
from flywheel.data.arithmetic import addition_examples
from flywheel.loop.preference import (
    check_settings,
    dpo_example,
    preference_config,
    rl_example,
    train_preference,
    verifier_reward,
)

TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def build_champion(root: Path) -> artifacts.Artifact:
    """Publish a tiny random-init chat model + tokenizer under ``root``, as SFT publishes one."""
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model
    from flywheel.train.tokenizer import train_tokenizer

    staging = artifacts.staging_dir(root)
    texts = [
        f"<|im_start|>user\n{p['prompt']}<|im_end|>\n<|im_start|>assistant\n{p['answer']}<|im_end|>\n"
        for p in addition_examples(300, 1, 3, 5, seed=99)
    ]
    tok = train_tokenizer(texts, vocab_size=300, min_frequency=2, out_dir=staging)
    special = {
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    model = build_model(ModelSettings(config=TINY), len(tok), 64, special, seed=0)
    model.save_pretrained(staging)
    return artifacts.publish(root, staging, stage="sft")


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> artifacts.Artifact:
    return build_champion(tmp_path_factory.mktemp("champion") / "sft_checkpoint")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from flywheel.train.model import load_model

    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def digit_share(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """A reward that differs between samples of one prompt even for an untrained model (the
    verifier gives an untrained model 0.0 everywhere: no advantage, no gradient)."""
    texts = [c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def ends_with_answer(prompt: str, completion: str, answer: str) -> tuple[bool, str]:
    """A ``python`` verifier, as acceptance.verifier.function names one."""
    return completion.strip().endswith(answer), "checked"


# -- unit ----------------------------------------------------------------------------------


def test_verifier_reward_is_the_acceptance_verifier() -> None:
    prompts = [[{"role": "user", "content": "1+1"}]] * 3
    said = ["2", " 2 ", "3"]
    completions = [[{"role": "assistant", "content": c}] for c in said]
    exact = verifier_reward(VerifierSettings(kind="exact"))
    assert exact(prompts, completions, answer=["2"] * 3) == [1.0, 1.0, 0.0]
    assert exact.__name__ == "verifier_exact"
    assert exact(prompts, completions, answer=[None, "2", "2"]) == [0.0, 1.0, 0.0]  # no reference
    numeric = verifier_reward(VerifierSettings(kind="numeric"))
    assert numeric(["1+1"], ["it is 2.0"], answer=["2"]) == [1.0]  # plain-text prompts too
    function = f"{__name__}:ends_with_answer"
    python = verifier_reward(VerifierSettings(kind="python", function=function))
    assert python(prompts[:2], completions[:2], answer=["2", "9"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="'self_consistency' cannot be a GRPO/RLOO reward"):
        verifier_reward(VerifierSettings(kind="self_consistency"))
    with pytest.raises(ImportError, match="verifier function 'nowhere:fn'"):
        verifier_reward(VerifierSettings(kind="python", function="nowhere:fn"))
    with pytest.raises(ValueError, match="'reward_model' cannot be a GRPO/RLOO reward"):
        verifier_reward(VerifierSettings(kind="reward_model", reward_model=Path("/rm")))


@pytest.mark.parametrize("kind", ["dpo", "grpo", "rloo"])
def test_config_follows_the_settings(tmp_path: Path, kind: str) -> None:
    settings = PreferenceSettings(
        steps=7, micro_batch=4, grad_accum=2, lr=2e-5, beta=0.3, num_generations=4
    )
    config = preference_config(kind, settings, tmp_path / "work")
    assert (config.max_steps, config.per_device_train_batch_size) == (7, 4)
    assert (config.gradient_accumulation_steps, config.learning_rate) == (2, 2e-5)
    assert config.beta == 0.3
    # TRL's defaults (bf16, gradient checkpointing on) do not leak into a CPU fp32 run.
    assert config.use_cpu and not config.bf16 and not config.fp16
    assert not config.gradient_checkpointing
    assert config.report_to in ([], "none", ["none"])
    if kind == "dpo":
        assert config.max_length == settings.max_length
    else:
        assert config.num_generations == 4 and config.generation_batch_size == 8
        assert config.max_completion_length == settings.max_new_tokens
        assert config.temperature == settings.temperature


def test_a_step_must_hold_whole_groups() -> None:
    settings = PreferenceSettings(micro_batch=3, num_generations=2)
    with pytest.raises(ValueError, match=r"= 3 completions per step is not a multiple of"):
        check_settings("grpo", settings)
    check_settings("grpo", settings, num_processes=2)  # 6 completions: three groups of 2
    check_settings("dpo", settings)  # DPO has no groups
    with pytest.raises(ValueError, match="unknown preference kind 'ppo'"):
        check_settings("ppo", settings)


# -- integration: a few real steps of each trainer -------------------------------------------


def _train(
    kind: str, champion: artifacts.Artifact, tmp_path: Path, lora: Any = None, **reward: Any
) -> dict:
    settings = PreferenceSettings(
        steps=3, micro_batch=4, lr=3e-3, warmup_steps=0, log_every=1, save_every=2,
        num_generations=2, max_new_tokens=6, max_length=64, **({"lora": lora} if lora else {}),
    )  # fmt: skip
    problems = addition_examples(12, 1, 3, 5, seed=3)
    if kind == "dpo":  # the right sum against its digits reversed
        examples = [dpo_example(p["prompt"], p["answer"], p["answer"][::-1]) for p in problems]
    else:
        examples = [rl_example(p["prompt"], p["answer"]) for p in problems]
    with Reporter() as reporter:
        return train_preference(
            kind, settings, champion.path, examples, tmp_path / "work", tmp_path / "out",
            reporter, **reward,
        )  # fmt: skip


def _check_trained(metrics: dict, champion: artifacts.Artifact, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    from flywheel.train.tokenizer import load_tokenizer

    assert metrics["preference/steps"] == 3
    assert [s for s, _ in metrics["preference/loss_curve"]] == [1, 2, 3]
    assert all(math.isfinite(v) for _, v in metrics["preference/loss_curve"])
    before, after = _weights(champion.path), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight changed"
    assert (out / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = load_tokenizer(out)
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id


def _logged_mean(metrics: dict, work: Path, key: str) -> float:
    """The run's mean of ``key`` recomputed from TRL's own log: steps 1-2 from the step-2
    checkpoint's ``trainer_state.json``, step 3 as reported last."""
    state = json.loads((work / "checkpoint-2" / "trainer_state.json").read_text())
    values = [h[key] for h in state["log_history"] if key in h]
    assert len(values) == 2, state["log_history"]
    return (sum(values) + metrics[f"preference/last/{key}"]) / 3


@pytest.mark.integration
def test_dpo_trains_on_pairs(champion: artifacts.Artifact, tmp_path: Path) -> None:
    metrics = _train("dpo", champion, tmp_path)
    _check_trained(metrics, champion, tmp_path / "out")
    assert metrics["preference"] == "dpo" and metrics["preference/examples"] == 12
    # The policy starts as its own reference: margin 0, so the sigmoid DPO loss is ln 2.
    assert metrics["preference/first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    accuracies = _logged_mean(metrics, tmp_path / "work", "rewards/accuracies")
    assert metrics["preference/rewards/accuracies"] == pytest.approx(accuracies)
    assert math.isfinite(metrics["preference/last/rewards/margins"])
    assert (tmp_path / "work" / "checkpoint-2" / artifacts.MANIFEST).exists()  # resumable


def test_dpo_with_lora_trains_an_adapter_against_the_disabled_adapter(
    champion: artifacts.Artifact, tmp_path: Path
) -> None:
    from flywheel.core.settings.lora import LoraSettings

    lora = LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0)
    metrics = _train("dpo", champion, tmp_path, lora=lora)
    _check_trained(metrics, champion, tmp_path / "out")  # the merged model, in out
    # The reference is the model with its adapter off: the start model, margin 0 at step 1.
    assert metrics["preference/first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert 0 < metrics["preference/lora/trainable_params"] < metrics["preference/lora/total_params"]
    adapter = tmp_path / "work" / "adapters" / "dpo"
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapts.json",
    ]
    before, after = _weights(champion.path), _weights(tmp_path / "out")
    changed = {k.split(".")[-2] for k in before if not torch.equal(before[k], after[k])}
    assert changed <= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_rl_trains_on_the_reward(champion: artifacts.Artifact, tmp_path: Path, kind: str) -> None:
    metrics = _train(kind, champion, tmp_path, reward=digit_share)
    _check_trained(metrics, champion, tmp_path / "out")
    reward = _logged_mean(metrics, tmp_path / "work", "reward")
    assert metrics["preference/reward"] == pytest.approx(reward)
    assert metrics["preference/reward_std"] > 0  # the groups had something to learn from
    assert metrics["preference/completions/mean_length"] <= 6
