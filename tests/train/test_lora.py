"""LoRA fine-tuning (``flywheel.train.lora``) on a 1-layer, 32-wide Llama: a run trains only
the adapter and lowers the loss, the merged model reproduces the adapter model's logits, a
peft checkpoint resumes, a cycle publishes its adapter beside the merged checkpoint, and bad
target modules are clear errors.

    python -m pytest -q tests/train/test_lora.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from flywheel.core import artifacts
from flywheel.core.catalog import Catalog
from flywheel.core.report import Reporter
from flywheel.core.settings.lora import LoraSettings
from flywheel.core.settings.train import SftData, SftSettings
from flywheel.core.spec import load_spec
from flywheel.loop.cycles import checkpoint_root
from flywheel.loop.retrain import retrain_inputs, run_retrain
from flywheel.train import lora
from flywheel.train.model import load_model
from flywheel.train.sft import build_trainer, sft_config
from flywheel.train.sft_data import load_sft_data
from flywheel.train.sft_resume import checkpoint_problem
from tests.conftest import write_spec
from tests.train.test_preference import build_champion
from tests.train.test_retrain import SPEC, write_training_set

LORA = LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0)
SETTINGS = dict(micro_batch=8, lr=0.03, warmup_steps=0, log_every=1, max_length=64)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> artifacts.Artifact:
    return build_champion(tmp_path_factory.mktemp("champion") / "sft_checkpoint")


def _trainer(champion: artifacts.Artifact, work: Path, steps: int, save_every: int = 50) -> Any:
    settings = SftSettings(steps=steps, save_every=save_every, **SETTINGS)
    data = load_sft_data(SftData(kind="addition", num_examples=64, max_digits=2, width=5))
    config = sft_config(settings, work)
    return build_trainer(config, champion.path, "eager", data, lora_settings=LORA)


@pytest.fixture(scope="module")
def trained(champion: artifacts.Artifact, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One LoRA SFT run of 30 steps: the trainer, and the base weights before it trained."""
    trainer = _trainer(champion, tmp_path_factory.mktemp("lora-sft"), steps=30)
    named = dict(trainer.model.named_parameters())
    before = {k: p.detach().clone() for k, p in named.items()}
    trainer.train()
    return {"trainer": trainer, "before": before}


