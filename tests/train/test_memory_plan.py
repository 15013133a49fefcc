"""The memory plan's counts against real models and real optimizers' state (docs/scaling.md)."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from flywheel.train import memory_plan as mp

TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300)  # fmt: skip


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(**{"tie_word_embeddings": False, **TINY}))


def _state_bytes(opt: torch.optim.Optimizer) -> int:  # moments only: scalar step counters aside
    return sum(
        v.numel() * v.element_size()
        for state in opt.state.values()
        for v in state.values()
        if torch.is_tensor(v) and v.ndim > 0
    )


def _step(model: torch.nn.Module, *opts: torch.optim.Optimizer) -> None:
    ids = torch.randint(0, TINY["vocab_size"], (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    for opt in opts:
        opt.step()


def test_parameter_counts_match_a_built_model() -> None:
    s, model = mp.shapes(TINY, lora_rank=4), _model()
    assert s.total == sum(p.numel() for p in model.parameters())
    assert s.largest_layer == sum(p.numel() for p in model.model.layers[1].parameters())
    linear = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in mp.LORA_TARGETS]
    assert len(linear) == 7 * TINY["num_hidden_layers"]
    assert s.lora_trainable == sum(4 * (m.in_features + m.out_features) for m in linear)


def test_optimizer_state_formulas_match_torch_optimizers() -> None:
    s = mp.shapes(TINY)
    model = _model()
    adamw = torch.optim.AdamW(model.parameters())
    _step(model, adamw)
    assert _state_bytes(adamw) == mp.optimizer_bytes(s, "adamw")

    model = _model()
    adafactor = torch.optim.Adafactor(model.parameters())
    _step(model, adafactor)
    assert _state_bytes(adafactor) == mp.optimizer_bytes(s, "adafactor")

    model = _model()
    hidden = [p for n, p in model.named_parameters() if p.ndim == 2 and ".layers." in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and ".layers." in n)]
    muon, adamw = torch.optim.Muon(hidden), torch.optim.AdamW(rest)
    _step(model, muon, adamw)
    assert _state_bytes(muon) + _state_bytes(adamw) == mp.optimizer_bytes(s, "muon")


def test_sharding_divides_states_and_lora_keeps_only_adapter_states() -> None:
    s = mp.shapes(mp.MODELS["7B"])
    ddp, fsdp = mp.per_gpu(s, "ddp", "adamw", 8), mp.per_gpu(s, "fsdp2", "adamw", 8)
    assert abs(ddp["optimizer"] - 8 * fsdp["optimizer"]) < 1e-6
    assert ddp["total"] > 100 > fsdp["total"]  # a 7B AdamW replica does not fit; shards do
    lora = mp.per_gpu(s, "lora", "adamw", 8)
    assert lora["optimizer"] < ddp["optimizer"] / 100
    assert 6.5e9 < s.total < 7e9 and 6.5e10 < mp.shapes(mp.MODELS["70B"]).total < 7e10
