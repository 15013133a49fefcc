"""Model building from the spec: configs, local paths, parameter and FLOP counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flywheel.core.artifacts import ArtifactError
from flywheel.core.settings.train import ModelSettings
from flywheel.train.model import build_model, count_parameters, flops_per_token, load_model

TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "tie_word_embeddings": True,
}


def test_default_is_a_tiny_llama() -> None:
    model = build_model(ModelSettings(), vocab_size=512, seq_len=64)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == 512 and model.config.max_position_embeddings == 64
    assert model.config._attn_implementation == "sdpa"
    assert count_parameters(model) < 2_000_000


def test_same_seed_same_init() -> None:
    a = build_model(ModelSettings(config=TINY), 100, 16, seed=3)
    b = build_model(ModelSettings(config=TINY), 100, 16, seed=3)
    c = build_model(ModelSettings(config=TINY), 100, 16, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_any_causal_lm_config() -> None:
    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2}
    model = build_model(ModelSettings(config=gpt2), 100, 16)
    assert type(model).__name__ == "GPT2LMHeadModel"


def test_unknown_model_type_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="model.config: cannot build a 'llamma' config"):
        build_model(ModelSettings(config={"model_type": "llamma"}), 100, 16)


def test_partial_llama_config_merges_over_the_default() -> None:
    settings = ModelSettings(config={"hidden_size": 64})
    assert settings.config["model_type"] == "llama" and settings.config["hidden_size"] == 64
    assert settings.config["num_hidden_layers"] == ModelSettings().config["num_hidden_layers"]
    gpt2 = ModelSettings(config={"model_type": "gpt2", "n_layer": 2})
    assert gpt2.config == {"model_type": "gpt2", "n_layer": 2}


def test_local_path_round_trip(tmp_path: Path) -> None:
    model = build_model(ModelSettings(config=TINY), 100, 16)
    model.save_pretrained(tmp_path / "m")
    assert [p.name for p in (tmp_path / "m").glob("*.safetensors")] == ["model.safetensors"]
    again = build_model(ModelSettings(path=tmp_path / "m"), 0, 0)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    with pytest.raises(ArtifactError, match="no model checkpoint at"):
        load_model(tmp_path / "missing")


def test_counts_exclude_tied_and_embedding() -> None:
    model = build_model(ModelSettings(config=TINY), 100, 16)
    emb = 100 * 32
    assert count_parameters(model) - count_parameters(model, non_embedding=True) == emb
    n = count_parameters(model, non_embedding=True)
    assert flops_per_token(model.config, n, 16) == 6 * n + 12 * 2 * 32 * 16