def test_a_lora_run_trains_only_the_adapter_and_lowers_the_loss(trained: dict) -> None:
    model, before = trained["trainer"].model, trained["before"]
    adapter = {k for k in before if ".lora_" in k}
    base = set(before) - adapter
    assert adapter and base
    after = dict(model.named_parameters())
    assert all(not after[k].requires_grad for k in base)
    assert all(torch.equal(after[k], before[k]) for k in base)  # bitwise: the base is frozen
    # B starts at zero, so the update B·A is nonzero only if the adapter trained.
    moved = [k for k in adapter if ".lora_B." in k and after[k].abs().sum() > 0]
    assert len(moved) == len([k for k in adapter if ".lora_B." in k])
    logged = [h["loss"] for h in trained["trainer"].state.log_history if "loss" in h]
    # A frozen random-init base bounds how far an adapter can go: ~5.39 -> ~5.27 here; the
    # mean of the last 5 steps against the first, well beyond the step-to-step noise (~0.03).
    assert sum(logged[-5:]) / 5 < logged[0] - 0.06, logged
    # Every projection of the layer is adapted (the default targets), nothing else.
    targets = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_the_merged_model_reproduces_the_adapter_models_logits(
    trained: dict, champion: artifacts.Artifact, tmp_path: Path
) -> None:
    model = trained["trainer"].model.eval()
    adapter, merged_dir = tmp_path / "adapter", tmp_path / "merged"
    model.save_pretrained(adapter)
    lora.merge_adapter(champion.path, adapter, merged_dir, attn_implementation="eager")
    assert (merged_dir / "model.safetensors").exists() and (merged_dir / "tokenizer.json").exists()
    merged = load_model(merged_dir, "eager").eval()
    assert type(merged).__name__ == "LlamaForCausalLM"  # a plain model: no peft layers left
    vocab = json.loads((champion.path / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, merged(input_ids=ids).logits
        plain = load_model(champion.path, "eager").eval()(input_ids=ids).logits
    assert not torch.allclose(want, plain, atol=1e-3)  # the adapter changed the outputs
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _adapter(trainer: Any) -> dict[str, torch.Tensor]:
    return {k: p.detach() for k, p in trainer.model.named_parameters() if ".lora_" in k}


def test_a_lora_checkpoint_resumes(champion: artifacts.Artifact, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class Start(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step = state.global_step  # after a resumed state is loaded

    whole = _trainer(champion, tmp_path / "whole", steps=4, save_every=2)
    whole.train()
    # The run's state after step 2 (what a run killed at step 3 leaves), resumed elsewhere.
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").exists()
    assert not (checkpoint / "model.safetensors").exists()  # the adapter alone
    assert checkpoint_problem(checkpoint) is None  # verified as a peft checkpoint
    again = _trainer(champion, tmp_path / "again", steps=4, save_every=2)
    again.add_callback(start := Start())
    again.train(resume_from_checkpoint=str(checkpoint))
    assert start.step == 2 and again.state.global_step == 4
    a, b = _adapter(whole), _adapter(again)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_unknown_target_modules_are_a_clear_error(champion: artifacts.Artifact) -> None:
    model = load_model(champion.path)
    bad = LoraSettings(enabled=True, target_modules=["q_proj", "query_key_value"])
    with pytest.raises(ValueError, match=r"sft.lora.target_modules: \['query_key_value'\]"):
        lora.peft_arguments(model, bad, "sft.lora")
    assert lora.peft_arguments(model, LoraSettings(), "sft.lora") == {}  # off: no peft


def test_a_lora_cycle_publishes_the_merged_model_and_its_adapter(
    tmp_path: Path, champion: artifacts.Artifact
) -> None:
    lora_block = '{"enabled": true, "r": 4, "alpha": 8}'
    spec = load_spec(write_spec(tmp_path, SPEC), [f"cycles.train.lora={lora_block}"])
    training_set = write_training_set(spec, 1)
    with Reporter() as reporter:
        result = run_retrain(spec, reporter, 1, retrain_inputs(spec, 1, parent=champion.path))
    checkpoint = artifacts.read_current(checkpoint_root(spec, 1))
    assert checkpoint.version == result["version"]
    assert {p.name for p in checkpoint.path.glob("*.safetensors")} == {"model.safetensors"}
    load_model(checkpoint.path)  # a plain model, as eval and generation load it
    meta = result["metadata"]
    adapter = artifacts.read_current(checkpoint.path.parent.with_name("checkpoint_adapter"))
    assert meta["adapter"] == adapter.version == checkpoint.meta["lineage"]["adapter"]
    assert sorted(p.name for p in (adapter.path / "sft").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapts.json",
    ]
    lineage = adapter.meta["lineage"]
    assert lineage["base_checkpoint"] == champion.version
    assert lineage["training_set"] == training_set.version and lineage["data_fingerprint"]
    assert lineage["adapter_stages"] == [{"stage": "sft", "adapts": champion.version}]
    numbers = adapter.meta["metrics"]
    assert 0 < numbers["lora/trainable_params"] < numbers["lora/total_params"]
    assert numbers["lora/adapter_bytes"] == (
        (adapter.path / "sft" / "adapter_model.safetensors").stat().st_size
    )
    assert meta["lora/trainable_params"] == numbers["lora/trainable_params"]
    rows = Catalog.open(spec.catalog).query("SELECT checkpoint, stage, parent FROM checkpoints")
    assert sorted(rows.iter_rows()) == sorted(
        [(checkpoint.version, "cycle", champion.version),
         (adapter.version, "cycle_adapter", champion.version)]
    )  # fmt: skip
    assert not (next((checkpoint.path.parent / "work").iterdir()) / "adapters").exists()
